"""BYOL (Grill et al., 2020, arXiv:2006.07733), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.two_view.common import (Monitored, copy_student_to_teacher, get_views, load_monitor_state,
                                                make_teacher, mlp, monitor_state, online_encoder, predict_and_target,
                                                step_with_teacher, take_encoder)
from selfsup.objectives.two_view.losses import byol_loss
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class BYOLConfig:
    """Grill et al. 2020: projector width -> 4096 (BN, ReLU) -> 256, predictor 256 -> 4096 (BN, ReLU) -> 256
    (lightly CIFAR: 1024 hidden); target = EMA of encoder + projector, ``momentum`` (tau_base 0.996 paper,
    0.99 lightly / the 100-epoch reference) -> 1 by the cosine schedule; loss ``L(p1, z2) + L(p2, z1)``, L = 2 - 2 cos
    (eq. 2-3)."""

    hidden_dim: int = 4096
    out_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum: float = 0.996
    momentum_end: float = 1.0
    max_steps: int = 0


class BYOL(Objective):
    def __init__(self, encoder: Encoder, config: BYOLConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BYOLConfig()
        width = take_encoder(self, encoder)
        self.projector = mlp([width, c.hidden_dim, c.out_dim], "hidden")
        self.predictor = mlp([c.out_dim, c.pred_hidden_dim, c.out_dim], "hidden")
        self.teacher = make_teacher(self.student())
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def student(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter, "backbone": self.backbone, "projector": self.projector}

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.config.max_steps, self.config.momentum, self.config.momentum_end)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        (p1, p2), (z1, z2) = predict_and_target(self, get_views(batch)[:2])
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        step = int(self.global_step)
        return ObjectiveOutput(loss, None, {"byol_loss": loss.detach(), "momentum": self.momentum(step),
                                            **self.monitor(p1, step, p2)})

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"byol": dict(tiny=dict(hidden_dim=32, out_dim=16, pred_hidden_dim=32, momentum=0.99),
                      small=dict(hidden_dim=1024, out_dim=256, pred_hidden_dim=1024, momentum=0.99),
                      base=dict(hidden_dim=4096, out_dim=256, pred_hidden_dim=4096, momentum=0.996))}
PRESETS = {"byol": dict(
    cpu=dict(CPU),
    gpu={**LIGHTLY_CIFAR, "reference_knn": 0.911},
    imagenet={**IMAGENET, "optimizer": "lars", "learning_rate": 0.45, "weight_decay": 1e-6, "transform": "byol",
              "objective": {"momentum": 0.99}},  # the 100-epoch reference config
)}


__all__ = ["BYOLConfig", "BYOL"]
