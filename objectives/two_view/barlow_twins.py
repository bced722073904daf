"""Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, get_views, load_monitor_state,
                                                mlp, monitor_state, online_encoder, take_encoder)
from selfsup.objectives.two_view.losses import barlow_twins_loss
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class BarlowTwinsConfig:
    """Zbontar et al. 2021: projector ``num_layers`` linear layers of ``hidden_dim`` (8192 x 3 paper; 2048 x 2
    lightly CIFAR) with BN + ReLU after the hidden ones; ``lambda_`` 5e-3 on the off-diagonal."""

    hidden_dim: int = 8192
    out_dim: int = 8192
    num_layers: int = 3
    lambda_: float = 5e-3


class BarlowTwins(Objective):
    def __init__(self, encoder: Encoder, config: BarlowTwinsConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BarlowTwinsConfig()
        width = take_encoder(self, encoder)
        self.projector = mlp([width] + [c.hidden_dim] * (c.num_layers - 1) + [c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z1, z2 = self.projector(encode_online(self, get_views(batch)[:2])).chunk(2)
        loss = barlow_twins_loss(z1, z2, self.config.lambda_)
        return ObjectiveOutput(loss, None, {"barlow_twins_loss": loss.detach(),
                                            **self.monitor(z1, int(self.global_step), z2)})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"barlow_twins": dict(tiny=dict(hidden_dim=32, out_dim=32, num_layers=2),
                              small=dict(hidden_dim=2048, out_dim=2048, num_layers=2),
                              base=dict(hidden_dim=8192, out_dim=8192, num_layers=3))}
PRESETS = {"barlow_twins": dict(
    # the loss (a sum over 2048 dimensions) is too large for SGD at 0.03: it fell below random init (21.7 % kNN after
    # 200 steps vs 30.4 %). LARS, whose step follows the weights' norm rather than the loss's scale, as solo-learn's
    # CIFAR-10 configs and the paper, scaled to the batch
    cpu={**CPU, "optimizer": "lars", "learning_rate": 0.3 * 64 / 256, "weight_decay": 1e-4, "trust_coefficient": 0.02,
         "warmup_steps": 20},
    gpu={**LIGHTLY_CIFAR, "reference_knn": 0.857},
    imagenet={**IMAGENET, "optimizer": "lars", "learning_rate": 0.2, "weight_decay": 1.5e-6},
)}


__all__ = ["BarlowTwinsConfig", "BarlowTwins"]
