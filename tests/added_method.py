"""A method added as DESIGN.md says, for ``tests/test_adding_a_method.py``: this one module holds its class, its
config, its head sizes and its image presets; one registry line (which the test adds) makes it a method of
``recipes/two_view.py``. No other file names it.

Alignment and uniformity on the hypersphere as the loss (Wang & Isola, ICML 2020, eq. 4-6): for the L2-normalised
projections z1, z2 (B, out_dim) of two views, ``mean ||z1 - z2||^2 + w * (U(z1) + U(z2)) / 2`` with
``U(z) = log mean_{i != j} exp(-t ||z_i - z_j||^2)``. The batch is the process's own (a test method: the
distributed gathering of the shipped methods is left out)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.objectives.two_view.common import count_step, encode_online, get_views, mlp, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class AlignUniformConfig:
    """hidden_dim None: the encoder's width; uniformity_weight: w; t: the uniformity's scale (the paper's 2)."""

    hidden_dim: int | None = None
    out_dim: int = 128
    uniformity_weight: float = 1.0
    t: float = 2.0


def uniformity(z: Tensor, t: float) -> Tensor:
    """log of the mean Gaussian potential over the distinct pairs of the rows of ``z`` (B, D)."""
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log()


class AlignUniform(Objective):
    def __init__(self, encoder: Encoder, config: AlignUniformConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or AlignUniformConfig()
        width = take_encoder(self, encoder)
        self.projector = mlp([width, c.hidden_dim or width, c.out_dim])
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z1, z2 = F.normalize(self.projector(encode_online(self, get_views(batch)[:2])), dim=-1).chunk(2)
        align = (z1 - z2).pow(2).sum(-1).mean()
        uniform = (uniformity(z1, self.config.t) + uniformity(z2, self.config.t)) / 2
        loss = align + self.config.uniformity_weight * uniform
        return ObjectiveOutput(loss, None, {"align": align.detach(), "uniform": uniform.detach()})

    on_step_end = count_step

    encoder = online_encoder


# its sizes and presets, keyed by the method's name (the registry hands them to the builder and the recipe)
SIZES = {"align_uniform": dict(tiny=dict(hidden_dim=16, out_dim=8), small=dict(hidden_dim=512, out_dim=128),
                               base=dict(hidden_dim=2048, out_dim=128))}
PRESETS = {"align_uniform": dict(
    cpu={**CPU, "learning_rate": 0.02, "objective": {"uniformity_weight": 0.5}},
    gpu={**LIGHTLY_CIFAR, "objective": {"uniformity_weight": 0.5}},
)}


__all__ = ["AlignUniformConfig", "AlignUniform", "uniformity"]
