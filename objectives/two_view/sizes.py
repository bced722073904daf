"""The two-view family's sizes: the ViT the view families train on images (``vit``, ``image``) per size, the ResNets
by name, and the shared settings some methods' sizes start from. tiny: tests (seconds); small: 32 x 32 images
(CIFAR-10), lightly's CIFAR-10 benchmark heads (ResNet-18) or a 6-layer ViT of width 192 with 4 x 4 patches; base:
the papers' ImageNet heads (ResNet-50 or ViT-S/16).

A method's own head and loss sizes are beside it, in its module's ``SIZES`` (``{method: {size: config fields}}``),
and what it sets differently on a backbone kind in ``BACKBONE_DEFAULTS`` (``{method: {"kind" or "kind/size": config
fields}}``); ``build.py``'s ``method_settings`` reads them through the registry. Plain data: ``build.py`` composes the
parts, ``presets.py`` holds the training settings' bases."""
from __future__ import annotations

from typing import Any

# GraphCL (You et al., 2020; unsupervised_TU): SimCLR's loss with a projection head of two linear layers as wide as
# the readout (every layer's pooled output), ReLU between, no batch norm; temperature 0.2, at every size
GRAPHCL = dict(hidden_dim=None, out_dim=None, num_layers=2, batch_norm=False, temperature=0.2)
# SCARF (Bahri et al., ICLR 2022, sec. 4): InfoNCE at temperature 1 with a pre-training head of two linear layers as
# wide as the encoder's features, ReLU between, no batch norm, at every size
SCARF = dict(hidden_dim=None, out_dim=None, num_layers=2, batch_norm=False, temperature=1.0)
# CPC on a 7 x 7 patch grid (van den Oord et al., 2018, sec. 3.2): predictions up to 5 rows down, from the second
# (the next row's patches overlap the context's by half); the GRU as wide as the size's latents
CPC_GRID = dict(num_offsets=5, first_offset=2)
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vit=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), image=dict(patch_size=4)),
    "small": dict(vit=dict(hidden_size=192, num_layers=6, num_heads=3, intermediate_size=768), image=dict(patch_size=4)),
    "base": dict(vit=dict(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536),
                 image=dict(patch_size=16)),
}
# ResNet backbones by name (ResNetConfig fields); "vit" takes its numbers from the size
RESNETS = {"resnet_tiny": dict(depth=18, layers=(1, 1, 1, 1)), "resnet18": dict(depth=18),
           "resnet50": dict(depth=50)}
VIT_IMAGE = dict(positions="learned", class_token=True)  # ViT (DINO, MoCo v3): learned positions, class token


__all__ = ["SIZES", "GRAPHCL", "SCARF", "CPC_GRID", "RESNETS", "VIT_IMAGE"]
