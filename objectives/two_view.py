"""Two-view (joint-embedding) pre-training: SimCLR, MoCo v2, MoCo v3, BYOL, SimSiam, SwAV, DINO, VICReg, Barlow Twins.

One class per method, no inheritance between them; they share the pure functions below (pooling, heads, EMA,
momentum schedule, queue writes) and the losses of ``objectives/two_view_losses.py``. Each is *given* an adapter
and a backbone (``builders.two_view`` composes them) and owns its heads.

**Batch.** ``batch["views"]``: a list of (B, C, H, W) tensors, augmentations of the same B images: the two global
views first, then (SwAV, DINO multi-crop) the local ones. Methods without multi-crop use the first two.

**Features.** Consecutive views of the same shape go through the encoder together (DINO's ``MultiCropWrapper``,
SwAV; one forward per resolution), so batch norm sees both global views at once, and each head runs once on the
concatenated features. One vector per image: the class token's output when the adapter prepends one (ViT, as DINO
and MoCo v3 do), else the mean over the tokens (a ResNet's tokens are its last feature map: global average
pooling). ``encoder()`` pools the same way, so the kNN and the linear probe see the method's vector.

**Global batch.** Every loss is the global batch's mean, the same value on every process (two_view_losses), and
every batch statistic is global: heads use :class:`GlobalBatchNorm`, ResNets too (``ResNetConfig.global_batchnorm``),
so N processes train as one. Queues take the keys of every process (gathered, no gradient) *after* the loss used
them; every process holds the same queue. ``loss`` is a mean (``num_targets=None``).

**Teachers.** MoCo, BYOL and DINO keep an EMA copy of (adapter, backbone, projector) as ``self.teacher``
(parameters without gradient, saved in checkpoints). It runs in the objective's train/eval mode (batch statistics
in training, as the references), keeps its own BN running statistics, and its parameters move only in
:meth:`on_step_end`: ``teacher <- m * teacher + (1 - m) * student`` with ``m = cosine_momentum(step)``
(BYOL eq. 3 generalised: ``end - (end - base) * (cos(pi * step / max_steps) + 1) / 2``; ``max_steps <= 0`` or
``end == base``: constant ``base``). No shuffle BN for MoCo: with global batch statistics it has no effect.

**State.** Queues, queue pointers, DINO's centre, prototypes, teachers and the step counter (``global_step``, set
by :meth:`on_step_end`, read by the schedules at forward time) are parameters or buffers; the collapse monitor's
counters go through ``extra_state``. Resume = straight run.

Metrics every step: the loss, the schedules, and ``collapse/*`` (selfsup.monitors) on the first view's embedding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.distributed import gather_with_grad, rank, world_size
from selfsup.monitors import CollapseMonitor
from selfsup.objectives.ema import frozen_copy
from selfsup.objectives.two_view_losses import (DINOLoss, barlow_twins_loss, byol_loss, info_nce_queue, moco_v3_loss,
                                                negative_cosine, nt_xent, sinkhorn, swav_loss, vicreg_terms)
from selfsup.types import Adapter, Batch, Encoder, Objective, ObjectiveOutput, masked_mean

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU}


# -- shared pure functions ---------------------------------------------------------------------------------------
def get_views(batch: Batch, need: int = 2) -> list[Tensor]:
    views = batch.get("views")
    if not isinstance(views, (list, tuple)) or len(views) < need:
        got = "no 'views'" if views is None else f"{len(views)} views"
        raise ValueError(f"a two-view batch needs 'views', a list of at least {need} (B, C, H, W) tensors; got {got}")
    return list(views)


def pooling_of(adapter: nn.Module) -> str:
    """``"first"`` (the class token's output) if the adapter prepends one, else ``"mean"`` over the tokens."""
    return "first" if getattr(adapter, "num_prefix_tokens", 0) > 0 else "mean"


def pooled(adapter: nn.Module, backbone: nn.Module, pixels: Tensor) -> Tensor:
    """(B, D) one vector per image, pooled as :func:`pooling_of` says."""
    tokens = adapter({"pixel_values": pixels})
    h = backbone(tokens.x, tokens.padding_mask).last_hidden_state
    return h[:, 0] if pooling_of(adapter) == "first" else masked_mean(h, tokens.padding_mask)


def runs(views: Sequence[Tensor]) -> list[list[int]]:
    """Indices of the consecutive views of equal shape: [[0, 1], [2, 3, 4, 5]] for 2 global + 4 local crops."""
    out: list[list[int]] = []
    for i, v in enumerate(views):
        if out and views[out[-1][-1]].shape == v.shape:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def encode(adapter: nn.Module, backbone: nn.Module, views: Sequence[Tensor]) -> Tensor:
    """(V * B, D) pooled features of all views, in view order; one forward per run of same-shape views."""
    return torch.cat([pooled(adapter, backbone, torch.cat([views[i] for i in run])) for run in runs(views)])


def mlp(dims: Sequence[int], norm: str = "hidden", last_affine: bool = True, activation: str = "relu") -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1] with the activation between them. ``norm``: "hidden" (a global
    batch norm after every hidden layer), "all" (also after the output layer, affine or not: ``last_affine``) or
    "none". A linear layer followed by a norm has no bias (the norm's shift replaces it), as lightly's heads."""
    if norm not in ("hidden", "all", "none"):
        raise ValueError(f"unknown head norm {norm!r}; choose 'hidden', 'all' or 'none'")
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        normed = norm == "all" or (norm == "hidden" and not last)
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=not normed))
        if normed:
            layers.append(GlobalBatchNorm(dims[i + 1], affine=last_affine or not last))
        if not last:
            layers.append(ACTS[activation]())
    return nn.Sequential(*layers)


def cosine_momentum(step: int, max_steps: int, base: float, end: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): ``end - (end - base) * (cos(pi * step / max_steps) + 1) / 2``,
    ``base`` at step 0 rising to ``end`` at ``max_steps`` (MoCo v3, DINO use the same); ``base`` when
    ``max_steps <= 0``."""
    if max_steps <= 0:
        return float(base)
    k = min(max(step, 0), max_steps)
    return float(end - (end - base) * (math.cos(math.pi * k / max_steps) + 1) / 2)


@torch.no_grad()
def ema_parameters(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """``teacher <- m * teacher + (1 - m) * student`` for every parameter (same names) the student trains; the
    ones it does not (fixed sin-cos positions, MoCo v3's frozen patch projection) are copied, so they stay exact.
    Buffers are left alone: the teacher keeps its own BN running statistics (MoCo, BYOL, DINO), which
    ``ema.update_momentum`` would overwrite with the student's."""
    t, s = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t.keys() != s.keys():
        raise ValueError("teacher and student have different parameters")
    moving = [k for k in t if s[k].requires_grad]
    for k in t:
        if not s[k].requires_grad:
            t[k].copy_(s[k].detach())
    if moving:
        ts = [t[k] for k in moving]
        torch._foreach_mul_(ts, m)
        torch._foreach_add_(ts, [s[k].detach().to(t[k].dtype) for k in moving], alpha=1.0 - m)


def make_teacher(modules: dict[str, nn.Module]) -> nn.ModuleDict:
    """An EMA teacher: a frozen deep copy of ``modules`` (parameters without gradient, in train mode)."""
    return frozen_copy(nn.ModuleDict(modules)).train()


def gate_grad(x: Tensor, keep: bool) -> Tensor:
    """``x`` itself; with ``keep=False`` its gradient is zero while it stays in the graph (so DDP reduces it, as
    SwAV's / DINO's frozen-for-N-steps layers need). The values are exactly ``x``'s."""
    return x if keep else x.detach() + x * 0.0


@torch.no_grad()
def gather_rows(x: Tensor) -> Tensor:
    """Every process's rows of ``x`` in rank order, without gradient (``x`` itself with one process)."""
    return gather_with_grad(x.detach())


@torch.no_grad()
def ring_write(queue: Tensor, ptr: Tensor, rows: Tensor) -> None:
    """Write ``rows`` (n, D) into the ring buffer ``queue`` (K, D) from ``ptr`` on, wrapping, and advance ``ptr``
    by n: the state of writing the rows one by one (when n > K only the last K survive). ``index_copy_`` with
    distinct indices: deterministic."""
    k, n = queue.shape[0], rows.shape[0]
    start = int(ptr) + max(n - k, 0)
    kept = rows[-k:].to(queue.dtype)
    queue.index_copy_(0, (start + torch.arange(kept.shape[0], device=queue.device)) % k, kept)
    ptr.fill_((int(ptr) + n) % k)


def check_config(cls, settings: dict[str, Any]):
    """``cls(**settings)`` with a clear error naming the unknown settings and the choices."""
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(settings) - known):
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; choose from {sorted(known)}")
    return cls(**settings)


class Monitored:
    """The collapse monitor of one objective (not a module: plain counters, saved via ``extra_state``)."""

    def __init__(self, dim: int) -> None:
        self.monitor = CollapseMonitor(dim)

    def __call__(self, z: Tensor, step: int) -> dict[str, float]:
        return self.monitor.update(z.detach(), step) if z.shape[0] >= 2 else {}

    def state(self) -> dict[str, Any]:
        return {"collapsed_since": self.monitor.collapsed_since, "warned": self.monitor.warned}

    def load(self, state: dict[str, Any]) -> None:
        self.monitor.collapsed_since = state.get("collapsed_since")
        self.monitor.warned = bool(state.get("warned", False))


def width(backbone: nn.Module) -> int:
    return int(backbone.hidden_size)


# -- what every method class shares (plain functions bound as methods: no inheritance between the methods) --------
def monitor_state(self) -> dict[str, Any]:
    """``extra_state``: the collapse monitor's counters."""
    return {"collapse": self.monitor.state()}


def load_monitor_state(self, state: dict[str, Any]) -> None:
    """``load_extra_state``."""
    self.monitor.load(state.get("collapse", {}))


def online_encoder(self) -> Encoder:
    """``encoder()``: the online (student) adapter + backbone, pooled as the method pools (class token on a ViT)."""
    return Encoder(self.adapter, self.backbone, pooling_of(self.adapter))


def count_step(self, step: int) -> None:
    """``on_step_end`` of the methods without a teacher: the step the schedules read at forward time."""
    self.global_step.fill_(step)


def step_with_teacher(self, step: int) -> None:
    """``on_step_end`` of the methods with an EMA teacher: count the step, then move the teacher."""
    self.global_step.fill_(step)
    ema_parameters(self.teacher, nn.ModuleDict(self.student()), self.momentum(step))


def copy_student_to_teacher(self) -> None:
    """``reset_teacher()``: the teacher becomes the student (after ``--init_from``)."""
    ema_parameters(self.teacher, nn.ModuleDict(self.student()), 0.0)


def predict_and_target(self, views: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(the online predictions of each view, the teacher's projections of each view, without gradient):
    BYOL's and MoCo v3's two branches."""
    online = self.predictor(self.projector(encode(self.adapter, self.backbone, views))).chunk(len(views))
    with torch.no_grad():
        t = self.teacher
        target = t["projector"](encode(t["adapter"], t["backbone"], views)).chunk(len(views))
    return online, target


# -- SimCLR ------------------------------------------------------------------------------------------------------
@dataclass
class SimCLRConfig:
    """Chen et al. 2020 (SimCLR v1/v2), head as lightly's ``SimCLRProjectionHead``: ``num_layers`` linear layers
    width -> hidden -> ... -> out_dim, each followed by batch norm (``batch_norm``), ReLU between; hidden None =
    the backbone width (2048 -> 2048 -> 128 on ResNet-50, 512 -> 512 -> 128 on ResNet-18). NT-Xent at
    ``temperature`` (0.5: lightly's CIFAR-10; 0.1: the paper's ImageNet), negatives gathered from every process."""

    hidden_dim: int | None = None
    out_dim: int = 128
    num_layers: int = 2
    batch_norm: bool = True
    temperature: float = 0.5
    gather: bool = True


class SimCLR(Objective):
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: SimCLRConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SimCLRConfig()
        self.adapter, self.backbone = adapter, backbone
        hidden = c.hidden_dim or width(backbone)
        self.projector = mlp([width(backbone)] + [hidden] * (c.num_layers - 1) + [c.out_dim],
                             "all" if c.batch_norm else "none")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def project(self, views: Sequence[Tensor]) -> list[Tensor]:
        """(B, out_dim) projections of the first two views."""
        return list(self.projector(encode(self.adapter, self.backbone, views[:2])).chunk(2))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z1, z2 = self.project(get_views(batch))
        loss = nt_xent(z1, z2, self.config.temperature, self.config.gather)
        return ObjectiveOutput(loss, None, {"nt_xent": loss.detach(), **self.monitor(z1, int(self.global_step))})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- MoCo v2 -----------------------------------------------------------------------------------------------------
@dataclass
class MoCoV2Config:
    """He et al. 2020 / Chen et al. 2020 (MoCo v2): projector width -> hidden -> out_dim with ReLU, no BN (hidden
    None = width: 2048 -> 2048 -> 128); key encoder = EMA with ``momentum`` (0.999 paper, 0.99 lightly CIFAR;
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: MoCoV2Config | None = None) -> None:
        super().__init__()
        self.config = c = config or MoCoV2Config()
        if c.queue_size < 1:
            raise ValueError(f"queue_size must be positive, got {c.queue_size}")
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone), c.hidden_dim or width(backbone), c.out_dim], "none")
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

    def queries_and_keys(self, views: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Normalised queries (with gradient) and keys (momentum encoder, no gradient), (B, out_dim) per view."""
        q = F.normalize(self.projector(encode(self.adapter, self.backbone, views[:2])), dim=1)
        with torch.no_grad():
            t = self.teacher
            k = F.normalize(t["projector"](encode(t["adapter"], t["backbone"], views[:2])), dim=1)
        return list(q.chunk(2)), list(k.chunk(2))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        (q1, q2), (k1, k2) = self.queries_and_keys(get_views(batch))
        queue = self.queue.clone()                   # what both directions see; the buffer changes below
        if c.symmetric:
            loss = (info_nce_queue(q1, k2, queue, c.temperature) + info_nce_queue(q2, k1, queue, c.temperature)) / 2
            new_keys = [k1, k2]
        else:
            loss, new_keys = info_nce_queue(q1, k2, queue, c.temperature), [k2]
        if self.training:
            ring_write(self.queue, self.queue_ptr, torch.cat([gather_rows(k) for k in new_keys]))
        step = int(self.global_step)
        metrics = {"info_nce": loss.detach(), "momentum": self.momentum(step), **self.monitor(q1, step)}
        return ObjectiveOutput(loss, None, metrics)

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- MoCo v3 -----------------------------------------------------------------------------------------------------
@dataclass
class MoCoV3Config:
    """Chen, Xie & He 2021 (facebookresearch/moco-v3 ``_build_mlp``): projector ``proj_layers`` linear layers
    (3 for ViT, 2 for ResNet) of ``hidden_dim`` with BN + ReLU, the output BN without affine; predictor 2 layers
    (hidden BN + ReLU, no output BN); ctr loss symmetrised ``ctr(q1, k2) + ctr(q2, k1)`` with the 2T factor, at
    ``temperature`` (0.2 ViT, 1.0 ResNet); momentum ``momentum`` -> ``momentum_end`` by the cosine schedule;
    no queue. ``freeze_patch_embed``: the random (frozen) patch projection of the paper's sec. 4.2 (ViT)."""

    hidden_dim: int = 4096
    out_dim: int = 256
    proj_layers: int = 3
    temperature: float = 0.2
    momentum: float = 0.99
    momentum_end: float = 1.0
    max_steps: int = 0
    freeze_patch_embed: bool = False


class MoCoV3(Objective):
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: MoCoV3Config | None = None) -> None:
        super().__init__()
        self.config = c = config or MoCoV3Config()
        self.adapter, self.backbone = adapter, backbone
        if c.freeze_patch_embed:
            if not hasattr(adapter, "patch_embed"):
                raise ValueError("freeze_patch_embed needs an adapter with a patch_embed (a ViT's ImageAdapter)")
            adapter.patch_embed.requires_grad_(False)
        self.projector = mlp([width(backbone)] + [c.hidden_dim] * (c.proj_layers - 1) + [c.out_dim], "all",
                             last_affine=False)
        self.predictor = mlp([c.out_dim, c.hidden_dim, c.out_dim], "hidden")
        self.teacher = make_teacher(self.student())
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def student(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter, "backbone": self.backbone, "projector": self.projector}

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.config.max_steps, self.config.momentum, self.config.momentum_end)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        (q1, q2), (k1, k2) = predict_and_target(self, get_views(batch)[:2])
        loss = moco_v3_loss(q1, k2, c.temperature) + moco_v3_loss(q2, k1, c.temperature)
        step = int(self.global_step)
        return ObjectiveOutput(loss, None, {"ctr": loss.detach(), "momentum": self.momentum(step),
                                            **self.monitor(q1, step)})

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- BYOL --------------------------------------------------------------------------------------------------------
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: BYOLConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BYOLConfig()
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone), c.hidden_dim, c.out_dim], "hidden")
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
                                            **self.monitor(p1, step)})

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- SimSiam -----------------------------------------------------------------------------------------------------
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: SimSiamConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SimSiamConfig()
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone)] + [c.hidden_dim] * (c.proj_layers - 1) + [c.out_dim], "all",
                             last_affine=False)
        self.predictor = mlp([c.out_dim, c.pred_hidden_dim, c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z = self.projector(encode(self.adapter, self.backbone, get_views(batch)[:2]))
        (z1, z2), (p1, p2) = z.chunk(2), self.predictor(z).chunk(2)
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return ObjectiveOutput(loss, None, {"negative_cosine": loss.detach(),
                                            **self.monitor(z1, int(self.global_step))})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- SwAV --------------------------------------------------------------------------------------------------------
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: SwAVConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SwAVConfig()
        c.crops_for_assign = tuple(int(i) for i in c.crops_for_assign)
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone), c.hidden_dim, c.out_dim], "hidden")
        self.prototypes = nn.Linear(c.out_dim, c.num_prototypes, bias=False)
        self.register_buffer("queue", torch.zeros(len(c.crops_for_assign), max(c.queue_length, 0), c.out_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

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
        z = F.normalize(self.projector(encode(self.adapter, self.backbone, views)), dim=1)
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
        metrics = {"swav_loss": loss.detach(), "queue_in_use": float(queued is not None), **self.monitor(zs[0], step)}
        return ObjectiveOutput(loss, None, metrics)

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- DINO --------------------------------------------------------------------------------------------------------
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: DINOConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DINOConfig()
        self.adapter, self.backbone = adapter, backbone
        self.head = DINOHead(width(backbone), c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers, c.use_bn,
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

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c, views = self.config, get_views(batch, self.config.num_global_views)
        step = int(self.global_step)
        bottleneck = F.normalize(self.head.mlp(encode(self.adapter, self.backbone, views)), dim=-1)
        logits = self.head.last_layer(bottleneck, frozen=step < c.freeze_last_layer_steps)
        student = list(logits.chunk(len(views)))
        with torch.no_grad():
            t = self.teacher
            teacher = list(t["head"](encode(t["adapter"], t["backbone"], views[: c.num_global_views]))
                           .chunk(c.num_global_views))
        loss = self.loss_fn(student, teacher, step, update=self.training)
        metrics = {"dino_loss": loss.detach(), "momentum": self.momentum(step),
                   "teacher_temp": self.loss_fn.teacher_temperature(step),
                   **self.monitor(bottleneck[: len(views[0])], step)}
        return ObjectiveOutput(loss, None, metrics)

    on_step_end, reset_teacher = step_with_teacher, copy_student_to_teacher

    extra_state, load_extra_state = monitor_state, load_monitor_state

    def encoder(self, which: str | None = None) -> Encoder:
        """The teacher's encoder (default, ``config.export``) or the student's (``which="student"``)."""
        which = which or self.config.export
        if which == "teacher":
            return Encoder(self.teacher["adapter"], self.teacher["backbone"], pooling_of(self.adapter))
        if which == "student":
            return Encoder(self.adapter, self.backbone, pooling_of(self.adapter))
        raise ValueError(f"which is {which!r}; choose 'teacher' or 'student'")


# -- VICReg ------------------------------------------------------------------------------------------------------
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
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: VICRegConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VICRegConfig()
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone)] + [c.hidden_dim] * (c.num_layers - 1) + [c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        z1, z2 = self.projector(encode(self.adapter, self.backbone, get_views(batch)[:2])).chunk(2)
        terms = vicreg_terms(z1, z2)
        loss = (c.sim_weight * terms["invariance"] + c.var_weight * terms["variance"]
                + c.cov_weight * terms["covariance"])
        metrics = {f"vicreg_{k}": v.detach() for k, v in terms.items()}
        return ObjectiveOutput(loss, None, {**metrics, **self.monitor(z1, int(self.global_step))})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# -- Barlow Twins ------------------------------------------------------------------------------------------------
@dataclass
class BarlowTwinsConfig:
    """Zbontar et al. 2021: projector ``num_layers`` linear layers of ``hidden_dim`` (8192 x 3 paper; 2048 x 2
    lightly CIFAR) with BN + ReLU after the hidden ones; ``lambda_`` 5e-3 on the off-diagonal."""

    hidden_dim: int = 8192
    out_dim: int = 8192
    num_layers: int = 3
    lambda_: float = 5e-3


class BarlowTwins(Objective):
    def __init__(self, adapter: Adapter, backbone: nn.Module, config: BarlowTwinsConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or BarlowTwinsConfig()
        self.adapter, self.backbone = adapter, backbone
        self.projector = mlp([width(backbone)] + [c.hidden_dim] * (c.num_layers - 1) + [c.out_dim], "hidden")
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.monitor = Monitored(c.out_dim)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z1, z2 = self.projector(encode(self.adapter, self.backbone, get_views(batch)[:2])).chunk(2)
        loss = barlow_twins_loss(z1, z2, self.config.lambda_)
        return ObjectiveOutput(loss, None, {"barlow_twins_loss": loss.detach(),
                                            **self.monitor(z1, int(self.global_step))})

    on_step_end = count_step

    extra_state, load_extra_state = monitor_state, load_monitor_state

    encoder = online_encoder


# method name -> (objective class, config class): what builders.two_view chooses from
METHODS: dict[str, tuple[type, type]] = {
    "simclr": (SimCLR, SimCLRConfig), "moco_v2": (MoCoV2, MoCoV2Config), "moco_v3": (MoCoV3, MoCoV3Config),
    "byol": (BYOL, BYOLConfig), "simsiam": (SimSiam, SimSiamConfig), "swav": (SwAV, SwAVConfig),
    "dino": (DINO, DINOConfig), "vicreg": (VICReg, VICRegConfig), "barlow_twins": (BarlowTwins, BarlowTwinsConfig),
}


def build(method: str, adapter: Adapter, backbone: nn.Module, **settings: Any) -> Objective:
    """The objective of ``method`` on ``adapter`` + ``backbone`` with its config fields from ``settings``."""
    if method not in METHODS:
        raise ValueError(f"unknown two-view method {method!r}; choose from {sorted(METHODS)}")
    cls, config_cls = METHODS[method]
    return cls(adapter, backbone, check_config(config_cls, settings))


__all__ = ["METHODS", "build", "SimCLR", "SimCLRConfig", "MoCoV2", "MoCoV2Config", "MoCoV3", "MoCoV3Config", "BYOL",
           "BYOLConfig", "SimSiam", "SimSiamConfig", "SwAV", "SwAVConfig", "DINO", "DINOConfig", "DINOHead",
           "WeightNormLinear", "VICReg", "VICRegConfig", "BarlowTwins", "BarlowTwinsConfig", "mlp", "pooled", "pooling_of", "encode",
           "runs", "cosine_momentum", "ema_parameters", "gate_grad", "ring_write", "get_views"]
