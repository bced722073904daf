"""Barlow Twins (Zbontar et al., 2021, arXiv:2103.03230), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, get_views, load_monitor_state,
                                                mlp, monitor_state, online_encoder, take_encoder)
from selfsup.objectives.two_view.losses import barlow_twins_loss
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


__all__ = ["BarlowTwinsConfig", "BarlowTwins"]
