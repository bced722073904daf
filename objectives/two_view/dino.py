"""DINO (Caron et al., 2021, arXiv:2104.14294), on any encoder: one of the
two-view methods (``objectives/two_view``: the shared pieces are in ``common.py``, the losses in ``losses.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.two_view.common import (Monitored, copy_student_to_teacher, encode_online, encode_teacher,
                                                gate_grad, get_views, load_monitor_state, make_teacher, mlp,
                                                monitor_state, step_with_teacher, take_encoder)
from selfsup.objectives.two_view.losses import DINOLoss
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


class WeightNormLinear(nn.Module):
    """DINO's last layer, ``weight_norm(Linear(in, out, bias=False))``: ``weight = g * v / ||v||`` row-wise, with
    ``g`` fixed to 1 (``norm_last_layer``) or learned from 1. ``v`` keeps ``nn.Linear``'s initialisation."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool = False) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1)) if learn_norm else None

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        w = F.normalize(gate_grad(self.weight_v, not frozen), dim=1)
        if self.weight_g is not None:
            w = w * gate_grad(self.weight_g, not frozen)
        return F.linear(x, w)


class DINOHead(nn.Module):
    """DINO's head (Caron et al. 2021, facebookresearch/dino ``DINOHead``): an MLP of ``num_layers`` linear layers
    width -> hidden -> ... -> bottleneck with GELU (BN after the hidden layers with ``use_bn``), truncated-normal
    init (std 0.02), L2 normalisation, then the weight-normalised last layer to ``out_dim``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.mlp = mlp([in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim], "hidden" if use_bn else "none",
                       activation="gelu")
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=not norm_last_layer)

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1), frozen=freeze_last_layer)


@dataclass
class DINOConfig:
    """Caron et al. 2021 (main_dino.py): head 3 layers, hidden 2048, bottleneck 256, ``out_dim`` 65536 (paper;
    2048 for CIFAR as lightly), BN in the head for ResNets (``use_bn``), ``norm_last_layer``; the last layer
    gets no gradient for ``freeze_last_layer_steps`` (an epoch in DINO); teacher = EMA with ``momentum`` 0.996 ->
    1 (cosine); DINOLoss with the teacher temperature rising from ``warmup_teacher_temp`` to ``teacher_temp``
    over ``warmup_teacher_temp_steps``, ``student_temp`` 0.1, centre momentum 0.9. The teacher sees the
    ``num_global_views`` global views, the student all views. ``export``: which encoder :meth:`encoder` returns
    by default ("teacher", the one the paper evaluates, or "student")."""

    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    out_dim: int = 65536
    head_layers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True
    freeze_last_layer_steps: int = 0
    momentum: float = 0.996
    momentum_end: float = 1.0
    max_steps: int = 0
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    num_global_views: int = 2
    export: str = "teacher"

    def __post_init__(self) -> None:
        if self.export not in ("teacher", "student"):
            raise ValueError(f"export is {self.export!r}; choose 'teacher' or 'student'")


class DINO(Objective):
    def __init__(self, encoder: Encoder, config: DINOConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DINOConfig()
        width = take_encoder(self, encoder)
        self.head = DINOHead(width, c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers, c.use_bn,
                             c.norm_last_layer)
        self.teacher = make_teacher(self.student())
        self.loss_fn = DINOLoss(c.out_dim, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_steps,
                                c.student_temp, c.center_momentum)
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.bottleneck_dim)

    def student(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter, "backbone": self.backbone, "head": self.head}

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.config.max_steps, self.config.momentum, self.config.momentum_end)

    def embed_for_loss(self, batch: Batch) -> tuple[Tensor, ...]:
        """What the loss needs of a batch (``selfsup/gradcache.py``): the student's L2-normalised bottleneck of
        every view, then the teacher's of the global views (no gradient), each (B, bottleneck_dim). The last
        layer runs in the loss, so a cache holds 256-wide rows rather than ``out_dim``-wide ones."""
        c, views = self.config, get_views(batch, self.config.num_global_views)
        student = F.normalize(self.head.mlp(encode_online(self, views)), dim=-1).chunk(len(views))
        with torch.no_grad():
            teacher = F.normalize(self.teacher["head"].mlp(encode_teacher(self, views[: c.num_global_views])), dim=-1)
        return (*student, *teacher.chunk(c.num_global_views))

    def loss_from_embeddings(self, embeddings: tuple[Tensor, ...]) -> ObjectiveOutput:
        """DINO's loss from the bottlenecks of :meth:`embed_for_loss`; in training the centre moves once per call
        (once per optimizer step under ``--contrastive_accumulation``)."""
        c, step = self.config, int(self.global_step)
        n_views = len(embeddings) - c.num_global_views
        bottleneck = torch.cat(embeddings[:n_views])
        student = list(self.head.last_layer(bottleneck, frozen=step < c.freeze_last_layer_steps).chunk(n_views))
        with torch.no_grad():
            teacher = list(self.teacher["head"].last_layer(torch.cat(embeddings[n_views:]))
                           .chunk(c.num_global_views))
        loss = self.loss_fn(student, teacher, step, update=self.training)
        metrics = {"dino_loss": loss.detach(), "momentum": self.momentum(step),
                   "teacher_temp": self.loss_fn.teacher_temperature(step), **self.monitor(embeddings[0], step, embeddings[1])}
        return ObjectiveOutput(loss, None, metrics)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        return self.loss_from_embeddings(self.embed_for_loss(batch))

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    def encoder(self, which: str | None = None) -> Encoder:
        """The teacher's encoder (default, ``config.export``) or the student's (``which="student"``)."""
        which = which or self.config.export
        if which == "teacher":
            return Encoder(self.teacher["adapter"], self.teacher["backbone"], self.pooling, self.layers)
        if which == "student":
            return Encoder(self.adapter, self.backbone, self.pooling, self.layers)
        raise ValueError(f"which is {which!r}; choose 'teacher' or 'student'")


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"dino": dict(tiny=dict(hidden_dim=32, bottleneck_dim=8, out_dim=32, head_layers=2, momentum=0.99),
                      small=dict(hidden_dim=2048, bottleneck_dim=256, out_dim=2048, head_layers=2, momentum=0.99),
                      base=dict(hidden_dim=2048, bottleneck_dim=256, out_dim=65536, head_layers=3, momentum=0.996))}
BACKBONE_DEFAULTS = {"dino": {"resnet": dict(use_bn=True)}}   # the head has BN on ResNets (lightly, DINO's RN50 runs)
PRESETS = {"dino": dict(
    cpu={**CPU, "transform": "multicrop", "num_local_views": 0},
    gpu={**LIGHTLY_CIFAR, "transform": "multicrop", "num_local_views": 0, "reference_knn": 0.884},
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "weight_decay": 1e-4,  # DINO's RN50 command
              "transform": "multicrop", "num_local_views": 6, "global_scale": (0.14, 1.0),
              "freeze_last_layer_epochs": 1},
)}


__all__ = ["WeightNormLinear", "DINOHead", "DINOConfig", "DINO"]
