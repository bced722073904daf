"""The image encoders of the two-view methods and a two-view objective on a named image backbone; the
method itself on any encoder is ``objectives/two_view/build.py``'s ``from_encoder``."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.resnet import ResNetBackbone, ResNetConfig
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.image import ImageAdapter, ImageConfig, PixelAdapter
from selfsup.objectives.two_view.build import from_encoder
from selfsup.objectives.two_view.common import default_pooling
from selfsup.objectives.two_view.sizes import RESNETS, SIZES, VIT_IMAGE
from selfsup.types import Encoder, Objective


def image_encoder(backbone: str = "resnet18", size: str = "small", image_size: int = 32, resnet: dict | None = None,
                  vit: dict | None = None, image: dict | None = None) -> Encoder:
    """The image :class:`Encoder` of a two-view objective: ``PixelAdapter`` + :class:`ResNetBackbone` (names in
    :data:`RESNETS`; the CIFAR stem when ``image_size <= 64`` unless ``resnet`` says otherwise) or, for ``"vit"``,
    an ``ImageAdapter`` (learned positions, class token) + the pre-LN ViT of ``SIZES[size]``, pooled at its class
    token. ``resnet`` / ``vit`` / ``image``: overrides of ResNetConfig / TransformerConfig / ImageConfig fields."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    sizes = SIZES[size]
    if backbone == "vit":
        image_cfg = ImageConfig(**{**VIT_IMAGE, **sizes["image"], "image_size": image_size, **(image or {})})
        vit_cfg = transformer_config(sizes["vit"], "vit", **(vit or {}))
        return Encoder(ImageAdapter(image_cfg, vit_cfg.hidden_size), TransformerEncoder(vit_cfg), pooling="first")
    if backbone not in RESNETS:
        raise ValueError(f"unknown two-view backbone {backbone!r}; choose from {sorted(RESNETS) + ['vit']}")
    cfg = ResNetConfig(**{"cifar_stem": image_size <= 64, **RESNETS[backbone], **(resnet or {})})
    return Encoder(PixelAdapter(cfg.num_channels, cfg.hidden_size), ResNetBackbone(cfg))

def two_view(method: str, backbone: str | Encoder = "resnet18", size: str = "small", image_size: int = 32,
             max_steps: int = 0, num_examples: int = 0, resnet: dict | None = None, vit: dict | None = None,
             image: dict | None = None, **overrides: Any) -> Objective:
    """A two-view objective of a named size on a named image backbone (:func:`image_encoder`) or on a given
    :class:`Encoder` (e.g. ``hf_resnet.resnet_from_transformers``; pooled at its class token when its adapter has
    one). See :func:`from_encoder`."""
    if isinstance(backbone, str):
        encoder = image_encoder(backbone, size, image_size, resnet, vit, image)
    else:
        encoder = backbone
        if encoder.pooling == "mean" and encoder.layers == "last":
            encoder = Encoder(encoder.adapter, encoder.backbone, default_pooling(encoder.adapter))
    return from_encoder(method, encoder, size, max_steps, num_examples, **overrides)


__all__ = ["image_encoder", "two_view"]
