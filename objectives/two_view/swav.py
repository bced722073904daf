"""SwAV (Caron et al., 2020, arXiv:2006.09882), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import rank, world_size
from selfsup.objectives.two_view.common import (Monitored, count_step, encode_online, gate_grad, gather_rows,
                                                get_views, load_monitor_state, mlp, monitor_state, online_encoder,
                                                take_encoder)
from selfsup.objectives.two_view.losses import sinkhorn, swav_loss
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class SwAVConfig:
    """Caron et al. 2020 (facebookresearch/swav main_swav.py): projector width -> 2048 (BN, ReLU) -> 128, then
    L2-normalised; ``num_prototypes`` (3000 paper, 512 lightly CIFAR) prototypes, L2-normalised before every
    training forward (no gradient); codes by Sinkhorn (``epsilon`` 0.05, ``sinkhorn_iterations`` 3) of the views
    ``crops_for_assign``; swapped prediction at ``temperature`` 0.1 over all views (2 global + N local crops).
    The prototypes get no gradient for the first ``freeze_prototypes_steps`` steps (``freeze_prototypes_niters``).
    ``queue_length`` > 0: a queue of the past embeddings of each assigned view (rows of every process, newest
    first) fills from step ``queue_start_step`` and, once full, is prepended to the Sinkhorn input (each process
    takes its 1/N share of the rows, so N processes assign exactly as one)."""

    hidden_dim: int = 2048
    out_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    crops_for_assign: tuple[int, ...] = (0, 1)
    freeze_prototypes_steps: int = 313
    queue_length: int = 0
    queue_start_step: int = 0


class SwAV(Objective):
    def __init__(self, encoder: Encoder, config: SwAVConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SwAVConfig()
        c.crops_for_assign = tuple(int(i) for i in c.crops_for_assign)
        width = take_encoder(self, encoder)
        self.projector = mlp([width, c.hidden_dim, c.out_dim], "hidden")
        self.prototypes = nn.Linear(c.out_dim, c.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(len(c.crops_for_assign), max(c.queue_length, 0), c.out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def on_step_end(self, step: int) -> None:
        """Count the step and normalise the prototypes after the update. The forward normalises them again (a
        no-op then, kept for weights set by hand); under FSDP only this one reaches the stored shards, the
        forward's reaches the gathered copy alone."""
        count_step(self, step)
        self.normalize_prototypes()

    def queue_share(self) -> Tensor | None:
        """(n_assign, L / N, D): this process's share of the full queue, or None while it is off or filling."""
        c, n = self.config, world_size()
        if c.queue_length <= 0 or int(self.queue_filled) < c.queue_length:
            return None
        if c.queue_length % n:
            raise ValueError(f"queue_length {c.queue_length} is not a multiple of the {n} processes")
        share = c.queue_length // n
        return self.queue[:, rank() * share:(rank() + 1) * share]

    @torch.no_grad()
    def push(self, z_assigned: list[Tensor]) -> None:
        """Put the assigned views' embeddings (of every process) at the front of the queue."""
        for i, z in enumerate(z_assigned):
            rows = gather_rows(z)[: self.config.queue_length]
            n = rows.shape[0]
            self.queue[i] = torch.cat([rows.to(self.queue.dtype), self.queue[i, : self.queue.shape[1] - n]])
        self.queue_filled.fill_(min(int(self.queue_filled) + n, self.config.queue_length))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c, views = self.config, get_views(batch)
        if max(c.crops_for_assign) >= len(views):
            raise ValueError(f"crops_for_assign {c.crops_for_assign} needs at least "
                             f"{max(c.crops_for_assign) + 1} views, got {len(views)}")
        step = int(self.global_step)
        if self.training:
            self.normalize_prototypes()
        z = F.normalize(self.projector(encode_online(self, views)), dim=1)
        w = gate_grad(self.prototypes.weight, step >= c.freeze_prototypes_steps)
        scores = list((z @ w.T).chunk(len(views)))
        zs = list(z.detach().chunk(len(views)))
        queued = self.queue_share()
        codes = []
        for j, i in enumerate(c.crops_for_assign):
            extra = None if queued is None else queued[j] @ self.prototypes.weight.detach().T
            codes.append(sinkhorn(scores[i], c.epsilon, c.sinkhorn_iterations, queue_scores=extra))
        if self.training and c.queue_length > 0 and step >= c.queue_start_step:
            self.push([zs[i] for i in c.crops_for_assign])
        loss = swav_loss(scores, codes, c.temperature, c.crops_for_assign)
        metrics = {"swav_loss": loss.detach(), "queue_in_use": float(queued is not None), **self.monitor(zs[0], step, zs[1])}
        return ObjectiveOutput(loss, None, metrics)

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"swav": dict(tiny=dict(hidden_dim=32, out_dim=16, num_prototypes=8, freeze_prototypes_steps=0),
                      small=dict(hidden_dim=512, out_dim=128, num_prototypes=512, freeze_prototypes_steps=0),
                      base=dict(hidden_dim=2048, out_dim=128, num_prototypes=3000, freeze_prototypes_steps=313))}
PRESETS = {"swav": dict(
    cpu={**CPU, "optimizer": "adamw", "learning_rate": 1e-3 * 64 / 128, "weight_decay": 1e-6, "transform": "multicrop",
         "num_local_views": 0, "global_scale": (0.14, 1.0)},
    gpu={**LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 1e-3 * 512 / 128, "weight_decay": 1e-6,
         "transform": "multicrop", "num_local_views": 0, "global_scale": (0.14, 1.0), "reference_knn": 0.881},
    imagenet={**IMAGENET, "optimizer": "lars", "learning_rate": 0.6, "weight_decay": 1e-6, "transform": "multicrop",
              "num_local_views": 6, "objective": {"queue_length": 3840}, "queue_start_epoch": 15},  # batch 256
)}


__all__ = ["SwAVConfig", "SwAV"]
