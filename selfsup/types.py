"""The three contracts every part of selfsup is built on.

* An **adapter** (``selfsup.modalities``) turns a raw batch into :class:`Tokens` in stages, so that objectives
  can corrupt, replace or drop tokens in between: ``embed(batch) -> Tokens`` (content embeddings, prediction
  targets and any structure the backbone needs), ``add_positions(x, padding_mask, structure) -> x`` (position
  information: learned, sin-cos, convolutional, a graph's structural encoding, or none), ``add_prefix(x) -> x``
  (tokens the adapter prepends, a class token). It also answers the modality-specific questions an objective
  may ask, through methods every adapter has (:class:`Adapter`): the discrete ids of its input, the size of a
  target, a target turned back into the input's space (a picture), fixed positions for a decoder, how batches of
  views join. An objective never names a batch key.
* A **backbone** (``selfsup.backbones``) maps ``(B, N, D)`` to ``(B, N, D)`` and knows nothing of modalities:
  ``forward(x, padding_mask=None, output_hidden_states=False, *, structure=None) -> BackboneOutput``; a backbone
  that needs more than the tokens (a GNN's ``edge_index``) reads it from ``structure``, the others ignore it.
* An **objective** (``selfsup.objectives``) is given adapter(s) and backbone(s) and owns its heads:
  ``forward(batch) -> ObjectiveOutput``; ``on_step_end(step)``; ``encoder() -> Encoder``.

See ``docs/architecture.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import torch
from torch import Tensor, nn

Batch = Mapping[str, Any]

# Batch keys that are the objectives' own, not a modality's: any objective may read them, whatever the adapter.
EXAMPLE_SEEDS = "example_seeds"   # (B,) int64 per-example seeds (selfsup.data.example_seed): masks, views, noise
FIXED_MASK = "mask_time_indices"  # (B, N) bool: a fixed mask of the tokens to predict (tests, evaluation)
NOISE = "noise"                   # (B, N) float: MAE's masking noise (transformers' ``forward(noise=...)``)
LABELS = "labels"                 # (B, N) long: fixed targets of a corrupted input, -100 = not a target
CLUSTER_LABELS = "cluster_labels"  # (B, N) long: HuBERT's k-means targets per token
NEGATIVES = "sampled_negative_indices"  # (B, N, K) long: wav2vec 2.0's fixed negatives
VIEWS = "views"                   # a list of batches, augmentations of the same examples (two-view methods)
PRETEXT_LABELS = "pretext_labels"  # (B,) long: which transformation the data side applied (a jigsaw permutation)
PRETEXT_TARGETS = "pretext_targets"  # (B, ...) what the data side hid from the views (colours, a masked region)
EXAMPLE_INDEX = "example_index"    # (B,) long: each example's index in the training set (memory banks, clusters)
OBJECTIVE_KEYS = (EXAMPLE_SEEDS, FIXED_MASK, NOISE, LABELS, CLUSTER_LABELS, NEGATIVES, VIEWS, PRETEXT_LABELS,
                  PRETEXT_TARGETS, EXAMPLE_INDEX)


@dataclass
class Tokens:
    """What an adapter hands a backbone.

    x: (B, N, D) content embeddings, no positions yet.
    padding_mask: (B, N) bool, True where padded; None when nothing is padded.
    targets: per-token prediction targets, e.g. ``"ids"`` (B, N) for text, ``"pixels"`` (B, N, P·P·C) for image
        patches, ``"features"`` (B, N, F) for audio frames or graph nodes.
    structure: what a backbone may use beyond the tokens, e.g. a graph's ``"edge_index"`` (2, E) over the real
        (not padded) tokens in row-major order, or a graph's structural encoding; passed through untouched by
        objectives, so a GNN and a Transformer are swappable under one objective.
    """

    x: Tensor
    padding_mask: Tensor | None = None
    targets: dict[str, Tensor] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackboneOutput:
    """last_hidden_state: (B, N, D); hidden_states: input + every layer's output when asked for."""

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class ObjectiveOutput:
    """What an objective's ``forward`` returns.

    loss: a scalar. When ``num_targets`` is given, ``loss`` is the **sum** of the per-target losses and the
        engine divides by the number of targets summed over every micro-batch and every process, so the
        gradient is that of the global mean. When ``num_targets`` is None, ``loss`` is already a mean.
    num_targets: how many targets ``loss`` sums over (int or 0-dim tensor), or None.
    metrics: detached scalars to log (means over this micro-batch).
    """

    loss: Tensor
    num_targets: Tensor | int | None = None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)


class Adapter(nn.Module):
    """Base of modality adapters: raw batch -> :class:`Tokens`. Knows nothing of objectives.

    Subclasses implement ``embed`` and ``add_positions`` and name the batch keys they read (``batch_keys``);
    the other methods have defaults for adapters that do not offer them, which raise a clear error or do the
    plain thing (no prefix, targets already in the input's space, batches of tensors joined along dim 0).
    """

    hidden_size: int
    batch_keys: tuple[str, ...] = ()   # the keys of a batch this adapter reads (its modality's names)

    # -- the stages -------------------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None,
                      structure: Mapping[str, Any] | None = None) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens :meth:`add_prefix` prepends (1 for a class token)."""
        return 0

    def add_prefix(self, x: Tensor) -> Tensor:
        """Prepend the adapter's own tokens (a class token) to (B, N, D) tokens; none by default."""
        return x

    def forward(self, batch: Batch) -> Tokens:
        """Every stage: content embeddings, positions, prefix (the padding mask grows with the prefix)."""
        tokens = self.embed(batch)
        tokens.x = self.add_prefix(self.add_positions(tokens.x, tokens.padding_mask, tokens.structure))
        tokens.padding_mask = prefix_padding(tokens.padding_mask, self.num_prefix_tokens)
        return tokens

    # -- parameters by stage (EMA teachers) -------------------------------------------------------------------
    def content_prefixes(self) -> tuple[str, ...]:
        """Names (relative to the adapter) of the parameters of the ``embed`` stage. An EMA teacher that runs
        on the student's content embeddings copies these instead of averaging them (data2vec's
        ``ema_transformer_only``)."""
        return ()

    def position_prefixes(self) -> tuple[str, ...]:
        """Names of the parameters of the ``add_positions`` stage that a teacher averaging only the Transformer
        layers copies too (data2vec's ``ema_layers_only``)."""
        return ()

    # -- what objectives may ask ------------------------------------------------------------------------------
    def input_ids(self, batch: Batch) -> Tensor:
        """(B, N) long: the discrete ids the input consists of (text tokens), for objectives that corrupt or
        predict them (BERT, GPT, data2vec text, CLIP's end-of-text pooling)."""
        raise TypeError(f"{type(self).__name__} reads no discrete ids; this objective needs an adapter that does "
                        f"(e.g. the text adapter)")

    def with_input_ids(self, batch: Batch, ids: Tensor) -> dict[str, Any]:
        """A copy of ``batch`` whose ids are ``ids`` (B, N'), e.g. corrupted ones; ``batch`` may hold only what
        the adapter reads besides the ids (a padding mask is cut or kept to N')."""
        raise TypeError(f"{type(self).__name__} reads no discrete ids")

    def class_embeddings(self, name: str) -> Tensor:
        """(C, D) the input embedding of the C classes of the discrete target ``name`` (text: the word
        embeddings of ``"ids"``), for heads tied to the input (BERT, GPT-2)."""
        raise TypeError(f"{type(self).__name__} embeds no discrete target {name!r}")

    def batch_size(self, batch: Batch) -> int:
        """The number of examples in ``batch`` (default: the length of the first tensor the adapter reads)."""
        for key in self.batch_keys:
            value = batch.get(key)
            if isinstance(value, Tensor):
                return len(value)
        raise ValueError(f"{type(self).__name__}: none of its keys {list(self.batch_keys)} is in the batch")

    def row_seeds(self, batch: Batch) -> Tensor | None:
        """(R,) the seed of every row of the tokens ``embed`` makes, for per-example draws (masks): the examples'
        ``example_seeds`` (one row each) by default; an adapter that makes several rows per example (a series'
        channels) derives one seed per row from its example's. None when the batch carries no seeds."""
        return batch.get(EXAMPLE_SEEDS)

    def example_features(self, features: Tensor) -> Tensor:
        """(R, F) one vector per row of tokens -> (B, F') one per example: the rows as they are by default; an
        adapter with several rows per example joins them (a series: its channels' vectors, concatenated)."""
        return features

    def example_feature_size(self, width: int) -> int:
        """The width :meth:`example_features` gives for rows of ``width``."""
        return width

    def mask_embedding(self) -> Tensor:
        """(D,) the content embedding of an input whose values are hidden (a series patch of zeros: the patch
        map's bias), for objectives that mask the input itself rather than learn a mask token (PatchTST)."""
        raise TypeError(f"{type(self).__name__} defines no embedding of a hidden input; use a learned mask token")

    def target_size(self, name: str) -> int:
        """The per-token size of ``targets[name]``: a vector's width, or the number of classes of ids."""
        raise KeyError(f"{type(self).__name__} provides no target {name!r}")

    def target_classes(self, name: str) -> tuple[int, ...] | None:
        """Per token position, the number of classes of ``targets[name]`` there when it is a class id (stored as
        a number), 0 where it is a number: a target that mixes both (a table's columns). None (the default):
        every position's target is alike, of width :meth:`target_size`."""
        return None

    def target_to_input(self, name: str, values: Tensor) -> Tensor:
        """Per-token target values (B, N, F) back in the space of the input (MAE: patches -> an image), for
        pictures of a reconstruction. Default: as they are."""
        return values

    def decoder_positions(self, width: int) -> Tensor | None:
        """(num_prefix_tokens + N, width) fixed positions for a decoder of another width (MAE's 2-D sin-cos), or
        None when the tokens have no fixed order to encode (a set, a graph)."""
        return None

    def batch_signature(self, batch: Batch) -> Hashable:
        """Batches of equal signature can be joined by :meth:`concat_batches` (views of the same size)."""
        return tuple((k, tuple(v.shape[1:])) for k, v in sorted(batch.items()) if isinstance(v, Tensor))

    def concat_batches(self, batches: Sequence[Batch]) -> dict[str, Any]:
        """One batch holding the examples of ``batches`` in order (tensors joined along dim 0)."""
        first = batches[0]
        return {k: torch.cat([b[k] for b in batches]) if isinstance(v, Tensor) else v for k, v in first.items()}


def prefix_padding(padding_mask: Tensor | None, prefix: int) -> Tensor | None:
    """A (B, N) padding mask grown by ``prefix`` real positions in front (a class token), or None."""
    if padding_mask is None or prefix == 0:
        return padding_mask
    return torch.cat([padding_mask.new_zeros(len(padding_mask), prefix), padding_mask], dim=1)


POOLINGS = ("mean", "first", "sum", "max")
LAYERS = ("last", "all")


def pool(h: Tensor, padding_mask: Tensor | None, how: str = "mean") -> Tensor:
    """(B, N, D) -> (B, D): ``mean`` / ``sum`` / ``max`` over the tokens that are not padding, or the ``first``
    token's (a class token)."""
    if how == "first":
        return h[:, 0]
    if how == "mean":
        return masked_mean(h, padding_mask)
    if how == "sum":
        return h.sum(dim=1) if padding_mask is None else h.masked_fill(padding_mask[:, :, None], 0.0).sum(dim=1)
    if how == "max":
        if padding_mask is None:
            return h.amax(dim=1)
        out = h.masked_fill(padding_mask[:, :, None], float("-inf")).amax(dim=1)
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))   # an all-padding row gives 0
    raise ValueError(f"unknown pooling {how!r}; choose from {list(POOLINGS)}")


class Encoder(nn.Module):
    """Adapter + backbone: what an objective's ``encoder()`` returns and what evaluation and export use."""

    def __init__(self, adapter: Adapter, backbone: nn.Module, pooling: str = "mean", layers: str = "last") -> None:
        """pooling: how one vector per example is made (:func:`pool`): ``"mean"`` over the tokens that are not
        padding, ``"first"`` (a class token the objective trained, as DINO's), ``"sum"`` or ``"max"`` (graph
        readouts); layers: pool the ``"last"`` hidden state, or ``"all"`` layers' outputs, concatenated (the
        readout of InfoGraph / GraphCL)."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
        if layers not in LAYERS:
            raise ValueError(f"unknown layers {layers!r}; choose from {list(LAYERS)}")
        self.adapter = adapter
        self.backbone = backbone
        self.pooling = pooling
        self.layers = layers

    def forward(self, batch: Batch, output_hidden_states: bool = False) -> tuple[BackboneOutput, Tensor | None]:
        """Returns the backbone output and the (B, N) padding mask."""
        tokens = self.adapter(batch)
        out = self.backbone(tokens.x, tokens.padding_mask, output_hidden_states, structure=tokens.structure)
        return out, tokens.padding_mask

    def features(self, batch: Batch) -> Tensor:
        """(B, D) one vector per example, with gradient (``pooling`` over ``layers``): what two-view objectives
        train and probes score."""
        return features(self.adapter, self.backbone, batch, self.pooling, self.layers)

    @property
    def feature_size(self) -> int:
        """The width of :meth:`features`: the backbone's, times its layers when ``layers == "all"``."""
        return self.adapter.example_feature_size(feature_size(self.backbone, self.layers))

    @torch.no_grad()
    def pooled(self, batch: Batch) -> Tensor:
        """(B, D) :meth:`features` without gradient."""
        return self.features(batch)

    @torch.no_grad()
    def pooled_views(self, batch: Batch, views: Sequence[str] = ("last",)) -> dict[str, Tensor]:
        """Pooled features (``self.pooling``) from one forward pass: ``"last"`` (B, D) what :meth:`features`
        gives; ``"all_layers"`` (B, (L + 1) * D) the input to the first layer and every layer's output, pooled
        and concatenated."""
        need_all = "all_layers" in views or self.layers == "all"
        out, padding_mask = self(batch, output_hidden_states=need_all)
        states = out.hidden_states or (out.last_hidden_state,)
        result = {}
        if "last" in views:
            result["last"] = (torch.cat([pool(h, padding_mask, self.pooling) for h in states[1:]], dim=-1)
                              if self.layers == "all" else pool(out.last_hidden_state, padding_mask, self.pooling))
        if "all_layers" in views:
            result["all_layers"] = torch.cat([pool(h, padding_mask, self.pooling) for h in states], dim=-1)
        return {k: self.adapter.example_features(v) for k, v in result.items()}


def features(adapter: Adapter, backbone: nn.Module, batch: Batch, pooling: str = "mean",
             layers: str = "last") -> Tensor:
    """(B, D) one vector per example of ``batch`` through ``adapter`` and ``backbone``, with gradient: the
    ``pooling`` (:func:`pool`) of the last hidden state, or of every layer's output concatenated
    (``layers="all"``)."""
    tokens = adapter(batch)
    out = backbone(tokens.x, tokens.padding_mask, layers == "all", structure=tokens.structure)
    if layers == "all":
        rows = torch.cat([pool(h, tokens.padding_mask, pooling) for h in (out.hidden_states or ())[1:]], dim=-1)
    else:
        rows = pool(out.last_hidden_state, tokens.padding_mask, pooling)
    return adapter.example_features(rows)


def feature_size(backbone: nn.Module, layers: str = "last") -> int:
    """The width of :func:`features` on ``backbone``."""
    width = int(backbone.hidden_size)
    return width * int(backbone.config.num_layers) if layers == "all" else width


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean of x (B, N, D) over N, ignoring positions where padding_mask (B, N) is True."""
    if padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


class Objective(nn.Module):
    """Base of objectives. Subclasses implement ``forward`` and ``encoder``; no other inheritance.

    An objective is *given* its adapter(s) and backbone (a family's builder composes them) and owns its heads.
    It reads the modality's data only through its adapter (never a batch key of a modality; the keys of
    :data:`OBJECTIVE_KEYS` are its own). Tensors it must keep across a resume (EMA teachers, queues,
    temperatures) are parameters or buffers, which checkpoints hold; anything else goes through
    :meth:`extra_state` / :meth:`load_extra_state`.
    """

    def forward(self, batch: Batch) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def on_step_end(self, step: int) -> None:
        """Called by the engine after every optimizer step (EMA teachers, temperatures, queues)."""

    def on_epoch_start(self, epoch: int, data: Any) -> None:
        """Called by the engine on every process when epoch ``epoch`` (0, 1, ...) begins, before its first batch;
        not when a run resumes in the middle of an epoch (what the call computed is in the checkpoint: keep it in
        buffers). ``data``: what the recipe gave the trainer for it (``Trainer(..., epoch_data=...)``), None when it
        gave nothing. The image recipes give the whole training set without augmentation: a re-iterable of this
        process's share of it (the shares of all processes hold every example once), each item a batch the
        adapter reads with its examples' ``EXAMPLE_INDEX``, on the CPU (the objective moves it). DeepCluster
        clusters the features of every example there; nothing by default."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state that is not a tensor, saved in every checkpoint's ``trainer_state.json``."""
        return {}

    def learning_rate_scales(self) -> dict[str, float]:
        """Multiples of the run's learning rate by parameter-name prefix (``{"discriminator.": 0.1}``: a GAN's
        discriminator at a tenth of the rate); the engine gives those parameters optimizer groups of their own.
        None by default: one rate for every parameter."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (on resume)."""

    def encoder(self) -> Encoder:  # pragma: no cover - interface
        raise NotImplementedError
