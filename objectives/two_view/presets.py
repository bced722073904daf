"""Training settings of the two-view methods on images, by preset: ``CPU_SETTINGS`` (a run of minutes on 2 CPU
cores), ``GPU_SETTINGS`` (lightly's CIFAR-10 benchmark), ``IMAGENET_SETTINGS`` (lightly's ImageNet ResNet-50
scripts, and the papers where lightly has none). Plain data the image recipe reads."""
from __future__ import annotations

from typing import Any

# Training settings for the recipe. GPU_SETTINGS: lightly's CIFAR-10 benchmark (ResNet-18 with the CIFAR stem, 32 x 32,
# SGD momentum 0.9, weight decay 5e-4, lr 0.06 x batch / 128, cosine over the epochs, no warmup; batch 512 and 800
# epochs, its best table: the kNN accuracies it reports are under "reference_knn"); the methods it lacks (MoCo v3,
# VICReg) take solo-learn's CIFAR-10 settings (scripts/pretrain/cifar/*.yaml: LARS, trust coefficient 0.02, lr per 256,
# 10 warmup epochs of 1000). IMAGENET_SETTINGS: lightly's benchmarks/imagenet/resnet50 scripts (and the papers where
# lightly has none), ResNet-50 at 224, 10 warmup epochs of 100. CPU_SETTINGS: a run of minutes on 2 CPU cores
# (a 4-block ResNet at 32 x 32, batch 64, lightly's optimizers scaled to the batch). Keys: the run's (optimizer,
# learning_rate for the whole batch, momentum = the optimizer's, adam_beta1 / adam_beta2 (0.9 / 0.999 unless set),
# weight_decay, batch_size global, epochs or max_steps, warmup_*, transform = the modalities.view_pipelines pipeline,
# num_local_views, global_scale); "objective": config fields of the method to override; "*_epochs" /
# "queue_start_epoch": schedule lengths the recipe turns into steps.
_LIGHTLY_CIFAR = dict(backbone="resnet18", model_size="small", image_size=32, batch_size=512, epochs=800,
                      optimizer="sgd", learning_rate=0.06 * 512 / 128, momentum=0.9, weight_decay=5e-4,
                      warmup_epochs=0, schedule="cosine", transform="simclr")
GPU_SETTINGS: dict[str, dict[str, Any]] = {
    "simclr": {**_LIGHTLY_CIFAR, "reference_knn": 0.875},
    "moco_v2": {**_LIGHTLY_CIFAR, "objective": {"queue_size": 8192}, "reference_knn": 0.900},  # for batch 512
    "moco_v1": {**_LIGHTLY_CIFAR, "objective": {"queue_size": 8192}, "transform": "moco_v1"},  # v2's, with v1's parts
    "byol": {**_LIGHTLY_CIFAR, "reference_knn": 0.911},
    "simsiam": {**_LIGHTLY_CIFAR, "learning_rate": 0.06, "reference_knn": 0.906},  # lightly: no lr scaling
    "swav": {**_LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 1e-3 * 512 / 128, "weight_decay": 1e-6,
             "transform": "multicrop", "num_local_views": 0, "global_scale": (0.14, 1.0), "reference_knn": 0.881},
    "dino": {**_LIGHTLY_CIFAR, "transform": "multicrop", "num_local_views": 0, "reference_knn": 0.884},
    "barlow_twins": {**_LIGHTLY_CIFAR, "reference_knn": 0.857},
    "vicreg": {**_LIGHTLY_CIFAR, "optimizer": "lars", "learning_rate": 0.3 * 512 / 256, "weight_decay": 1e-4,
               "trust_coefficient": 0.02, "warmup_epochs": 10, "epochs": 1000},
    "moco_v3": {**_LIGHTLY_CIFAR, "optimizer": "lars", "learning_rate": 0.3 * 512 / 256, "weight_decay": 1e-6,
                "trust_coefficient": 0.02, "warmup_epochs": 10, "epochs": 1000, "transform": "byol"},
    # RotNet's CIFAR-10 setting (Gidaris et al., 2018): SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128 images
    # (x 4 rotations), 100 epochs (the paper steps the rate down at 30 / 60 / 80; cosine here)
    "rotation": {**_LIGHTLY_CIFAR, "batch_size": 128, "epochs": 100, "learning_rate": 0.1, "transform": "rotation"},
    # the jigsaw paper trained on ImageNet only: lightly's CIFAR-10 schedule
    "jigsaw": {**_LIGHTLY_CIFAR, "transform": "jigsaw"},
    "relative_position": {**_LIGHTLY_CIFAR, "transform": "relative_position"},   # ImageNet only in the paper too
    # Wu et al. 2018: SGD 0.03, momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, T 0.07, 4096 NCE
    # negatives, bank momentum 0.5 (the rate steps down there; cosine here)
    "instance_discrimination": {**_LIGHTLY_CIFAR, "batch_size": 256, "epochs": 200, "learning_rate": 0.03,
                                "transform": "one_view", "objective": {"loss": "nce", "num_negatives": 4096,
                                                                       "temperature": 0.07, "bank_momentum": 0.5}},
    # CPC (van den Oord et al., 2018, sec. 3.2; ImageNet there, a ResNet-v2-101 to its third block): Adam at 2e-4,
    # no weight decay stated, batch 16 on each of 32 GPUs (512); the 7 x 7 grid of overlapping patches
    "cpc": {**_LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 2e-4, "weight_decay": 0.0, "transform": "cpc"},
    # context encoders (Pathak et al., CVPR 2016, sec. 5, and their released train.lua): Adam lr 2e-4, beta1 0.5,
    # batch 64, lambda_rec 0.999 / lambda_adv 0.001 (the config's defaults); no weight decay. The paper states no
    # schedule length: 100 epochs here
    "inpainting": {**_LIGHTLY_CIFAR, "batch_size": 64, "epochs": 100, "optimizer": "adamw", "learning_rate": 2e-4,
                   "adam_beta1": 0.5, "weight_decay": 0.0, "transform": "inpainting"},
    # colorization (Zhang, Isola & Efros, 2016, sec. 3): Adam, beta1 0.9, beta2 0.99, weight decay 1e-3 (Caffe's,
    # coupled: AdamW's decoupled decay here), lr 3e-5 (the paper drops it to 1e-5 and 3e-6 at 200k and 375k
    # iterations; cosine here), batch 40, 450k iterations; on lightly's CIFAR-10 ResNet-18
    "colorization": {**_LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 3e-5, "adam_beta1": 0.9,
                     "adam_beta2": 0.99, "weight_decay": 1e-3, "batch_size": 40, "max_steps": 450_000,
                     "transform": "colorization"},
    # CMC (Tian et al., 2020, sec. 4.2 / appendix, ImageNet): SGD 0.03, momentum 0.9, weight decay 1e-4, batch 256,
    # 240 epochs (the rate steps down at 120 / 160 / 200 there; cosine here), memory banks with K = 16384
    # negatives, T = 0.07, bank momentum 0.5, the L and ab views of one crop; the paper's CIFAR-10 numbers are not
    # given beside these, so its ImageNet ones on lightly's CIFAR ResNet-18 (one per view)
    "cmc": {**_LIGHTLY_CIFAR, "batch_size": 256, "epochs": 240, "learning_rate": 0.03, "weight_decay": 1e-4,
            "transform": "cmc", "objective": {"negatives": "bank", "num_negatives": 16384, "temperature": 0.07,
                                              "bank_momentum": 0.5}},
    # Deep InfoMax (Hjelm et al., 2019): Adam at 1e-4, batch 64, 1000 epochs on CIFAR-10 (the authors' code,
    # rdevon/DIM cortex_DIM/models/dim.py, LocalDIM defaults; the paper's sec. 4 gives Adam 1e-4 and 1000 epochs),
    # the JSD estimator; a ResNet-18 here (the paper: a DCGAN-like convnet and a ResNet); one view, padded crop + flip
    "deep_infomax": {**_LIGHTLY_CIFAR, "batch_size": 64, "epochs": 1000, "optimizer": "adamw", "learning_rate": 1e-4,
                     "weight_decay": 0.0, "transform": "crop_flip", "objective": {"estimator": "jsd"}},
    # DeepCluster (Caron et al., 2018, sec. 4.1): SGD 0.05, momentum 0.9, weight decay 1e-5, batch 256, 500 epochs
    # (a constant rate there; cosine here), re-clustered every epoch; k 100 on CIFAR-10 (the size "small"; the
    # paper's 10,000 is for ImageNet's 1.28M images); one view per image, its colour jitter and random grayscale in
    # place of the paper's Sobel filter
    "deepcluster": {**_LIGHTLY_CIFAR, "batch_size": 256, "epochs": 500, "learning_rate": 0.05, "weight_decay": 1e-5,
                    "transform": "one_view"},
}
_IMAGENET = dict(backbone="resnet50", model_size="base", image_size=224, batch_size=256, epochs=100, warmup_epochs=10,
                 schedule="cosine")
IMAGENET_SETTINGS: dict[str, dict[str, Any]] = {
    "simclr": {**_IMAGENET, "optimizer": "lars", "learning_rate": 0.075 * 256 ** 0.5, "weight_decay": 1e-6},
    "moco_v2": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0},
    # MoCo v1's: SGD 0.03, weight decay 1e-4, batch 256, 200 epochs (steps at 120 / 160 there; cosine here)
    "moco_v1": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0,
                "epochs": 200, "transform": "moco_v1"},
    "byol": {**_IMAGENET, "optimizer": "lars", "learning_rate": 0.45, "weight_decay": 1e-6, "transform": "byol",
             "objective": {"momentum": 0.99}},  # the 100-epoch reference config
    "simsiam": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0},
    "swav": {**_IMAGENET, "optimizer": "lars", "learning_rate": 0.6, "weight_decay": 1e-6, "transform": "multicrop",
             "num_local_views": 6, "objective": {"queue_length": 3840}, "queue_start_epoch": 15},  # batch 256
    "dino": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4,  # DINO's RN50 command
             "transform": "multicrop", "num_local_views": 6, "global_scale": (0.14, 1.0), "freeze_last_layer_epochs": 1},
    "vicreg": {**_IMAGENET, "optimizer": "lars", "learning_rate": 0.2, "weight_decay": 1e-6},
    "barlow_twins": {**_IMAGENET, "optimizer": "lars", "learning_rate": 0.2, "weight_decay": 1.5e-6},
    # RotNet's ImageNet setting (an AlexNet there): SGD 0.01 (Nesterov momentum 0.9), weight decay 5e-4, batch 192,
    # 30 epochs, no warmup
    "rotation": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4, "batch_size": 192,
                 "epochs": 30, "warmup_epochs": 0, "transform": "rotation"},
    # the jigsaw paper's: batch 256, SGD 0.01, 350,000 iterations (about 70 epochs); weight decay AlexNet's (unstated)
    "jigsaw": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4, "max_steps": 350_000,
               "warmup_epochs": 0, "transform": "jigsaw"},
    # context prediction: generic SGD settings on a ResNet-50, not the paper's (an AlexNet-style pair network)
    "relative_position": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4,
                          "batch_size": 128, "warmup_epochs": 0, "transform": "relative_position"},
    "instance_discrimination": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.9,
                                "weight_decay": 5e-4, "epochs": 200, "warmup_epochs": 0, "transform": "one_view",
                                "objective": {"loss": "nce", "num_negatives": 4096, "temperature": 0.07,
                                              "bank_momentum": 0.5}},
    # CPC's ImageNet setting (sec. 3.2): 256-pixel images (from 300) cut into 7 x 7 patches of 64 with 32 overlap,
    # Adam 2e-4, batch 16 x 32 GPUs; a ResNet-50 here for its ResNet-v2-101 (to the third block, 1024 wide)
    "cpc": {**_IMAGENET, "image_size": 256, "batch_size": 512, "optimizer": "adamw", "learning_rate": 2e-4,
            "weight_decay": 0.0, "warmup_epochs": 0, "transform": "cpc"},
    # context encoders on ImageNet at the paper's 128 x 128 (its settings: see GPU_SETTINGS), a ResNet-50 here
    "inpainting": {**_IMAGENET, "image_size": 128, "batch_size": 64, "optimizer": "adamw", "learning_rate": 2e-4,
                   "adam_beta1": 0.5, "weight_decay": 0.0, "warmup_epochs": 0, "transform": "inpainting"},
    # colorization: the paper's ImageNet run (its settings as in GPU_SETTINGS), on a ResNet-50
    "colorization": {**_IMAGENET, "optimizer": "adamw", "learning_rate": 3e-5, "adam_beta1": 0.9, "adam_beta2": 0.99,
                     "weight_decay": 1e-3, "batch_size": 40, "max_steps": 450_000, "warmup_epochs": 0,
                     "transform": "colorization"},
    "cmc": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
            "epochs": 240, "warmup_epochs": 0, "transform": "cmc",
            "objective": {"negatives": "bank", "num_negatives": 16384, "temperature": 0.07, "bank_momentum": 0.5}},
    # DeepCluster's (sec. 4.1): SGD 0.05, momentum 0.9, weight decay 1e-5, batch 256, 500 epochs; the size "base":
    # k 10,000, PCA to 256, top layers 4096 / 4096 with dropout 0.5 (no Sobel filter here)
    "deepcluster": {**_IMAGENET, "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-5,
                    "epochs": 500, "warmup_epochs": 0, "transform": "one_view"},
    # Deep InfoMax reports no ImageNet run (Tiny ImageNet, STL-10 and CIFAR at most): its Adam 1e-4 on a ResNet-50
    "deep_infomax": {**_IMAGENET, "optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 0.0, "warmup_epochs": 0,
                     "transform": "crop_flip", "objective": {"estimator": "jsd"}},
    "moco_v3": {**_IMAGENET, "backbone": "vit", "optimizer": "adamw", "learning_rate": 1.5e-4, "weight_decay": 0.1,
                "warmup_epochs": 40, "epochs": 300},
}
_CPU = dict(backbone="resnet_tiny", model_size="small", image_size=32, batch_size=64, max_steps=300,
            optimizer="sgd", learning_rate=0.06 * 64 / 128, momentum=0.9, weight_decay=5e-4, warmup_steps=0,
            schedule="cosine", transform="simclr")
CPU_SETTINGS: dict[str, dict[str, Any]] = {
    **{m: dict(_CPU) for m in ("simclr", "moco_v2", "byol")},
    "moco_v1": {**_CPU, "transform": "moco_v1"},
    # VICReg's loss (25 / 25 / 1 weighted) and Barlow Twins' (a sum over 2048 dimensions) are too large for SGD at
    # 0.03: VICReg diverged within 15 steps, Barlow Twins fell below random init (21.7 % kNN after 200 steps vs
    # 30.4 %). LARS, whose step follows the weights' norm rather than the loss's scale, as solo-learn's CIFAR-10
    # configs and both papers, scaled to the batch
    **{m: {**_CPU, "optimizer": "lars", "learning_rate": 0.3 * 64 / 256, "weight_decay": 1e-4,
           "trust_coefficient": 0.02, "warmup_steps": 20} for m in ("vicreg", "barlow_twins")},
    "simsiam": {**_CPU, "learning_rate": 0.06},
    "swav": {**_CPU, "optimizer": "adamw", "learning_rate": 1e-3 * 64 / 128, "weight_decay": 1e-6,
             "transform": "multicrop", "num_local_views": 0, "global_scale": (0.14, 1.0)},
    "dino": {**_CPU, "transform": "multicrop", "num_local_views": 0},
    "moco_v3": {**_CPU, "optimizer": "lars", "learning_rate": 0.3 * 64 / 256, "weight_decay": 1e-6,
                "trust_coefficient": 0.02, "warmup_steps": 30},
    "rotation": {**_CPU, "learning_rate": 0.1 * 64 / 128, "transform": "rotation"},
    "jigsaw": {**_CPU, "transform": "jigsaw"},
    "relative_position": {**_CPU, "transform": "relative_position"},
    # the paper's linear head and T 0.07 fell below random init at this budget (23.2 % kNN vs 30.4 %: the features
    # of a random-init ResNet share one direction, cosine 0.95, and 3.8 epochs of a stale bank do not part them);
    # a batch norm on the head's output centres them (31.6 %), T 0.2 then 33.7 % (docs/benchmarks.md)
    "instance_discrimination": {**_CPU, "transform": "one_view", "objective": {"head_norm": "all", "temperature": 0.2}},
    "deepcluster": {**_CPU, "transform": "one_view"},   # k 100 (the size "small")
    # the paper's Adam at 1e-4; 512 units instead of 2048 for the heads (4096 locations a batch at 8 x 8)
    "deep_infomax": {**_CPU, "optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 0.0, "transform": "crop_flip",
                     "objective": {"units": 512}},
    # in-batch negatives (63 per anchor), T 0.07; lr 0.03 is also the paper's
    "cmc": {**_CPU, "transform": "cmc", "objective": {"negatives": "batch", "temperature": 0.07}},
    "colorization": {**_CPU, "transform": "colorization"},
    # the paper's Adam (beta1 0.5, no weight decay) at 5 x its rate: 300 steps are a fraction of an epoch
    "inpainting": {**_CPU, "optimizer": "adamw", "learning_rate": 1e-3, "adam_beta1": 0.5, "weight_decay": 0.0,
                   "transform": "inpainting"},
    # CPC: the paper's Adam (no weight decay), at 1e-3 for a run of 300 steps; the patches in colour (the kNN and
    # probes see colour images: greyscale patches, the paper's, gave 30.7 % kNN after 300 steps vs 30.4 % at random,
    # colour 35.8 %)
    "cpc": {**_CPU, "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.0, "transform": "cpc_colour"},
}


__all__ = ["CPU_SETTINGS", "GPU_SETTINGS", "IMAGENET_SETTINGS"]
