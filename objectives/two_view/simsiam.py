"""SimSiam (Chen & He, 2021, arXiv:2011.10566), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, get_views, load_monitor_state,
                                                mlp, monitor_state, online_encoder, take_encoder)
from selfsup.objectives.two_view.losses import negative_cosine
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class SimSiamConfig:
    """Chen & He 2021: projector ``proj_layers`` linear layers of ``hidden_dim`` with BN on each, ReLU between,
    the output BN without affine (3 layers of 2048 on ImageNet; 2 on CIFAR, sec. B); predictor out_dim ->
    ``pred_hidden_dim`` (BN, ReLU) -> out_dim (the 512 bottleneck); loss ``D(p1, z2) / 2 + D(p2, z1) / 2``
    with stop-gradient on z."""

    hidden_dim: int = 2048
    out_dim: int = 2048
    proj_layers: int = 3
    pred_hidden_dim: int = 512


class SimSiam(Objective):
    def __init__(self, encoder: Encoder, config: SimSiamConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SimSiamConfig()
        width = take_encoder(self, encoder)
        self.projector = mlp([width] + [c.hidden_dim] * (c.proj_layers - 1) + [c.out_dim], "all",
                             last_affine=False)
        self.predictor = mlp([c.out_dim, c.pred_hidden_dim, c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z = self.projector(encode_online(self, get_views(batch)[:2]))
        (z1, z2), (p1, p2) = z.chunk(2), self.predictor(z).chunk(2)
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return ObjectiveOutput(loss, None, {"negative_cosine": loss.detach(),
                                            **self.monitor(z1, int(self.global_step), z2)})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"simsiam": dict(tiny=dict(hidden_dim=32, out_dim=32, proj_layers=2, pred_hidden_dim=8),
                         small=dict(hidden_dim=2048, out_dim=2048, proj_layers=2, pred_hidden_dim=512),
                         base=dict(hidden_dim=2048, out_dim=2048, proj_layers=3, pred_hidden_dim=512))}
PRESETS = {"simsiam": dict(
    cpu={**CPU, "learning_rate": 0.06},
    gpu={**LIGHTLY_CIFAR, "learning_rate": 0.06, "reference_knn": 0.906},  # lightly: no lr scaling
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0},
)}


__all__ = ["SimSiamConfig", "SimSiam"]
