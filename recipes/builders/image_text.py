"""CLIP / SigLIP of a named size (``objectives/image_text/sizes.py``) on a ViT or a ResNet image tower."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.modalities.image_text import NormedAdapter
from selfsup.objectives.image_text.clip import LOSSES, AttentionPool, CLIPObjectiveConfig
from selfsup.objectives.image_text.hf_clip import compose_clip
from selfsup.objectives.image_text.sizes import CLIP_LOSS_SETTINGS, size_of
from selfsup.recipes.builders.two_view import image_encoder
from selfsup.types import Encoder


def clip_image_tower(backbone: str = "vit", size: str = "small", image_size: int = 32, loss: str = "clip",
                     vit: dict | None = None, image: dict | None = None, resnet: dict | None = None):
    """(image Encoder, attention pool or None) of a CLIP / SigLIP objective: a ViT wired as ``loss``'s (CLIP: class
    token, learned positions, a LayerNorm before the first layer; SigLIP: no class token, attention pooling), or a
    ResNet of the two-view family's ``RESNETS`` (pooled by its token mean)."""
    if backbone != "vit":
        return image_encoder(backbone, size, image_size, resnet=resnet), None
    sizes, wiring = size_of(size), CLIP_LOSS_SETTINGS[loss]
    image_cfg = ImageConfig(**{**wiring["image"], **sizes["image"], "image_size": image_size, **(image or {})})
    vit_cfg = transformer_config(sizes["vit"], wiring["tower"], **(vit or {}))
    adapter = ImageAdapter(image_cfg, vit_cfg.hidden_size)
    if loss == "clip":
        return Encoder(NormedAdapter(adapter, vit_cfg.layer_norm_eps), TransformerEncoder(vit_cfg)), None
    pool = AttentionPool(vit_cfg.hidden_size, vit_cfg.num_heads, vit_cfg.intermediate_size, vit_cfg.activation,
                         vit_cfg.layer_norm_eps)
    return Encoder(adapter, TransformerEncoder(vit_cfg)), pool

def clip(size: str = "small", loss: str = "clip", backbone: str = "vit", image_size: int | None = None,
         vocab_size: int = 4096,
         context_length: int | None = None, eos_token_id: int = 1, pad_token_id: int = 1, vit: dict | None = None,
         text: dict | None = None, image: dict | None = None, resnet: dict | None = None, **objective: Any):
    """CLIP (``loss="clip"``) or SigLIP (``"siglip"``) of a named size on a ViT (``backbone="vit"``) or a ResNet
    image tower (``resnet_tiny``, ``resnet18``, ``resnet50``). ``context_length``: the text positions (CLIP 77,
    SigLIP 64: its pipeline pads to 64). ``objective``: :class:`CLIPObjectiveConfig` fields (local_loss,
    max_logit_scale, embed_dim, ...); ``vit`` / ``text`` / ``image`` / ``resnet``: overrides of the towers."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
    sizes, wiring = size_of(size), CLIP_LOSS_SETTINGS[loss]
    image_size = image_size or sizes["image"].get("image_size", 32)
    encoder, pool = clip_image_tower(backbone, size, image_size, loss, vit, image, resnet)
    settings = {**sizes["objective"], **wiring["objective"], "loss": loss, "eos_token_id": eos_token_id}
    if backbone != "vit":   # a ResNet: the mean of its feature map, projected
        settings.update(image_pooling="mean", image_projection=True)
    elif not settings.get("image_projection", True):   # SigLIP: the pooled image is the embedding
        settings["embed_dim"] = encoder.backbone.hidden_size
    config = CLIPObjectiveConfig(**{**settings, **objective})
    text_cfg = transformer_config(sizes["text"], wiring["tower"], **{"causal": loss == "clip", **(text or {})})
    return compose_clip(encoder, text_cfg, vocab_size, context_length or wiring["context_length"], config, pool,
                        pad_token_id)


__all__ = ["clip_image_tower", "clip"]
