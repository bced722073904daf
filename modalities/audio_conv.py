"""The wav2vec 2.0 feature encoder computed as matrix multiplies over time-major frames.

``AudioAdapter.conv_features`` runs its stack of :class:`~selfsup.modalities.audio.ConvLayer` through
:func:`feature_encoder`. The result is the same function as the layers' own ``forward`` (``nn.Conv1d`` in
(B, C, T) layout, which is also how ``transformers`` computes it), to float rounding; it is about 1.7× faster
for forward + backward on a CPU, where oneDNN's 1-D convolution backward and its layout conversions dominate
a wav2vec 2.0 step.

How:

* **Time-major slots.** Activations are kept as one (B·P, C) matrix: each clip owns P rows ("slots") of which
  the first T are its frames and the rest are finite filler. The waveform is zero-padded to a multiple of the
  product of the strides, so that P is divisible by every later stride. A layer with kernel k and stride s then
  reads the matrix as (B·P/s, s·C): row u holds frames s·u … s·u+s-1, and output frame u is
  ``rows[u] @ W[:s] + rows[u+1][:, :(k-s)·C] @ W[s:k]`` (more shifted terms when k > 2s). These are plain GEMMs
  on views; nothing is unfolded. An output frame of a clip only reads that clip's frames, so slots past T never
  reach a real frame; they are dropped at the end.
* **First layer.** One input channel, so the windows (B, P, k) are materialised (k floats a frame) and
  multiplied by the kernel. With ``feat_extract_norm="group"`` the GroupNorm (one group per channel,
  statistics over each clip's T frames) is folded into that multiply: the conv is linear in the windows, so
  its per-channel mean and variance are ``w·mean(u)`` and ``wᵀ·cov(u)·w`` with the k×k window covariance,
  computed in float64. Each clip then gets its own scaled kernel and shift in one batched GEMM, and the
  normalised activations are never materialised twice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def _chunks(k: int, s: int, cin: int) -> list[tuple[int, slice, int]]:
    """(row shift m, rows of the (k·cin, cout) kernel, columns of the input rows) per group of taps."""
    out, m = [], 0
    while m * s < k:
        w = min(s, k - m * s)
        out.append((m, slice(m * s * cin, (m * s + w) * cin), w * cin))
        m += 1
    return out


class _StridedConv(torch.autograd.Function):
    """(R, s·C_in) rows of s frames -> (R, C_out): a stride-s, kernel-k conv over the frames, as GEMMs."""

    @staticmethod
    def forward(ctx, rows: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
        cout, cin, k = weight.shape
        dtype = _autocast_dtype(rows.device.type)
        ctx.dtypes = (rows.dtype, weight.dtype, None if bias is None else bias.dtype)
        with torch.autocast(rows.device.type, enabled=False):
            if dtype is not None:
                rows, weight = rows.to(dtype), weight.to(dtype)
                bias = None if bias is None else bias.to(dtype)
            kernel = weight.permute(2, 1, 0).reshape(k * cin, cout)      # row j·C_in + c: tap j, channel c
            chunks = _chunks(k, stride, cin)
            n = rows.shape[0]
            _, taps, cols = chunks[0]
            out = (rows[:, :cols] @ kernel[taps] if bias is None
                   else torch.addmm(bias, rows[:, :cols], kernel[taps]))
            for m, taps, cols in chunks[1:]:
                out[: n - m].addmm_(rows[m:, :cols], kernel[taps])
        ctx.save_for_backward(rows, kernel)
        ctx.stride, ctx.k, ctx.has_bias = stride, k, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, kernel = ctx.saved_tensors
        kc, cout = kernel.shape
        cin = kc // ctx.k
        chunks = _chunks(ctx.k, ctx.stride, cin)
        n = rows.shape[0]
        grad = grad.to(rows.dtype)
        need_rows, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_rows = grad_weight = grad_bias = None
        if need_rows:
            _, taps, cols = chunks[0]
            if cols == rows.shape[1]:
                grad_rows = grad @ kernel[taps].t()
            else:
                grad_rows = rows.new_zeros(rows.shape)
                grad_rows[:, :cols] = grad @ kernel[taps].t()
            for m, taps, cols in chunks[1:]:
                grad_rows[m:, :cols].addmm_(grad[: n - m], kernel[taps].t())
            grad_rows = grad_rows.to(ctx.dtypes[0])
        if need_weight:
            flat = kernel.new_empty(kernel.shape)
            for m, taps, cols in chunks:
                torch.mm(rows[m:, :cols].t(), grad[: n - m], out=flat[taps])
            grad_weight = flat.reshape(ctx.k, cin, cout).permute(2, 1, 0).contiguous().to(ctx.dtypes[1])
        if need_bias and ctx.has_bias:
            grad_bias = grad.sum(0).to(ctx.dtypes[2])
        return grad_rows, grad_weight, grad_bias, None


def _first_layer(layer: nn.Module, waveforms: Tensor, slots: int, stride: int) -> tuple[Tensor, int]:
    """(B, L) -> ((B·P, C) pre-activation output of the first conv (+ its norm), T frames per clip)."""
    conv, norm = layer.conv, layer.norm
    batch, length = waveforms.shape
    k = conv.kernel_size[0]
    frames = (length - k) // stride + 1
    need = (slots - 1) * stride + k
    x = F.pad(waveforms, (0, need - length)) if need > length else waveforms
    windows = x.unfold(1, k, stride)[:, :slots]                         # (B, P, k), a view
    weight = conv.weight[:, 0].t()                                      # (k, C)
    if isinstance(norm, nn.GroupNorm):
        wide = torch.float32 if waveforms.device.type == "mps" else torch.float64
        u = windows[:, :frames].to(wide)
        mean_u = u.mean(1)                                              # (B, k)
        centred = u - mean_u[:, None]
        cov = centred.transpose(1, 2) @ centred / frames                # (B, k, k)
        w = weight.to(wide)
        mean = mean_u @ w                                               # (B, C), the conv's mean without bias
        var = torch.einsum("kc,bkl,lc->bc", w, cov, w)
        scale = norm.weight.to(wide) * torch.rsqrt(var + norm.eps)      # (B, C)
        shift = norm.bias.to(wide) - mean * scale
        if conv.bias is not None:      # the norm cancels the bias (its gradient is 0), but keep it in the graph
            shift = shift + (conv.bias - conv.bias).to(wide)
        kernels = (w[None] * scale[:, None]).to(waveforms.dtype)       # (B, k, C): one kernel per clip
        out = torch.baddbmm(shift.to(waveforms.dtype)[:, None], windows.contiguous(), kernels)
    else:
        out = F.linear(windows, weight.t(), conv.bias)
        if norm is not None:
            out = norm(out)
    return out.reshape(batch * slots, -1), frames


def feature_encoder(layers: Sequence[nn.Module], waveforms: Tensor) -> Tensor:
    """(B, L) waveforms -> (B, F, C) output of the conv stack ``layers`` (``ConvLayer`` modules)."""
    batch, length = waveforms.shape
    strides = [layer.conv.stride[0] for layer in layers]
    total = math.prod(strides)
    slots = -(-length // total) * total                                 # samples a clip occupies
    slots //= strides[0]
    x, frames = _first_layer(layers[0], waveforms, slots, strides[0])
    x = layers[0].act(x)
    for layer, stride in zip(layers[1:], strides[1:]):
        conv = layer.conv
        if isinstance(layer.norm, nn.GroupNorm):
            raise ValueError("GroupNorm is supported on the first conv layer only (feat_extract_norm='group')")
        k = conv.kernel_size[0]
        x = _StridedConv.apply(x.reshape(x.shape[0] // stride, stride * x.shape[1]), conv.weight, conv.bias, stride)
        slots, frames = slots // stride, (frames - k) // stride + 1
        if layer.norm is not None:
            x = layer.norm(x)
        x = layer.act(x)
    return x.view(batch, slots, -1)[:, :max(frames, 0)]


__all__ = ["feature_encoder"]
