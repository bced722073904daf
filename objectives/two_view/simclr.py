"""SimCLR (Chen et al., 2020, arXiv:2002.05709), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, get_views, load_monitor_state,
                                                mlp, monitor_state, online_encoder, take_encoder)
from selfsup.objectives.two_view.losses import nt_xent
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.objectives.two_view.sizes import GRAPHCL, SCARF
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class SimCLRConfig:
    """Chen et al. 2020 (SimCLR v1/v2), head as lightly's ``SimCLRProjectionHead``: ``num_layers`` linear layers
    width -> hidden -> ... -> out_dim, each followed by batch norm (``batch_norm``), ReLU between; hidden None =
    the encoder's feature width (2048 -> 2048 -> 128 on ResNet-50, 512 -> 512 -> 128 on ResNet-18), out_dim None too
    (GraphCL's head). NT-Xent at
    ``temperature`` (0.5: lightly's CIFAR-10; 0.1: the paper's ImageNet), negatives gathered from every process."""

    hidden_dim: int | None = None
    out_dim: int | None = 128
    num_layers: int = 2
    batch_norm: bool = True
    temperature: float = 0.5
    gather: bool = True


class SimCLR(Objective):
    def __init__(self, encoder: Encoder, config: SimCLRConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SimCLRConfig()
        width = take_encoder(self, encoder)
        hidden = c.hidden_dim or width
        out = c.out_dim or width
        self.projector = mlp([width] + [hidden] * (c.num_layers - 1) + [out],
                             "all" if c.batch_norm else "none")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(out)

    def project(self, views: Sequence[Batch]) -> list[Tensor]:
        """(B, out_dim) projections of the first two views."""
        return list(self.projector(encode_online(self, views[:2])).chunk(2))

    def embed_for_loss(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """What the loss needs of a batch (``selfsup/gradcache.py``): the two views' projections."""
        z1, z2 = self.project(get_views(batch))
        return z1, z2

    def loss_from_embeddings(self, embeddings: tuple[Tensor, Tensor]) -> ObjectiveOutput:
        z1, z2 = embeddings
        loss = nt_xent(z1, z2, self.config.temperature, self.config.gather)
        return ObjectiveOutput(loss, None, {"nt_xent": loss.detach(), **self.monitor(z1, int(self.global_step), z2)})

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.loss_from_embeddings(self.embed_for_loss(batch))

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {
    "simclr": dict(tiny=dict(hidden_dim=32, out_dim=16), small=dict(hidden_dim=None, out_dim=128, temperature=0.5),
                   base=dict(hidden_dim=None, out_dim=128, temperature=0.1)),
    "graphcl": dict(tiny=GRAPHCL, small=GRAPHCL, base=GRAPHCL),
    "scarf": dict(tiny=SCARF, small=SCARF, base=SCARF),
}
PRESETS = {"simclr": dict(
    cpu=dict(CPU),
    gpu={**LIGHTLY_CIFAR, "reference_knn": 0.875},
    imagenet={**IMAGENET, "optimizer": "lars", "learning_rate": 0.075 * 256 ** 0.5, "weight_decay": 1e-6},
)}


__all__ = ["SimCLRConfig", "SimCLR"]
