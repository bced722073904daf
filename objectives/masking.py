"""Maskers, and the span masking and negative sampling under them (wav2vec 2.0; Baevski et al., 2020,
arXiv:2006.11477; BERT, Devlin et al., 2019).

A masked-prediction objective is masker x target x loss, and the masker is chosen per modality:

* :class:`TokenMasker` corrupts token *ids* before the adapter embeds them (text: BERT's 80/10/10, or
  data2vec text's spans of [MASK]); ``corrupts_input`` is True.
* :class:`SpanMasker` marks spans of *embedded* frames, which the objective replaces by a learned embedding
  before the adapter adds positions (audio: wav2vec 2.0, HuBERT, data2vec); ``corrupts_input`` is False.

Both return a (B, N) bool mask of the positions to predict, so an objective that takes either (data2vec) runs
on either modality.

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

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100  # label of a position that is not a target (torch's cross_entropy default)


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


def mask_tokens(ids: Tensor, mask_token_id: int, vocab_size: int, probability: float = 0.15,
                special: Tensor | None = None, word_start: Tensor | None = None,
                generator: torch.Generator | None = None, mask_replace: float = 0.8,
                random_replace: float = 0.1) -> tuple[Tensor, Tensor]:
    """BERT corruption of ``ids`` (B, N).

    Each token (each whole word when ``word_start`` (B, N) bool marks word-initial tokens) is selected with
    ``probability``; ``special`` (B, N) bool tokens never are. Of the selected, ``mask_replace`` become
    ``mask_token_id``, ``random_replace`` a uniformly random id, the rest stay (BERT: 80/10/10). Returns
    (corrupted ids, labels) with labels -100 where not selected.
    """
    r = torch.rand(ids.shape, generator=generator, device=ids.device)
    if word_start is not None:
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        first = torch.where(word_start, pos, torch.zeros_like(pos)).cummax(dim=1).values
        r = r.gather(1, first)
    selected = r < probability
    if special is not None:
        selected &= ~special
    return replace_selected(ids, selected, mask_token_id, vocab_size, generator, mask_replace, random_replace)


def replace_selected(ids: Tensor, selected: Tensor, mask_token_id: int, vocab_size: int,
                     generator: torch.Generator | None = None, mask_replace: float = 0.8,
                     random_replace: float = 0.1) -> tuple[Tensor, Tensor]:
    """(corrupted ids, labels) for the ``selected`` (B, N) positions: ``mask_replace`` of them become the mask
    token, ``random_replace`` a random id, the rest stay; labels are the original ids there, -100 elsewhere."""
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    to_mask = selected & (u < mask_replace)
    to_random = selected & (u >= mask_replace) & (u < mask_replace + random_replace)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    corrupted = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    return torch.where(to_random, random_ids, corrupted), labels


def token_spans(ids: Tensor, probability: float, span_length: int, eligible: Tensor,
                generator: torch.Generator | None = None) -> Tensor:
    """fairseq's ``mask_multiple_length`` selection: per row of n eligible tokens, ``int(p * n / L + u)`` span
    starts drawn without replacement among them, each span covering L tokens (clipped at the row's end, never
    covering an ineligible token). ids: (B, N); eligible: (B, N) bool. Returns (B, N) bool."""
    b, n = ids.shape
    count = eligible.sum(dim=1)
    u = torch.rand(b, generator=generator, device=ids.device)
    num = (probability * count.double() / span_length + u.double()).floor().long()
    keys = torch.rand(b, n, generator=generator, device=ids.device).masked_fill(~eligible, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)
    starts = (rank < num[:, None]).float()
    covered = torch.nn.functional.conv1d(starts[:, None], torch.ones(1, 1, span_length, device=ids.device),
                                         padding=span_length - 1)[:, 0, :n] > 0
    return covered & eligible


@dataclass
class TokenMasker:
    """Masking of token ids before the adapter (text).

    probability: the share of tokens selected; span_length 1 selects tokens (or whole words, given
    ``continuation`` ids) independently (BERT); > 1 selects spans of that many tokens (data2vec text, fairseq
    ``mask_multiple_length``). Of the selected, ``mask_replace`` become [MASK] and ``random_replace`` a random
    id (BERT 0.8 / 0.1; data2vec text 1.0 / 0.0). Special ids (padding, [CLS], [SEP], [MASK]) are never selected.
    """

    mask_token_id: int
    vocab_size: int
    probability: float = 0.15
    span_length: int = 1
    mask_replace: float = 0.8
    random_replace: float = 0.1
    special_ids: tuple[int, ...] = ()
    continuation_ids: tuple[int, ...] | None = None
    corrupts_input: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.probability <= 1:
            raise ValueError(f"mask probability must be in [0, 1], got {self.probability}")
        if self.span_length < 1:
            raise ValueError(f"span_length must be at least 1, got {self.span_length}")
        if not (0 <= self.mask_replace and 0 <= self.random_replace and self.mask_replace + self.random_replace <= 1):
            raise ValueError("mask_replace and random_replace must be >= 0 and sum to at most 1")
        special = torch.zeros(self.vocab_size, dtype=torch.bool)
        special[list({*self.special_ids, self.mask_token_id})] = True
        self._special = special
        self._continuation = None
        if self.continuation_ids is not None:
            self._continuation = torch.zeros(self.vocab_size, dtype=torch.bool)
            self._continuation[list(self.continuation_ids)] = True

    def __call__(self, ids: Tensor, generator: torch.Generator | None = None,
                 seeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids (B, N) -> (corrupted ids, labels): labels hold the original id at the selected positions, -100
        elsewhere (the mask is ``labels != -100``). With per-example ``seeds`` (B,), row i is drawn from its own
        generator, so a row's mask does not depend on the batch it is in (N processes then draw what one does)."""
        if seeds is not None:
            rows = [self.corrupt_rows(ids[i:i + 1].cpu(), g) for i, g in enumerate(example_generators(seeds))]
            return tuple(torch.cat(parts).to(ids.device) for parts in zip(*rows))
        return self.corrupt_rows(ids, generator)

    def corrupt_rows(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The draw of :meth:`__call__` for a whole batch from one generator."""
        special = self._special.to(ids.device)[ids]
        if self.span_length > 1:
            selected = token_spans(ids, self.probability, self.span_length, ~special, generator)
            return replace_selected(ids, selected, self.mask_token_id, self.vocab_size, generator,
                                    self.mask_replace, self.random_replace)
        word_start = None if self._continuation is None else ~self._continuation.to(ids.device)[ids]
        return mask_tokens(ids, self.mask_token_id, self.vocab_size, self.probability, special, word_start,
                           generator, self.mask_replace, self.random_replace)

    def apply(self, ids: Tensor, mask: Tensor) -> Tensor:
        """A fixed (B, N) mask applied: [MASK] at every masked position (tests, evaluation)."""
        return ids.masked_fill(mask.to(ids.device, torch.bool), self.mask_token_id)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("corrupts_input")
        return out


@dataclass
class SpanMasker:
    """Span masking of embedded frames (audio): ``int(mask_prob * length / mask_length + u)`` spans of
    ``mask_length`` frames per example, at least ``min_masks`` (wav2vec 2.0 sec. 3.1; see
    :func:`compute_span_mask`). The objective replaces the masked frames by its learned mask embedding."""

    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    corrupts_input: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")

    def __call__(self, padding_mask: Tensor | None, shape: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None, seeds: Tensor | None = None
                 ) -> tuple[Tensor, list[torch.Generator] | None]:
        """(B, F) mask over the real frames, and with per-example ``seeds`` the example generators (for the
        example's further draws: negatives, Gumbel noise); see :func:`draw_span_mask`."""
        return draw_span_mask(shape, self.mask_prob, self.mask_length, self.min_masks, padding_mask, device,
                              generator, seeds)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("corrupts_input")
        return out


__all__ = ["TokenMasker", "SpanMasker", "mask_tokens", "replace_selected", "token_spans", "IGNORE_INDEX", "compute_span_mask", "sample_negatives", "num_spans", "frame_lengths", "draw_span_mask",
           "example_generators", "span_masks_per_example", "negatives_per_example"]
