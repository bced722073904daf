"""MoCo v3 (Chen, Xie & He, 2021, arXiv:2104.02057), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.two_view.common import (Monitored, copy_student_to_teacher, get_views, load_monitor_state,
                                                make_teacher, mlp, monitor_state, online_encoder, predict_and_target,
                                                step_with_teacher, take_encoder)
from selfsup.objectives.two_view.losses import moco_v3_loss
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class MoCoV3Config:
    """Chen, Xie & He 2021 (facebookresearch/moco-v3 ``_build_mlp``): projector ``proj_layers`` linear layers
    (3 for ViT, 2 for ResNet) of ``hidden_dim`` with BN + ReLU, the output BN without affine; predictor 2 layers
    (hidden BN + ReLU, no output BN); ctr loss symmetrised ``ctr(q1, k2) + ctr(q2, k1)`` with the 2T factor, at
    ``temperature`` (0.2 ViT, 1.0 ResNet); momentum ``momentum`` -> ``momentum_end`` by the cosine schedule;
    no queue. ``freeze_embedding``: the adapter's content embedding stays at its random init (the frozen
    random patch projection of the paper's sec. 4.2 on a ViT)."""

    hidden_dim: int = 4096
    out_dim: int = 256
    proj_layers: int = 3
    temperature: float = 0.2
    momentum: float = 0.99
    momentum_end: float = 1.0
    max_steps: int = 0
    freeze_embedding: bool = False


class MoCoV3(Objective):
    def __init__(self, encoder: Encoder, config: MoCoV3Config | None = None) -> None:
        super().__init__()
        self.config = c = config or MoCoV3Config()
        width = take_encoder(self, encoder)
        if c.freeze_embedding:
            content = self.adapter.content_prefixes()
            frozen = [p for name, p in self.adapter.named_parameters() if content and name.startswith(content)]
            if not frozen:
                raise ValueError(f"freeze_embedding: {type(self.adapter).__name__} names no content-embedding "
                                 f"parameters (content_prefixes)")
            for p in frozen:
                p.requires_grad_(False)
        self.projector = mlp([width] + [c.hidden_dim] * (c.proj_layers - 1) + [c.out_dim], "all",
                             last_affine=False)
        self.predictor = mlp([c.out_dim, c.hidden_dim, c.out_dim], "hidden")
        self.teacher = make_teacher(self.student())
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def student(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter, "backbone": self.backbone, "projector": self.projector}

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.config.max_steps, self.config.momentum, self.config.momentum_end)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        (q1, q2), (k1, k2) = predict_and_target(self, get_views(batch)[:2])
        loss = moco_v3_loss(q1, k2, c.temperature) + moco_v3_loss(q2, k1, c.temperature)
        step = int(self.global_step)
        return ObjectiveOutput(loss, None, {"ctr": loss.detach(), "momentum": self.momentum(step),
                                            **self.monitor(q1, step, q2)})

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"moco_v3": dict(tiny=dict(hidden_dim=32, out_dim=16),
                         small=dict(hidden_dim=4096, out_dim=256),  # not in lightly's: solo-learn's CIFAR mocov3.yaml
                         base=dict(hidden_dim=4096, out_dim=256))}
# sec. 4, moco-v3 main_moco.py: a 2-layer projector on ResNets and T = 1 on ImageNet ResNet-50 (solo-learn's CIFAR
# ResNet-18: 0.2), a frozen random patch projection on ViTs
BACKBONE_DEFAULTS = {"moco_v3": {"resnet": dict(proj_layers=2), "resnet/base": dict(temperature=1.0),
                                 "vit": dict(freeze_embedding=True)}}
PRESETS = {"moco_v3": dict(
    cpu={**CPU, "optimizer": "lars", "learning_rate": 0.3 * 64 / 256, "weight_decay": 1e-6, "trust_coefficient": 0.02,
         "warmup_steps": 30},
    # not in lightly's CIFAR-10 benchmark: solo-learn's CIFAR-10 settings (LARS, lr per 256, 10 warmup epochs of 1000)
    gpu={**LIGHTLY_CIFAR, "optimizer": "lars", "learning_rate": 0.3 * 512 / 256, "weight_decay": 1e-6,
         "trust_coefficient": 0.02, "warmup_epochs": 10, "epochs": 1000, "transform": "byol"},
    imagenet={**IMAGENET, "backbone": "vit", "optimizer": "adamw", "learning_rate": 1.5e-4, "weight_decay": 0.1,
              "warmup_epochs": 40, "epochs": 300},
)}


__all__ = ["MoCoV3Config", "MoCoV3"]
