"""The series adapter: a batch of series (B, L, C) -> one row of patch tokens per channel (B·C, N, D), PatchTST's
way (Nie et al., ICLR 2023; ``transformers``' ``PatchTSTModel``).

Stages (``embed``), in ``PatchTSTModel``'s order:

1. per-instance scaling (``scaling="std"``, RevIN without its affine map; ``PatchTSTStdScaler``): each series'
   channel minus its mean over the observed steps, over ``sqrt(variance + minimum_scale)``; ``loc`` / ``scale``
   (B, 1, C) go into ``structure`` (and :meth:`SeriesAdapter.unscale` inverts it);
2. patching: the last ``patch_length + stride (N - 1)`` steps cut into N patches of ``patch_length`` every
   ``stride`` steps (``PatchTSTPatchify``: the first steps that do not fill a patch are dropped);
3. channel independence: every channel is its own row of N tokens (row ``b * C + c``), so attention runs over
   one channel's patches, as PatchTST; :meth:`row_seeds` gives each row its own seed and
   :meth:`example_features` joins a series' C rows back into one vector;
4. a linear map of each patch to D (shared by the channels).

Positions (``add_positions``): PatchTST's sin-cos table, centred and scaled to std 0.1 (fixed), or a learned
table (``positions="learned"``). Targets: ``"patches"`` (B·C, N, P), the scaled values of every patch -- what
PatchTST's pretraining reconstructs. ``mask_embedding`` is the embedding of a patch of zeros (the map's bias):
PatchTST masks a patch by zeroing its values.

Variable lengths: a batch may be padded at the *start* (``past_observed_mask`` False there, as
:func:`selfsup.modalities.timeseries.data.collate_series` does); a patch with no observed step is a padding token.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from selfsup.types import EXAMPLE_SEEDS, Adapter, Batch, Tokens

PAST_VALUES = "past_values"            # (B, L, C) float: the series, as transformers' PatchTST names it
OBSERVED = "past_observed_mask"        # (B, L, C) bool / float: True where a value was observed
SCALINGS = ("std", "none")
POSITIONS = ("sincos", "learned")
ROW_STRIDE = 1 << 16                   # row seeds: example seed * ROW_STRIDE + channel (channels < 65,536)


@dataclass
class SeriesConfig:
    """num_channels: C; context_length: the longest series (the position table's reach); patch_length, stride:
    P and the step between patches; scaling: ``"std"`` (per-instance standardisation) or ``"none"``;
    minimum_scale: added to the variance; positions: ``"sincos"`` (PatchTST's fixed table) or ``"learned"``;
    positional_dropout: on the tokens after the positions."""

    num_channels: int = 1
    context_length: int = 512
    patch_length: int = 12
    stride: int = 12
    scaling: str = "std"
    minimum_scale: float = 1e-5
    positions: str = "sincos"
    positional_dropout: float = 0.0

    def __post_init__(self) -> None:
        checks = ((self.scaling in SCALINGS, f"scaling {self.scaling!r}; choose from {list(SCALINGS)}"),
                  (self.positions in POSITIONS, f"positions {self.positions!r}; choose from {list(POSITIONS)}"),
                  (self.num_channels >= 1, f"num_channels {self.num_channels}; at least 1"),
                  (1 <= self.patch_length and 1 <= self.stride, "patch_length and stride must be >= 1"),
                  (self.context_length >= self.patch_length,
                   f"context_length {self.context_length} is shorter than one patch ({self.patch_length})"))
        for ok, problem in checks:
            if not ok:
                raise ValueError(f"SeriesConfig: {problem}")

    @property
    def num_patches(self) -> int:
        return num_patches(self.context_length, self.patch_length, self.stride)

    def to_dict(self) -> dict:
        return asdict(self)


def num_patches(length: int, patch_length: int, stride: int) -> int:
    """N patches of a series of ``length`` steps (``PatchTSTPatchify``'s count)."""
    return (max(length, patch_length) - patch_length) // stride + 1


def patchify(values: Tensor, patch_length: int, stride: int) -> Tensor:
    """(B, L, C) -> (B, C, N, P): the last ``P + stride (N - 1)`` steps in patches (``PatchTSTPatchify``)."""
    n = num_patches(values.shape[1], patch_length, stride)
    start = values.shape[1] - (patch_length + stride * (n - 1))
    return values[:, start:].unfold(1, patch_length, stride).transpose(1, 2).contiguous()


def std_scale(values: Tensor, observed: Tensor, minimum_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``PatchTSTStdScaler``: ((values - loc) / scale, loc (B, 1, C), scale (B, 1, C)) over the observed steps."""
    weight = observed.to(values.dtype)
    count = weight.sum(1, keepdim=True).clamp_min(1.0)
    loc = (values * weight).sum(1, keepdim=True) / count
    variance = (((values - loc) * weight) ** 2).sum(1, keepdim=True) / count
    scale = torch.sqrt(variance + minimum_scale)
    return (values - loc) / scale, loc, scale


def patchtst_sincos(num_positions: int, width: int) -> Tensor:
    """PatchTST's fixed positions (``PatchTSTPositionalEncoding._init_pe``, ``"sincos"``): the sin-cos table,
    minus its mean, over ten times its standard deviation."""
    table = torch.zeros(num_positions, width)
    position = torch.arange(0, num_positions).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, width, 2) * -(math.log(10000.0) / width))
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    table = table - table.mean()
    return table / (table.std() * 10)


class SeriesAdapter(Adapter):
    """Series -> channel-independent patch tokens; see the module docstring. ``hidden_size`` is D."""

    batch_keys = (PAST_VALUES, OBSERVED)

    def __init__(self, config: SeriesConfig, hidden_size: int) -> None:
        super().__init__()
        self.config, self.hidden_size = config, hidden_size
        self.patch_embed = nn.Linear(config.patch_length, hidden_size)
        table = patchtst_sincos(config.num_patches, hidden_size)
        if config.positions == "learned":
            self.position_enc = nn.Parameter(torch.randn(config.num_patches, hidden_size))
        else:
            self.register_buffer("position_enc", table)
        self.positional_dropout = nn.Dropout(config.positional_dropout)

    def content_prefixes(self) -> tuple[str, ...]:
        return ("patch_embed.",)

    def position_prefixes(self) -> tuple[str, ...]:
        return ("position_enc",)

    # -- the stages -------------------------------------------------------------------------------------------
    def values(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(values (B, L, C) float, observed (B, L, C) bool), checked (one-line errors)."""
        values = batch.get(PAST_VALUES)
        if not isinstance(values, Tensor) or values.dim() != 3:
            got = None if not isinstance(values, Tensor) else tuple(values.shape)
            raise ValueError(f"expected {PAST_VALUES} of shape (B, L, C), got {got}")
        c = self.config
        if values.shape[2] != c.num_channels:
            raise ValueError(f"{PAST_VALUES} has {values.shape[2]} channels; this adapter takes {c.num_channels}")
        if values.shape[1] < c.patch_length:
            raise ValueError(f"series of {values.shape[1]} steps are shorter than one patch ({c.patch_length})")
        if values.shape[1] > c.context_length:
            raise ValueError(f"series of {values.shape[1]} steps are longer than context_length {c.context_length}")
        observed = batch.get(OBSERVED)
        observed = torch.ones_like(values, dtype=torch.bool) if observed is None else observed.bool()
        values = values.float()
        if not torch.isfinite(values[observed]).all():
            raise ValueError(f"{PAST_VALUES} holds NaN or inf at observed steps (mark missing steps in {OBSERVED})")
        return torch.where(observed, values, torch.zeros(())), observed

    def scaled(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(scaled values (B, L, C), observed, loc (B, 1, C), scale (B, 1, C))."""
        values, observed = self.values(batch)
        if self.config.scaling == "std":
            scaled, loc, scale = std_scale(values, observed, self.config.minimum_scale)
        else:
            shape = (values.shape[0], 1, values.shape[2])
            scaled, loc, scale = values, values.new_zeros(shape), values.new_ones(shape)
        return scaled, observed, loc, scale

    def embed(self, batch: Batch) -> Tokens:
        c = self.config
        scaled, observed, loc, scale = self.scaled(batch)
        b = scaled.shape[0]
        patches = patchify(scaled, c.patch_length, c.stride).flatten(0, 1)               # (B·C, N, P)
        seen = patchify(observed.float(), c.patch_length, c.stride).flatten(0, 1).amax(-1) > 0
        padding = None if bool(seen.all()) else ~seen
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        structure: dict[str, Any] = {"loc": loc, "scale": scale, "num_examples": b}
        return Tokens(x=x, padding_mask=padding, targets={"patches": patches}, structure=structure)

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None,
                      structure: Mapping[str, Any] | None = None) -> Tensor:
        """x (R, N, D) + the first N rows of the position table (PatchTST's N positions)."""
        return self.positional_dropout(x + self.position_enc[: x.shape[1]].to(x.dtype))

    # -- what objectives may ask ------------------------------------------------------------------------------
    def batch_size(self, batch: Batch) -> int:
        return len(batch[PAST_VALUES])

    def row_seeds(self, batch: Batch) -> Tensor | None:
        """One seed per channel row: ``example seed * 65,536 + channel``."""
        seeds = batch.get(EXAMPLE_SEEDS)
        if seeds is None:
            return None
        channels = torch.arange(self.config.num_channels)
        return (torch.as_tensor(seeds).long()[:, None] * ROW_STRIDE + channels).flatten()

    def example_features(self, features: Tensor) -> Tensor:
        """(B·C, F) -> (B, C·F): a series' channel vectors side by side."""
        return features.reshape(-1, self.config.num_channels * features.shape[-1])

    def example_feature_size(self, width: int) -> int:
        return self.config.num_channels * width

    def mask_embedding(self) -> Tensor:
        """The embedding of a patch of zeros (PatchTST's ``mask_value`` 0): the patch map's bias."""
        return self.patch_embed.bias

    def target_size(self, name: str) -> int:
        if name == "patches":
            return self.config.patch_length
        return super().target_size(name)

    def unscale(self, rows: Tensor, structure: Mapping[str, Any]) -> Tensor:
        """(B·C, N, P) scaled patch values (a reconstruction) -> (B, C, N, P) in the series' own units."""
        c = self.config.num_channels
        loc, scale = structure["loc"], structure["scale"]        # (B, 1, C)
        out = rows.reshape(-1, c, *rows.shape[1:])
        return out * scale.transpose(1, 2)[..., None] + loc.transpose(1, 2)[..., None]


__all__ = ["SeriesConfig", "SeriesAdapter", "PAST_VALUES", "OBSERVED", "patchify", "std_scale", "patchtst_sincos",
           "num_patches", "SCALINGS", "POSITIONS"]
