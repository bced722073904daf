"""Composing two-view objectives: :func:`from_encoder` puts a method's heads of a named size on any encoder (the
graph recipe gives it a GIN, the image recipe a ResNet or a ViT); :func:`image_encoder` and :func:`two_view` compose
the image encoders these methods are benchmarked with. This module and the conversions are the family's only
ones that name concrete parts; the methods themselves see an :class:`Encoder`."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from selfsup.backbones.resnet import ResNetBackbone, ResNetConfig
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.image import ImageAdapter, ImageConfig, PixelAdapter
from selfsup.objectives import registry
from selfsup.objectives.two_view.common import default_pooling
from selfsup.objectives.two_view.sizes import BACKBONE_DEFAULTS, RESNETS, SIZES, VIT_IMAGE
from selfsup.types import Encoder, Objective


def backbone_kind(backbone: nn.Module) -> str:
    """``"resnet"``, ``"vit"`` (any Transformer) or the backbone class's name in lower case (``"gin"``)."""
    if isinstance(backbone, ResNetBackbone):
        return "resnet"
    if isinstance(backbone, TransformerEncoder):
        return "vit"
    return type(backbone).__name__.lower()


def method_settings(method: str, size: str, kind: str) -> dict[str, Any]:
    """The config fields of ``method`` at ``size`` (:data:`SIZES`) with what it sets differently on ``kind``."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    return {**SIZES[size]["methods"].get(method, {}), **BACKBONE_DEFAULTS.get(kind, {}).get(method, {}),
            **BACKBONE_DEFAULTS.get(f"{kind}/{size}", {}).get(method, {})}


def from_encoder(method: str, encoder: Encoder, size: str = "small", max_steps: int = 0,
                 **overrides: Any) -> Objective:
    """A two-view objective (``registry.names("two_view")``) of a named size on ``encoder``, whatever its
    modality. ``max_steps``: the length of the run, for the momentum schedules of MoCo, BYOL and DINO;
    ``overrides``: the method's config fields (temperature, queue_size, out_dim, ...)."""
    entry = registry.get(method)
    if entry.family != "two_view":
        raise ValueError(f"{method!r} is not a two-view method; choose from {registry.names('two_view')}")
    cls, config_cls = entry.classes()
    settings = method_settings(entry.name, size, backbone_kind(encoder.backbone))
    if "max_steps" in {f.name for f in fields(config_cls)}:
        settings["max_steps"] = max_steps
    return cls(encoder, entry.make_config({**settings, **overrides}))


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
             max_steps: int = 0, resnet: dict | None = None, vit: dict | None = None, image: dict | None = None,
             **overrides: Any) -> Objective:
    """A two-view objective of a named size on a named image backbone (:func:`image_encoder`) or on a given
    :class:`Encoder` (e.g. ``hf_resnet.resnet_from_transformers``; pooled at its class token when its adapter has
    one). See :func:`from_encoder`."""
    if isinstance(backbone, str):
        encoder = image_encoder(backbone, size, image_size, resnet, vit, image)
    else:
        encoder = backbone
        if encoder.pooling == "mean" and encoder.layers == "last":
            encoder = Encoder(encoder.adapter, encoder.backbone, default_pooling(encoder.adapter))
    return from_encoder(method, encoder, size, max_steps, **overrides)


__all__ = ["from_encoder", "image_encoder", "two_view", "backbone_kind", "method_settings"]
