"""The tabular adapter: a row of numbers and categories -> one token per column (the feature tokenizer of
FT-Transformer, Gorishniy et al., NeurIPS 2021, sec. 3.3).

Content (``embed``), for column j of a row:

* a number x (already scaled by the schema): ``x * W_j`` (a per-feature linear map, W_j in R^D); a missing number
  (NaN): the column's learned missing-value token ``M_j``;
* a category code c: a row of the column's embedding table; code 0 (missing) and code 1 (a category never seen in
  training) are rows of their own, learned like the others (the unseen row is trained only if training data
  carries one, so it stays near its initialisation: the "unknown" direction).

Positions (``add_positions``): the column's learned embedding ``b_j`` (FT-Transformer's per-feature bias), so a
token replaced by an objective's mask token still says which column it stands for. Prefix (``add_prefix``): a
learned [CLS] token in front (``cls_token``), whose output the encoder pools (``pooling="first"``).

Targets: ``"values"`` (B, N, 1) float, each column's value -- the scaled number (NaN when missing) or the category
code as a float; :meth:`target_classes` tells an objective which positions are categories and how many codes each
has (0: a number), so the MAE objective scores categories by cross-entropy and numbers by squared error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from selfsup.modalities.tabular.batch import ADAPTER_KEYS, CATEGORICAL, NUMERIC
from selfsup.types import Adapter, Batch, Tokens


@dataclass
class TabularConfig:
    """num_numeric: Fn, the numeric columns (the first Fn tokens); vocab_sizes: codes per categorical column
    (missing, unseen and the training categories; the next Fc tokens); cls_token: prepend a [CLS] token."""

    num_numeric: int = 0
    vocab_sizes: tuple[int, ...] = field(default_factory=tuple)
    cls_token: bool = True

    def __post_init__(self) -> None:
        self.vocab_sizes = tuple(int(v) for v in self.vocab_sizes)
        if self.num_numeric < 0 or any(v < 2 for v in self.vocab_sizes):
            raise ValueError("a categorical column has at least its missing and unseen codes (vocab size >= 2)")
        if self.num_numeric + len(self.vocab_sizes) == 0:
            raise ValueError("a table needs at least one feature column")

    @property
    def num_columns(self) -> int:
        return self.num_numeric + len(self.vocab_sizes)

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_table(rows: int, width: int) -> Tensor:
    """(rows, width) the 1-D sin-cos encoding of positions 0..rows-1 (Vaswani et al., 2017)."""
    position = torch.arange(rows, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(rows, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : width // 2]
    return table.float()


class TabularAdapter(Adapter):
    """Rows (``numeric`` (B, Fn) float, NaN = missing; ``categorical`` (B, Fc) long codes) -> column tokens
    (B, Fn + Fc, D); see the module docstring."""

    batch_keys = ADAPTER_KEYS

    def __init__(self, config: TabularConfig, hidden_size: int) -> None:
        super().__init__()
        c = self.config = config
        self.hidden_size = d = hidden_size
        bound = 1 / math.sqrt(d)    # FT-Transformer's initialisation of the tokenizer: U(-1/sqrt(d), 1/sqrt(d))
        self.numeric_weight = nn.Parameter(torch.empty(c.num_numeric, d).uniform_(-bound, bound))
        self.numeric_missing = nn.Parameter(torch.empty(c.num_numeric, d).uniform_(-bound, bound))
        self.category_embeddings = nn.Embedding(max(sum(c.vocab_sizes), 1), d)
        nn.init.uniform_(self.category_embeddings.weight, -bound, bound)
        offsets = torch.tensor([0, *c.vocab_sizes[:-1]], dtype=torch.long).cumsum(0) if c.vocab_sizes else \
            torch.zeros(0, dtype=torch.long)
        self.register_buffer("category_offsets", offsets, persistent=False)
        self.column_embeddings = nn.Parameter(torch.empty(c.num_columns, d).uniform_(-bound, bound))
        self.cls_token = nn.Parameter(torch.empty(1, 1, d).uniform_(-bound, bound)) if c.cls_token else None

    def content_prefixes(self) -> tuple[str, ...]:
        return ("numeric_weight", "numeric_missing", "category_embeddings.")

    def position_prefixes(self) -> tuple[str, ...]:
        return ("column_embeddings", "cls_token")

    # -- the stages -------------------------------------------------------------------------------------------
    def check(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(numeric (B, Fn) float, categorical (B, Fc) long) after checking their shapes and codes."""
        c = self.config
        numeric, categorical = batch.get(NUMERIC), batch.get(CATEGORICAL)
        b = len(numeric) if numeric is not None else len(categorical)
        if numeric is None:
            numeric = torch.zeros(b, 0)
        if categorical is None:
            categorical = torch.zeros(b, 0, dtype=torch.long)
        if numeric.dim() != 2 or numeric.shape[1] != c.num_numeric:
            raise ValueError(f"expected numeric of shape (B, {c.num_numeric}), got {tuple(numeric.shape)}")
        if categorical.dim() != 2 or categorical.shape[1] != len(c.vocab_sizes):
            raise ValueError(f"expected categorical of shape (B, {len(c.vocab_sizes)}), got {tuple(categorical.shape)}")
        if categorical.numel():
            sizes = torch.tensor(c.vocab_sizes, device=categorical.device)
            if bool((categorical < 0).any()) or bool((categorical >= sizes).any()):
                column = int(((categorical < 0) | (categorical >= sizes)).any(0).nonzero()[0])
                raise ValueError(f"categorical column {column} has a code outside 0..{c.vocab_sizes[column] - 1}")
        return numeric, categorical.long()

    def embed(self, batch: Batch) -> Tokens:
        numeric, categorical = self.check(batch)
        w = self.numeric_weight
        values = numeric.to(w.dtype)
        missing = torch.isnan(values)
        x_num = torch.where(missing[..., None], self.numeric_missing, values.nan_to_num(0.0)[..., None] * w)
        x_cat = self.category_embeddings(categorical + self.category_offsets)
        x = torch.cat([x_num, x_cat.to(x_num.dtype)], dim=1)
        target = torch.cat([numeric.float(), categorical.float()], dim=1)[..., None]
        return Tokens(x=x, padding_mask=None, targets={"values": target})

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None,
                      structure: Mapping[str, Any] | None = None) -> Tensor:
        """x (B, N, D) + each column's embedding (N = every column, or the first N when fewer are given)."""
        return x + self.column_embeddings[: x.shape[1]].to(x.dtype)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.cls_token is not None else 0

    def add_prefix(self, x: Tensor) -> Tensor:
        if self.cls_token is None:
            return x
        return torch.cat([self.cls_token.to(x.dtype).expand(len(x), -1, -1), x], dim=1)

    # -- what objectives may ask ------------------------------------------------------------------------------
    def target_size(self, name: str) -> int:
        if name == "values":
            return 1
        return super().target_size(name)

    def target_classes(self, name: str) -> tuple[int, ...] | None:
        if name == "values":
            return (0,) * self.config.num_numeric + self.config.vocab_sizes
        return super().target_classes(name)

    def decoder_positions(self, width: int) -> Tensor:
        """(p + N, width): a zero row for the [CLS] token, then a 1-D sin-cos row per column, so a decoder's mask
        tokens know their column (MAE's fixed decoder positions)."""
        table = sincos_table(self.config.num_columns, width)
        return torch.cat([torch.zeros(self.num_prefix_tokens, width), table])


__all__ = ["TabularConfig", "TabularAdapter", "sincos_table"]
