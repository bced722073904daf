"""Dropout that is cheap on a CPU, and attention with it.

``torch.nn.Dropout`` on a CPU draws one Bernoulli sample per element, and that draw, not the multiply, is its
cost: about 12 ms forward for 2 M floats on two cores of a Xeon, where a multiply takes 0.5 ms. Here one 64-bit
draw of the generator makes four 16-bit numbers, and an element is kept when its number is at or above the
threshold of ``p``: the draws fall to a quarter and dropout forward + backward is 2.0-2.3x faster
(``tests/test_dropout.py`` checks the statistics; ``benchmarks/dropout_speed.py`` and docs/benchmarks.md the
speed). The drop probability is ``p`` rounded to a multiple of 1/65,536 (0.1 -> 0.1000061); kept values are scaled by the inverse of the probability
actually used, so the output's expectation is the input, as with ``nn.Dropout``. Randomness comes from torch's
default generator (or the one given), so ``torch.manual_seed`` makes a run repeat.

Off a CPU (CUDA), ``torch``'s fused kernels are faster and used instead. ``torch``'s own dropout everywhere, which
draws what ``transformers`` draws under the same seed (same-seed parity of a training step, as
``tests/test_wav2vec2.py`` checks): ``with torch_dropout():`` or ``SELFSUP_DROPOUT=torch`` in the environment.

:func:`attention_with_dropout` is SDPA's math kernel (scores, mask, softmax in fp32, dropout, values) with this
dropout; SDPA on a CPU samples its attention dropout one element at a time too.
"""
from __future__ import annotations

import contextlib
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 1 << 16   # one 16-bit number per element
_FAST = {"on": os.environ.get("SELFSUP_DROPOUT", "fast").strip().lower() != "torch"}


def fast_dropout() -> bool:
    """Whether :func:`dropout` and :func:`attention_with_dropout`'s callers take the cheap CPU mask."""
    return _FAST["on"]


@contextlib.contextmanager
def torch_dropout():
    """Within: ``torch``'s dropout and SDPA's attention dropout (the draws of ``transformers`` under a seed)."""
    before = _FAST["on"]
    _FAST["on"] = False
    try:
        yield
    finally:
        _FAST["on"] = before


def keep_mask(shape: tuple[int, ...] | torch.Size, p: float, device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, float]:
    """(bool mask of ``shape``, True = kept, each with probability ``1 - p'``; the scale ``1 / (1 - p')``), where
    ``p'`` is ``p`` rounded to a multiple of 1/65,536."""
    dropped = round(p * LEVELS)
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)   # every bit uniform
    numbers = words.view(torch.int16)[:n].view(shape)      # uniform over [-32768, 32767]
    return numbers >= dropped - LEVELS // 2, LEVELS / (LEVELS - dropped)


class _MaskedScale(torch.autograd.Function):
    """y = x · keep · scale; the gradient is the same product of the incoming one (only the mask is saved)."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: Tensor, p: float, training: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheap mask on a CPU (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if x.device.type != "cpu" or not _FAST["on"] or not 0 < round(p * LEVELS) < LEVELS:
        return F.dropout(x, p, True)
    keep, scale = keep_mask(x.shape, p, x.device, generator)
    return _MaskedScale.apply(x, keep, scale)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same place in a model, no parameters) running :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool,
                           p: float) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, p, is_causal)`` for (B, H, N, d) inputs and a bool
    ``attn_mask`` (True = may attend), computed as SDPA's math kernel does (softmax in fp32) with :func:`dropout`
    on the probabilities. A query that may attend to no key gets zeros, as SDPA's math kernel gives.

    Without a mask, or with only the causal one, the scale and the mask are one ``baddbmm`` (an additive
    (N, N) bias) and the dropout's scale multiplies the (B, H, N, d) output instead of the (B, H, N, N)
    probabilities."""
    b, h, n, d = q.shape
    m = k.shape[-2]
    scale = 1.0 / math.sqrt(d)
    q3, k3, v3 = q.reshape(b * h, n, d), k.reshape(b * h, m, d), v.reshape(b * h, m, d)
    if attn_mask is None:
        if is_causal:   # aligned at the top left, as SDPA's is_causal: every query keeps its first key
            bias = torch.ones(n, m, dtype=torch.bool, device=q.device).tril().logical_not_()
            bias = torch.zeros(1, n, m, dtype=q.dtype, device=q.device).masked_fill_(bias, float("-inf"))
            scores = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)
        else:
            scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    else:
        if is_causal:
            attn_mask = attn_mask & torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        scores = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale).view(b, h, n, m)
        probs = torch.softmax(scores.masked_fill_(~attn_mask, float("-inf")), dim=-1, dtype=torch.float32)
        # a query with no key left: its softmax is NaN, SDPA's math kernel gives 0
        probs = probs.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0).view(b * h, n, m)
    if p > 0.0 and not 0 < round(p * LEVELS) < LEVELS:   # all kept or all dropped after rounding: torch's
        y = torch.bmm(F.dropout(probs, p, True).to(v.dtype), v3)
    elif p > 0.0:
        keep, keep_scale = keep_mask(probs.shape, p, q.device)
        y = torch.bmm((probs * keep).to(v.dtype), v3) * keep_scale
    else:
        y = torch.bmm(probs.to(v.dtype), v3)
    return y.view(b, h, n, d)


__all__ = ["Dropout", "dropout", "keep_mask", "attention_with_dropout", "fast_dropout", "torch_dropout"]
