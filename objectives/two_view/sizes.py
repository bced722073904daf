"""The two-view family's sizes: per size the heads and loss settings of every method, the ViT the family trains
on images (``vit``, ``image``), the ResNets by name, and what a method sets differently on a backbone kind.
tiny: tests (seconds); small: 32 x 32 images (CIFAR-10) with lightly's CIFAR-10 benchmark heads (ResNet-18) or a
6-layer ViT of width 192 with 4 x 4 patches; base: the papers' ImageNet heads (ResNet-50 or ViT-S/16). Plain data:
``build.py`` composes the parts, ``presets.py`` holds the training settings."""
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
    "tiny": dict(
        vit=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), image=dict(patch_size=4),
        methods=dict(
            simclr=dict(hidden_dim=32, out_dim=16),
            moco_v2=dict(hidden_dim=32, out_dim=16, queue_size=64, temperature=0.1, momentum=0.99, symmetric=True),
            moco_v1=dict(hidden_dim=0, out_dim=16, queue_size=64, temperature=0.07, momentum=0.99, symmetric=True),
            moco_v3=dict(hidden_dim=32, out_dim=16),
            byol=dict(hidden_dim=32, out_dim=16, pred_hidden_dim=32, momentum=0.99),
            simsiam=dict(hidden_dim=32, out_dim=32, proj_layers=2, pred_hidden_dim=8),
            swav=dict(hidden_dim=32, out_dim=16, num_prototypes=8, freeze_prototypes_steps=0),
            dino=dict(hidden_dim=32, bottleneck_dim=8, out_dim=32, head_layers=2, momentum=0.99),
            vicreg=dict(hidden_dim=32, out_dim=32, num_layers=2),
            barlow_twins=dict(hidden_dim=32, out_dim=32, num_layers=2), graphcl=GRAPHCL, scarf=SCARF,
            instance_discrimination=dict(out_dim=16),
            deepcluster=dict(num_clusters=4, pca_dim=8, hidden_dims=(32,)), deep_infomax=dict(units=16),
            cmc=dict(out_dim=16, num_negatives=32), colorization=dict(hidden_dim=32),
            inpainting=dict(hidden_dim=32, upsamples=2, disc_dim=8, disc_layers=2), cpc=dict(CPC_GRID, context_dim=16))),
    "small": dict(
        vit=dict(hidden_size=192, num_layers=6, num_heads=3, intermediate_size=768), image=dict(patch_size=4),
        methods=dict(  # lightly's CIFAR-10 benchmark (docs/.../benchmarks/cifar10_benchmark.py), ResNet-18
            simclr=dict(hidden_dim=None, out_dim=128, temperature=0.5),
            moco_v2=dict(hidden_dim=None, out_dim=128, queue_size=4096, temperature=0.1, momentum=0.99, symmetric=True),
            moco_v1=dict(hidden_dim=0, out_dim=128, queue_size=4096, temperature=0.1, momentum=0.99, symmetric=True),
            moco_v3=dict(hidden_dim=4096, out_dim=256),  # not in lightly's: solo-learn's CIFAR mocov3.yaml
            byol=dict(hidden_dim=1024, out_dim=256, pred_hidden_dim=1024, momentum=0.99),
            simsiam=dict(hidden_dim=2048, out_dim=2048, proj_layers=2, pred_hidden_dim=512),
            swav=dict(hidden_dim=512, out_dim=128, num_prototypes=512, freeze_prototypes_steps=0),
            dino=dict(hidden_dim=2048, bottleneck_dim=256, out_dim=2048, head_layers=2, momentum=0.99),
            vicreg=dict(hidden_dim=2048, out_dim=2048, num_layers=3),  # not in lightly's CIFAR benchmark
            barlow_twins=dict(hidden_dim=2048, out_dim=2048, num_layers=2), graphcl=GRAPHCL, scarf=SCARF,
            instance_discrimination=dict(out_dim=128),
            deepcluster=dict(num_clusters=100, pca_dim=256),  # k 100 for CIFAR-10's 10 classes
            deep_infomax=dict(units=2048), cmc=dict(out_dim=128, num_negatives=4096), colorization=dict(hidden_dim=256),
            inpainting=dict(hidden_dim=256, upsamples=2, disc_dim=64, disc_layers=3),   # a 4 x 4 map -> 16 x 16
            cpc=dict(CPC_GRID, context_dim=512))),
    "base": dict(
        vit=dict(hidden_size=384, num_layers=12, num_heads=6, intermediate_size=1536), image=dict(patch_size=16),
        methods=dict(  # the papers' ImageNet settings
            simclr=dict(hidden_dim=None, out_dim=128, temperature=0.1),
            moco_v2=dict(hidden_dim=None, out_dim=128, queue_size=65536, temperature=0.2, momentum=0.999),
            moco_v1=dict(hidden_dim=0, out_dim=128, queue_size=65536, temperature=0.07, momentum=0.999),
            moco_v3=dict(hidden_dim=4096, out_dim=256),
            byol=dict(hidden_dim=4096, out_dim=256, pred_hidden_dim=4096, momentum=0.996),
            simsiam=dict(hidden_dim=2048, out_dim=2048, proj_layers=3, pred_hidden_dim=512),
            swav=dict(hidden_dim=2048, out_dim=128, num_prototypes=3000, freeze_prototypes_steps=313),
            dino=dict(hidden_dim=2048, bottleneck_dim=256, out_dim=65536, head_layers=3, momentum=0.996),
            vicreg=dict(hidden_dim=8192, out_dim=8192, num_layers=3),
            barlow_twins=dict(hidden_dim=8192, out_dim=8192, num_layers=3), graphcl=GRAPHCL, scarf=SCARF,
            instance_discrimination=dict(out_dim=128),
            # DeepCluster's ImageNet k 10,000 (faiss's random initial centroids), PCA 256, the top layers 4096 / 4096
            # with dropout 0.5
            deepcluster=dict(num_clusters=10000, pca_dim=256, hidden_dims=(4096, 4096), dropout=0.5,
                             kmeans_init="random"),
            deep_infomax=dict(units=2048), cmc=dict(out_dim=128, num_negatives=16384),
            colorization=dict(hidden_dim=256),   # the paper's conv8 block: 256 channels
            # as the paper's 128-pixel model: 4 up-convolutions from 512 channels (a 4 x 4 map -> the 64 x 64
            # centre; a ResNet-50's 7 x 7 at 224 -> 112) and a discriminator of 4 strided layers from 64 (DCGAN's)
            inpainting=dict(hidden_dim=512, upsamples=4, disc_dim=64, disc_layers=4),
            cpc=dict(CPC_GRID, context_dim=1024))),
}
# ResNet backbones by name (ResNetConfig fields); "vit" takes its numbers from the size
RESNETS = {"resnet_tiny": dict(depth=18, layers=(1, 1, 1, 1)), "resnet18": dict(depth=18),
                    "resnet50": dict(depth=50)}
# what a method sets differently on a backbone kind ("kind" or "kind/size"): DINO's head has BN on ResNets (lightly,
# DINO's RN50 runs); MoCo v3 (sec. 4, moco-v3 main_moco.py): a 2-layer projector on ResNets and T = 1 on ImageNet
# ResNet-50 (solo-learn's CIFAR ResNet-18: 0.2), a frozen random patch projection on ViTs
BACKBONE_DEFAULTS = {"resnet": {"dino": dict(use_bn=True), "moco_v3": dict(proj_layers=2)},
                              "resnet/base": {"moco_v3": dict(temperature=1.0)},
                              "vit": {"moco_v3": dict(freeze_embedding=True), "inpainting": dict(upsamples=1)},
                              "vit/base": {"inpainting": dict(upsamples=3)}}
VIT_IMAGE = dict(positions="learned", class_token=True)  # ViT (DINO, MoCo v3): learned positions, class token


__all__ = ["SIZES", "GRAPHCL", "SCARF", "CPC_GRID", "RESNETS", "BACKBONE_DEFAULTS", "VIT_IMAGE"]
