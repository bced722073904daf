"""Exponential moving averages of a student's weights: the teachers of data2vec, BYOL, MoCo, DINO.

Pure functions; the objective that owns the teacher decides when to call them (``on_step_end``), so a schedule
that depends only on the step number resumes exactly.
"""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode whose parameters do not require gradients (an EMA teacher).

    The optimizer of the engine skips parameters with ``requires_grad=False`` and DDP neither reduces nor
    expects gradients for them, while checkpoints (``state_dict``) still keep them.
    """
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def update_momentum(teacher: nn.Module, student: nn.Module, m: float, copy_prefixes: Iterable[str] = (),
                    copy_buffers: bool = True) -> None:
    """``teacher <- m * teacher + (1 - m) * student``, parameter by parameter, in place: the one EMA update of
    every teacher (data2vec, MoCo, BYOL, DINO).

    Computed as fairseq's ``EMAModule`` does (``t.mul_(m).add_(s, alpha=1 - m)``) with one fused kernel per
    step. Copied instead of averaged: parameters whose names start with one of ``copy_prefixes`` (fairseq's
    ``skip_keys``), parameters the student does not train (fixed sin-cos positions, a frozen patch projection:
    they stay exact) and, with ``copy_buffers``, the buffers (data2vec); ``copy_buffers=False`` leaves the
    teacher its own buffers (the two-view teachers keep their own batch-norm statistics, as MoCo, BYOL and DINO
    do). teacher and student must have the same parameter names and shapes.
    """
    prefixes = tuple(copy_prefixes)
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters")
    ema_t, ema_s = [], []
    for name, t in t_params.items():
        s = s_params[name].detach().to(t.dtype)
        if name.startswith(prefixes) or not s_params[name].requires_grad:
            t.copy_(s)
        else:
            ema_t.append(t)
            ema_s.append(s)
    if ema_t:
        torch._foreach_mul_(ema_t, m)
        torch._foreach_add_(ema_t, ema_s, alpha=1.0 - m)
    if copy_buffers:
        for t, s in zip(teacher.buffers(), student.buffers()):
            t.copy_(s)


def linear_momentum(step: int, start: float, end: float, anneal_steps: int) -> float:
    """``start`` at step 0 rising linearly to ``end`` at ``anneal_steps``, then constant (data2vec, sec. 3.3;
    fairseq ``get_annealed_rate``)."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / anneal_steps)


def cosine_momentum(step: int, max_steps: int, base: float, end: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): ``end - (end - base) * (cos(pi * step / max_steps) + 1) / 2``,
    ``base`` at step 0 rising to ``end`` at ``max_steps`` (MoCo v3, DINO use the same); ``base`` when
    ``max_steps <= 0``."""
    if max_steps <= 0:
        return float(base)
    k = min(max(step, 0), max_steps)
    return float(end - (end - base) * (math.cos(math.pi * k / max_steps) + 1) / 2)


__all__ = ["frozen_copy", "update_momentum", "linear_momentum", "cosine_momentum"]
