"""MoCo v2 (He et al., 2020, arXiv:1911.05722; Chen et al., 2020, arXiv:2003.04297), on any encoder, and MoCo v1 (the
same class with a linear head, ``hidden_dim=0``, and v1's temperature and augmentation): one of the two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.two_view.common import (Monitored, copy_student_to_teacher, encode_online, encode_teacher,
                                                gather_rows, get_views, load_monitor_state, make_teacher, mlp,
                                                monitor_state, online_encoder, ring_write, step_with_teacher,
                                                take_encoder)
from selfsup.objectives.two_view.losses import info_nce_queue
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class MoCoV2Config:
    """He et al. 2020 / Chen et al. 2020 (MoCo v2): projector width -> hidden -> out_dim with ReLU, no BN (hidden
    None = width: 2048 -> 2048 -> 128; 0 = MoCo v1's linear head, width -> out_dim); key encoder = EMA with ``momentum`` (0.999 paper, 0.99 lightly CIFAR;
    ``momentum_end`` None = constant, else cosine to it); queue of ``queue_size`` keys (65536 paper, 4096 lightly
    CIFAR); InfoNCE at ``temperature`` (0.2 paper, 0.1 lightly CIFAR). ``symmetric``: the mean of both
    directions (lightly's CIFAR benchmark / the MoCo CIFAR demo), both against the queue *before* either view's
    keys are enqueued (lightly #564), then both views' keys are enqueued; else q = view 1, k = view 2."""

    hidden_dim: int | None = None
    out_dim: int = 128
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    momentum_end: float | None = None
    max_steps: int = 0
    symmetric: bool = False


class MoCoV2(Objective):
    def __init__(self, encoder: Encoder, config: MoCoV2Config | None = None) -> None:
        super().__init__()
        self.config = c = config or MoCoV2Config()
        if c.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {c.queue_size}")
        width = take_encoder(self, encoder)
        dims = [width, c.out_dim] if c.hidden_dim == 0 else [width, c.hidden_dim or width, c.out_dim]
        self.projector = mlp(dims, "none")
        self.teacher = make_teacher(self.student())
        self.register_buffer("queue", F.normalize(torch.randn(c.queue_size, c.out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def student(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter, "backbone": self.backbone, "projector": self.projector}

    def momentum(self, step: int) -> float:
        c = self.config
        return cosine_momentum(step, c.max_steps, c.momentum, c.momentum if c.momentum_end is None else c.momentum_end)

    def queries_and_keys(self, views: Sequence[Batch]) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised queries (with gradient) and keys (momentum encoder, no gradient), (B, out_dim) per view."""
        q = F.normalize(self.projector(encode_online(self, views[:2])), dim=1)
        with torch.no_grad():
            t = self.teacher
            k = F.normalize(t["projector"](encode_teacher(self, views[:2])), dim=1)
        return list(q.chunk(2)), list(k.chunk(2))

    def embed_for_loss(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """What the loss needs of a batch (``selfsup/gradcache.py``): queries q1, q2 and keys k1, k2."""
        (q1, q2), (k1, k2) = self.queries_and_keys(get_views(batch))
        return q1, q2, k1, k2

    def loss_from_embeddings(self, embeddings: tuple[Tensor, Tensor, Tensor, Tensor]) -> ObjectiveOutput:
        """The loss against the queue, then (training) the batch's keys enqueued: once per call, so once per
        optimizer step under ``--contrastive_accumulation``."""
        c = self.config
        q1, q2, k1, k2 = embeddings
        queue = self.queue.clone()                   # what both directions see; the buffer changes below
        if c.symmetric:
            loss = (info_nce_queue(q1, k2, queue, c.temperature) + info_nce_queue(q2, k1, queue, c.temperature)) / 2
            new_keys = [k1, k2]
        else:
            loss, new_keys = info_nce_queue(q1, k2, queue, c.temperature), [k2]
        if self.training:
            ring_write(self.queue, self.queue_ptr, torch.cat([gather_rows(k) for k in new_keys]))
        step = int(self.global_step)
        metrics = {"info_nce": loss.detach(), "momentum": self.momentum(step), **self.monitor(q1, step, q2)}
        return ObjectiveOutput(loss, None, metrics)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.loss_from_embeddings(self.embed_for_loss(batch))

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {
    "moco_v2": dict(
        tiny=dict(hidden_dim=32, out_dim=16, queue_size=64, temperature=0.1, momentum=0.99, symmetric=True),
        small=dict(hidden_dim=None, out_dim=128, queue_size=4096, temperature=0.1, momentum=0.99, symmetric=True),
        base=dict(hidden_dim=None, out_dim=128, queue_size=65536, temperature=0.2, momentum=0.999)),
    "moco_v1": dict(
        tiny=dict(hidden_dim=0, out_dim=16, queue_size=64, temperature=0.07, momentum=0.99, symmetric=True),
        small=dict(hidden_dim=0, out_dim=128, queue_size=4096, temperature=0.1, momentum=0.99, symmetric=True),
        base=dict(hidden_dim=0, out_dim=128, queue_size=65536, temperature=0.07, momentum=0.999)),
}
PRESETS = {
    "moco_v2": dict(
        cpu=dict(CPU),
        gpu={**LIGHTLY_CIFAR, "objective": {"queue_size": 8192}, "reference_knn": 0.900},  # for batch 512
        imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}),
    "moco_v1": dict(
        cpu={**CPU, "transform": "moco_v1"},
        gpu={**LIGHTLY_CIFAR, "objective": {"queue_size": 8192}, "transform": "moco_v1"},  # v2's, with v1's parts
        # MoCo v1's: SGD 0.03, weight decay 1e-4, batch 256, 200 epochs (steps at 120 / 160 there; cosine here)
        imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0,
                  "epochs": 200, "transform": "moco_v1"}),
}


__all__ = ["MoCoV2Config", "MoCoV2"]
