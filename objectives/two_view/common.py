"""What the two-view methods share: the views, the features, the heads' MLP, the teacher, the queue writes, the
collapse monitor, and the plain functions every method class binds as its methods (no inheritance between them).

**Views.** ``batch["views"]`` is a list of batches, each one the adapter reads (images, graphs, series, ...):
augmentations of the same B examples, the two global views first, then (SwAV, DINO multi-crop) the local ones.
Consecutive views the adapter can join (equal ``batch_signature``: images of one size, any graph batches) go
through the encoder together (DINO's ``MultiCropWrapper``; one forward per resolution), so batch norm sees them
at once, and each head runs once on the concatenated features.

**Features.** One vector per example, ``selfsup.types.features``: the encoder's ``pooling`` over its ``layers``
(the class token on a ViT, the token mean of a ResNet's feature map, a graph's sum / max readout, ...); the
objective's ``encoder()`` pools the same way, so the kNN and the probes see the method's vector.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.distributed import gather_with_grad
from selfsup.monitors import CollapseMonitor, alignment_and_uniformity
from selfsup.objectives.ema import frozen_copy, update_momentum
from selfsup.types import VIEWS, Adapter, Batch, Encoder, features

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU}


def get_views(batch: Batch, need: int = 2) -> list[Batch]:
    """The list of view batches of ``batch``; a clear error when there are fewer than ``need``."""
    views = batch.get(VIEWS)
    if not isinstance(views, (list, tuple)) or len(views) < need:
        got = "no 'views'" if views is None else f"{len(views)} views"
        raise ValueError(f"a two-view batch needs 'views', a list of at least {need} batches; got {got}")
    return list(views)


def default_pooling(adapter: Adapter) -> str:
    """``"first"`` (the class token's output) if the adapter prepends one, else ``"mean"`` over the tokens."""
    return "first" if adapter.num_prefix_tokens > 0 else "mean"


def runs(adapter: Adapter, views: Sequence[Batch]) -> list[list[int]]:
    """Indices of the consecutive views the adapter can join: [[0, 1], [2, 3, 4, 5]] for 2 global + 4 local
    crops."""
    out: list[list[int]] = []
    keys = [adapter.batch_signature(v) for v in views]
    for i, key in enumerate(keys):
        if out and keys[out[-1][-1]] == key:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def encode(adapter: Adapter, backbone: nn.Module, views: Sequence[Batch], pooling: str = "mean",
           layers: str = "last") -> Tensor:
    """(V * B, D) pooled features of all views, in view order; one forward per run of joinable views."""
    parts = []
    for run in runs(adapter, views):
        batch = views[run[0]] if len(run) == 1 else adapter.concat_batches([views[i] for i in run])
        parts.append(features(adapter, backbone, batch, pooling, layers))
    return torch.cat(parts)


def encode_online(self, views: Sequence[Batch]) -> Tensor:
    """The method's online (student) features of ``views``."""
    return encode(self.adapter, self.backbone, views, self.pooling, self.layers)


def encode_teacher(self, views: Sequence[Batch]) -> Tensor:
    """The EMA teacher's features of ``views`` (call under ``no_grad``)."""
    t = self.teacher
    return encode(t["adapter"], t["backbone"], views, self.pooling, self.layers)


def take_encoder(self, encoder: Encoder) -> int:
    """Keep the encoder's parts and readout on the method (``adapter``, ``backbone``, ``pooling``, ``layers``);
    returns the width of its features, what the heads take."""
    self.adapter, self.backbone = encoder.adapter, encoder.backbone
    self.pooling, self.layers = encoder.pooling, encoder.layers
    return encoder.feature_size


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

    def __call__(self, z: Tensor, step: int, other: Tensor | None = None) -> dict[str, float]:
        """The collapse figures of ``z`` (B, D), and with ``other`` (the second view's, same examples) its alignment
        and uniformity (``selfsup.monitors``)."""
        out = self.monitor.update(z.detach(), step) if z.shape[0] >= 2 else {}
        return {**out, **alignment_and_uniformity(z, other)} if other is not None else out

    def state(self) -> dict[str, Any]:
        return {"collapsed_since": self.monitor.collapsed_since, "warned": self.monitor.warned}

    def load(self, state: dict[str, Any]) -> None:
        self.monitor.collapsed_since = state.get("collapsed_since")
        self.monitor.warned = bool(state.get("warned", False))


# -- plain functions the method classes bind as methods --------------------------------------------------------------
def monitor_state(self) -> dict[str, Any]:
    """``extra_state``: the collapse monitor's counters."""
    return {"collapse": self.monitor.state()}


def load_monitor_state(self, state: dict[str, Any]) -> None:
    """``load_extra_state``."""
    self.monitor.load(state.get("collapse", {}))


def online_encoder(self) -> Encoder:
    """``encoder()``: the online (student) adapter + backbone, pooled as the method pools."""
    return Encoder(self.adapter, self.backbone, self.pooling, self.layers)


def count_step(self, step: int) -> None:
    """``on_step_end`` of the methods without a teacher: the step the schedules read at forward time."""
    self.global_step.fill_(step)


def step_with_teacher(self, step: int) -> None:
    """``on_step_end`` of the methods with an EMA teacher: count the step, then move the teacher (its own
    batch-norm statistics stay its own)."""
    self.global_step.fill_(step)
    update_momentum(self.teacher, nn.ModuleDict(self.student()), self.momentum(step), copy_buffers=False)


def copy_student_to_teacher(self) -> None:
    """``reset_teacher()``: the teacher becomes the student (after ``--init_from``)."""
    update_momentum(self.teacher, nn.ModuleDict(self.student()), 0.0, copy_buffers=False)


def predict_and_target(self, views: Sequence[Batch]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(the online predictions of each view, the teacher's projections of each view, without gradient):
    BYOL's and MoCo v3's two branches."""
    online = self.predictor(self.projector(encode_online(self, views))).chunk(len(views))
    with torch.no_grad():
        target = self.teacher["projector"](encode_teacher(self, views)).chunk(len(views))
    return online, target


__all__ = ["get_views", "default_pooling", "runs", "encode", "encode_online", "encode_teacher", "take_encoder", "mlp",
           "make_teacher", "gate_grad", "gather_rows", "ring_write", "check_config", "Monitored", "monitor_state",
           "load_monitor_state", "online_encoder", "count_step", "step_with_teacher", "copy_student_to_teacher",
           "predict_and_target"]
