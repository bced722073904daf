"""Losses shared by several objectives: small pure functions, each tested against a plain reference.

A loss that is a function of a batch average (not a sum over examples) takes ``across_processes``: in
training, the average is over the global batch (every process's examples, differentiably), so that N processes
train exactly as one process on the same global batch. Evaluation runs on one process and passes False.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from selfsup.distributed import all_sum


def feature_penalty(features: Tensor, padding_mask: Tensor | None = None, across_processes: bool = False) -> Tensor:
    """fairseq's ``features_pen``: the mean square of (B, F, C) conv features over the real frames (padding_mask
    (B, F) True at padded ones) and channels; over every process's frames when ``across_processes``."""
    real = features if padding_mask is None else features[~padding_mask]
    sq, count = real.float().pow(2).sum(), real.new_tensor(real.numel(), dtype=real.dtype)
    if across_processes:
        sq, count = all_sum(sq), all_sum(count, differentiable=False)
    return sq / count.clamp_min(1)


def regression_loss(pred: Tensor, target: Tensor, beta: float = 0.0, scale: float = 1.0) -> Tensor:
    """(M, D) predictions and targets -> (M,) per-row losses: L2 (``beta`` 0) or smooth L1 with ``beta``, summed
    over D, times ``scale`` (data2vec, eq. 2), in float32."""
    if beta == 0:
        loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    else:
        loss = F.smooth_l1_loss(pred.float(), target.float(), reduction="none", beta=beta)
    return loss.sum(dim=-1) * scale


__all__ = ["feature_penalty", "regression_loss"]
