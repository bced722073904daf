"""Span masking and negative sampling over frame sequences (wav2vec 2.0; Baevski et al., 2020, arXiv:2006.11477).

Pure functions on a ``torch.Generator``, shared by wav2vec 2.0, HuBERT and data2vec. They follow the semantics
of ``transformers``' ``_compute_mask_indices`` and ``_sample_negative_indices`` (which draw from numpy's global
RNG); the draws themselves differ, the distributions do not.

Per-example draws (:func:`example_generators`, :func:`span_masks_per_example`, :func:`negatives_per_example`):
when a batch carries ``example_seeds`` (one per clip, from the data set's seed, the epoch and the clip index),
each clip's mask, negatives and Gumbel noise come from its own generator and depend only on its own length.
The same global batch then gets the same draws however it is split across processes and padded, which is what
makes a run on N processes equal one on a single process.
"""
from __future__ import annotations

import torch
from torch import Tensor


def num_spans(lengths: Tensor, seq_len: int, mask_prob: float, mask_length: int, min_masks: int,
              eps: float) -> Tensor:
    """How many spans each sequence gets: ``int(mask_prob * length / mask_length + eps)``, at least
    ``min_masks``, at most what fits in the padded length and in ``length - mask_length + 1`` starts.

    lengths: (B,) long -> (B,) long.
    """
    n = (mask_prob * lengths.double() / mask_length + eps).floor().long().clamp_min(min_masks)
    n = torch.where(n * mask_length > seq_len, torch.full_like(n, seq_len // mask_length), n)
    starts = (lengths - (mask_length - 1)).clamp_min(0)
    return torch.minimum(n, starts)


def compute_span_mask(shape: tuple[int, int], mask_prob: float, mask_length: int, lengths: Tensor | None = None,
                      min_masks: int = 0, generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> Tensor:
    """Random spans of ``mask_length`` frames to mask, as wav2vec 2.0 pre-training does (section 3.1).

    shape: (B, F). lengths: (B,) number of real frames per sequence (padding at the end), or None for all F.
    Each sequence gets ``int(mask_prob * length / mask_length + eps)`` spans (one uniform ``eps`` per call:
    probabilistic rounding), at least ``min_masks``; span starts are drawn uniformly *without* replacement
    among the ``length - mask_length + 1`` valid starts, and spans may overlap, so the masked fraction is
    below ``mask_prob``. Padded frames are never masked. Returns a (B, F) bool tensor, True = masked.
    """
    b, f = shape
    if mask_length < 1:
        raise ValueError("mask_length has to be at least 1")
    if mask_length > f:
        raise ValueError(f"mask_length {mask_length} is longer than the sequence ({f} frames)")
    if device is None:
        device = lengths.device if lengths is not None else "cpu"
    lengths = torch.full((b,), f, dtype=torch.long, device=device) if lengths is None else lengths.long().to(device)
    eps = torch.rand((), generator=generator, device=device).item()
    counts = num_spans(lengths, f, mask_prob, mask_length, min_masks, eps)
    most = int(num_spans(torch.tensor([f]), f, mask_prob, mask_length, min_masks, eps).item())
    if most == 0:
        return torch.zeros(b, f, dtype=torch.bool, device=device)
    # a uniformly random subset of valid starts without replacement: the smallest random keys
    keys = torch.rand(b, f, generator=generator, device=device)
    valid = torch.arange(f, device=device)[None, :] < (lengths - (mask_length - 1))[:, None]
    keys = keys.masked_fill(~valid, 2.0)
    starts = keys.argsort(dim=1)[:, :most]                                        # (B, S)
    used = torch.arange(most, device=device)[None, :] < counts[:, None]             # (B, S)
    spans = starts[:, :, None] + torch.arange(mask_length, device=device)          # (B, S, L)
    spans = spans.clamp_max(f - 1).flatten(1)
    hits = torch.zeros(b, f, dtype=torch.long, device=device)                      # union of the used spans
    hits.scatter_add_(1, spans, used[:, :, None].expand(-1, -1, mask_length).flatten(1).long())
    return hits > 0


def sample_negatives(mask: Tensor, num_negatives: int, generator: torch.Generator | None = None) -> Tensor:
    """Distractor frames for the contrastive task (wav2vec 2.0, eq. 3).

    mask: (B, F) bool, the masked frames. For every masked frame, ``num_negatives`` other masked frames of the
    *same* sequence are drawn uniformly with replacement, never the frame itself. Returns (B, F, K) long indices
    into the batch flattened to (B * F) frames, as ``transformers``' ``sampled_negative_indices``; entries of
    unmasked frames point at their sequence's first frame (``b * F``) and are never used. A sequence with a
    single masked frame has no other frame to draw: its negatives are the frame itself, which the loss then
    ignores (a negative equal to the positive is masked out).
    """
    b, f = mask.shape
    mask = mask.bool()
    count = mask.sum(dim=1, keepdim=True)                                           # (B, 1)
    rank = mask.long().cumsum(dim=1) - 1                                           # (B, F) rank among masked
    order = (~mask).long().argsort(dim=1, stable=True)                             # masked frames first
    u = torch.rand(b, f, num_negatives, generator=generator, device=mask.device)
    high = (count - 1).clamp_min(1)[:, :, None]                                    # draw from count - 1 others
    drawn = (u * high).long().clamp_max(high - 1)
    drawn = drawn + (drawn >= rank[:, :, None]).long()                             # skip the frame itself
    drawn = torch.where((count > 1)[:, :, None], drawn, rank[:, :, None].clamp_min(0).expand_as(drawn))
    frames = order.gather(1, drawn.flatten(1)).view(b, f, num_negatives)
    frames = torch.where(mask[:, :, None], frames, torch.zeros_like(frames))
    return frames + (torch.arange(b, device=mask.device) * f)[:, None, None]


def frame_lengths(padding_mask: Tensor | None, shape: tuple[int, int]) -> Tensor:
    """(B,) real frames per row on the CPU: all ``shape[1]`` without a padding mask."""
    if padding_mask is None:
        return torch.full((shape[0],), shape[1], dtype=torch.long)
    return (~padding_mask).sum(dim=1).cpu()


def draw_span_mask(shape: tuple[int, int], mask_prob: float, mask_length: int, min_masks: int,
                   padding_mask: Tensor | None, device: torch.device | str, generator: torch.Generator | None = None,
                   seeds: Tensor | None = None) -> tuple[Tensor, list[torch.Generator] | None]:
    """The span mask an objective draws for a batch: per example from ``seeds`` (B,) when given (returning the
    generators for the example's further draws), else for the whole batch from ``generator``."""
    if seeds is None:
        lengths = None if padding_mask is None else (~padding_mask).sum(dim=1)
        return compute_span_mask(shape, mask_prob, mask_length, lengths, min_masks, generator, device), None
    generators = example_generators(seeds)
    return span_masks_per_example(generators, frame_lengths(padding_mask, shape), shape[1], mask_prob, mask_length,
                                  min_masks, device), generators


def example_generators(seeds: Tensor) -> list[torch.Generator]:
    """One CPU generator per example, seeded with ``seeds`` (B,)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds.tolist()]


def span_masks_per_example(generators: list[torch.Generator], lengths: Tensor, num_frames: int, mask_prob: float,
                           mask_length: int, min_masks: int = 0, device: torch.device | str | None = None) -> Tensor:
    """(B, num_frames) span mask, row i drawn by :func:`compute_span_mask` from ``generators[i]`` over its own
    ``lengths[i]`` real frames (so the row does not depend on how far the batch is padded)."""
    rows = []
    for g, n in zip(generators, lengths.tolist()):
        width = max(int(n), mask_length)
        row = compute_span_mask((1, width), mask_prob, mask_length, torch.tensor([int(n)]), min_masks, g)[0]
        rows.append(torch.cat([row, row.new_zeros(max(0, num_frames - width))])[:num_frames])
    return torch.stack(rows).to(device if device is not None else lengths.device)


def negatives_per_example(generators: list[torch.Generator], mask: Tensor, lengths: Tensor,
                          num_negatives: int) -> Tensor:
    """:func:`sample_negatives` row by row, row i from ``generators[i]`` over its ``lengths[i]`` real frames;
    (B, F, K) indices into the batch flattened to (B * F) frames."""
    b, f = mask.shape
    out = torch.zeros(b, f, num_negatives, dtype=torch.long)
    cpu = mask.cpu()
    for i, (g, n) in enumerate(zip(generators, lengths.tolist())):
        n = max(int(n), 1)
        out[i, :n] = sample_negatives(cpu[i:i + 1, :n], num_negatives, g)[0]
    return (out + (torch.arange(b) * f)[:, None, None]).to(mask.device)


__all__ = ["compute_span_mask", "sample_negatives", "num_spans", "frame_lengths", "draw_span_mask",
           "example_generators", "span_masks_per_example", "negatives_per_example"]
