"""CLIP / SigLIP sizes: per size the image ViT (``vit``, ``image``), the text Transformer (``text``) and the joint
width (``objective``). tiny: tests (seconds); small: 32 x 32 images (CIFAR-10, digits) with 8 x 8 patches and short
captions, on a CPU; base: CLIP ViT-B/16 (openai/clip-vit-base-patch16: a 12 x 768 ViT at 224, a 12 x 512 text
Transformer, 512 joint). The towers are wired as ``transformers``' CLIPModel / SiglipModel compute them
(``backbones.transformer.WIRINGS["clip"]`` / ``["siglip"]``): CLIP with a causal text tower, a class token and a
LayerNorm before the first image layer; SigLIP with a bidirectional text tower and no class token (attention
pooling)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import SIZES as TRANSFORMER

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": dict(vit=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), image=dict(patch_size=8),
                 text=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                 objective=dict(embed_dim=16)),
    "small": dict(vit=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
                  image=dict(patch_size=8),
                  text=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
                  objective=dict(embed_dim=128)),
    "base": dict(vit=TRANSFORMER["base"], image=dict(patch_size=16, image_size=224),
                 text=dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048),
                 objective=dict(embed_dim=512)),
}
CLIP_LOSS_SETTINGS = {  # per loss: tower wiring, image adapter, text context, objective settings (the papers')
    "clip": dict(tower="clip", image=dict(positions="learned", class_token=True), context_length=77,
                 objective=dict(logit_scale_init=1 / 0.07, image_pooling="cls", text_pooling="eos")),
    "siglip": dict(tower="siglip", image=dict(positions="learned", class_token=False), context_length=64,
                   objective=dict(logit_scale_init=10.0, logit_bias_init=-10.0, image_pooling="map",
                                  image_projection=False, text_pooling="last", text_projection_bias=True)),
}


def size_of(size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size (a copy)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    return {k: dict(v) for k, v in SIZES[size].items()}


__all__ = ["SIZES", "CLIP_LOSS_SETTINGS", "size_of"]
