"""The three contracts every part of selfsup is built on.

* An **adapter** (``selfsup.modalities``) turns a raw batch into :class:`Tokens` in two stages:
  ``embed(batch) -> Tokens`` (content embeddings and prediction targets) and
  ``add_positions(x, padding_mask) -> x`` (position information), so that objectives can corrupt or drop
  tokens in between.
* A **backbone** (``selfsup.backbones``) maps ``(B, N, D)`` to ``(B, N, D)`` and knows nothing of modalities:
  ``forward(x, padding_mask=None, output_hidden_states=False) -> BackboneOutput``.
* An **objective** (``selfsup.objectives``) owns adapter, backbone and heads:
  ``forward(batch) -> ObjectiveOutput``; ``on_step_end(step)``; ``encoder() -> Encoder``.

See ``docs/architecture.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

Batch = Mapping[str, Any]


@dataclass
class Tokens:
    """What an adapter hands a backbone.

    x: (B, N, D) content embeddings, no positions yet.
    padding_mask: (B, N) bool, True where padded; None when nothing is padded.
    targets: per-token prediction targets, e.g. ``"ids"`` (B, N) for text.
    """

    x: Tensor
    padding_mask: Tensor | None = None
    targets: dict[str, Tensor] = field(default_factory=dict)


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
    """Base of modality adapters: raw batch -> :class:`Tokens`. Knows nothing of objectives."""

    hidden_size: int

    def embed(self, batch: Batch) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def content_prefixes(self) -> tuple[str, ...]:
        """Names (relative to the adapter) of the parameters of the ``embed`` stage. An EMA teacher that runs
        on the student's content embeddings copies these instead of averaging them (data2vec's
        ``ema_transformer_only``)."""
        return ()

    def position_prefixes(self) -> tuple[str, ...]:
        """Names of the parameters of the ``add_positions`` stage that a teacher averaging only the Transformer
        layers copies too (data2vec's ``ema_layers_only``)."""
        return ()

    def forward(self, batch: Batch) -> Tokens:
        """Both stages at once: content embeddings with positions added."""
        tokens = self.embed(batch)
        tokens.x = self.add_positions(tokens.x, tokens.padding_mask)
        return tokens


POOLINGS = ("mean", "first")


class Encoder(nn.Module):
    """Adapter + backbone: what an objective's ``encoder()`` returns and what evaluation and export use."""

    def __init__(self, adapter: Adapter, backbone: nn.Module, pooling: str = "mean") -> None:
        """pooling: how :meth:`pooled` makes one vector per example, ``"mean"`` over the tokens that are not
        padding, or ``"first"``, the first token's (a class token that the objective trained, as DINO's)."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {list(POOLINGS)}")
        self.adapter = adapter
        self.backbone = backbone
        self.pooling = pooling

    def forward(self, batch: Batch, output_hidden_states: bool = False) -> tuple[BackboneOutput, Tensor | None]:
        """Returns the backbone output and the (B, N) padding mask."""
        tokens = self.adapter(batch)
        return self.backbone(tokens.x, tokens.padding_mask, output_hidden_states), tokens.padding_mask

    @torch.no_grad()
    def pooled(self, batch: Batch) -> Tensor:
        """(B, D) the last hidden state pooled (``self.pooling``: the mean over tokens that are not padding, or
        the first token)."""
        return self.pooled_views(batch, ("last",))["last"]

    @torch.no_grad()
    def pooled_views(self, batch: Batch, views: Sequence[str] = ("last",)) -> dict[str, Tensor]:
        """Pooled features (``self.pooling``) from one forward pass: ``"last"`` (B, D) the last hidden state;
        ``"all_layers"`` (B, (L + 1) * D) the input to the first layer and every layer's output, concatenated."""
        out, padding_mask = self(batch, output_hidden_states="all_layers" in views)
        pool = (lambda h: h[:, 0]) if self.pooling == "first" else (lambda h: masked_mean(h, padding_mask))
        result = {}
        if "last" in views:
            result["last"] = pool(out.last_hidden_state)
        if "all_layers" in views:
            states = out.hidden_states or (out.last_hidden_state,)
            result["all_layers"] = torch.cat([pool(h) for h in states], dim=-1)
        return result


def masked_mean(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean of x (B, N, D) over N, ignoring positions where padding_mask (B, N) is True."""
    if padding_mask is None:
        return x.mean(dim=1)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)


class Objective(nn.Module):
    """Base of objectives. Subclasses implement ``forward`` and ``encoder``; no other inheritance.

    An objective is *given* its adapter(s) and backbone (a family's builder composes them) and owns its heads.
    Tensors it must keep across a resume (EMA teachers, queues, temperatures) are parameters or buffers, which
    checkpoints hold; anything else goes through :meth:`extra_state` / :meth:`load_extra_state`.
    """

    def forward(self, batch: Batch) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def on_step_end(self, step: int) -> None:
        """Called by the engine after every optimizer step (EMA teachers, temperatures, queues)."""

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state that is not a tensor, saved in every checkpoint's ``trainer_state.json``."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned (on resume)."""

    def encoder(self) -> Encoder:  # pragma: no cover - interface
        raise NotImplementedError
