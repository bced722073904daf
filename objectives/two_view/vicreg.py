"""VICReg (Bardes, Ponce & LeCun, 2022, arXiv:2105.04906), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, get_views, load_monitor_state,
                                                mlp, monitor_state, online_encoder, take_encoder)
from selfsup.objectives.two_view.losses import vicreg_terms
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class VICRegConfig:
    """Bardes, Ponce & LeCun 2022: expander ``num_layers`` linear layers of ``hidden_dim`` (8192-8192-8192 paper)
    with BN + ReLU after the hidden ones; loss weights 25 / 25 / 1 (lambda, mu, nu)."""

    hidden_dim: int = 8192
    out_dim: int = 8192
    num_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0


class VICReg(Objective):
    def __init__(self, encoder: Encoder, config: VICRegConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VICRegConfig()
        width = take_encoder(self, encoder)
        self.projector = mlp([width] + [c.hidden_dim] * (c.num_layers - 1) + [c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        z1, z2 = self.projector(encode_online(self, get_views(batch)[:2])).chunk(2)
        terms = vicreg_terms(z1, z2)
        loss = (c.sim_weight * terms["invariance"] + c.var_weight * terms["variance"]
                + c.cov_weight * terms["covariance"])
        metrics = {f"vicreg_{k}": v.detach() for k, v in terms.items()}
        return ObjectiveOutput(loss, None, {**metrics, **self.monitor(z1, int(self.global_step), z2)})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"vicreg": dict(tiny=dict(hidden_dim=32, out_dim=32, num_layers=2),
                        small=dict(hidden_dim=2048, out_dim=2048, num_layers=3),  # not in lightly's CIFAR benchmark
                        base=dict(hidden_dim=8192, out_dim=8192, num_layers=3))}
PRESETS = {"vicreg": dict(
    # the loss (25 / 25 / 1 weighted) is too large for SGD at 0.03: it diverged within 15 steps. LARS, whose step
    # follows the weights' norm rather than the loss's scale, as solo-learn's CIFAR-10 configs and the paper, scaled
    # to the batch
    cpu={**CPU, "optimizer": "lars", "learning_rate": 0.3 * 64 / 256, "weight_decay": 1e-4, "trust_coefficient": 0.02,
         "warmup_steps": 20},
    # not in lightly's CIFAR-10 benchmark: solo-learn's CIFAR-10 settings (LARS, lr per 256, 10 warmup epochs of 1000)
    gpu={**LIGHTLY_CIFAR, "optimizer": "lars", "learning_rate": 0.3 * 512 / 256, "weight_decay": 1e-4,
         "trust_coefficient": 0.02, "warmup_epochs": 10, "epochs": 1000},
    imagenet={**IMAGENET, "optimizer": "lars", "learning_rate": 0.2, "weight_decay": 1e-6},
)}


__all__ = ["VICRegConfig", "VICReg"]
