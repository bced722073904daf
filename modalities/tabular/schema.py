"""A table's schema: which columns are numbers and which categories, the categories seen in training, and each
numeric column's scaler -- inferred from the training split (with overrides), then applied to any split.

* A column is **numeric** when every value that is not missing reads as a number, else **categorical**
  (``numeric`` / ``categorical`` overrides win). Missing: an empty cell, ``?``, ``NA``, ``N/A``, ``NaN``,
  ``null``, ``None`` (:data:`MISSING_MARKERS`), a Python ``None`` or a float NaN. An infinite number is an error.
* Categorical codes: ``0`` missing, ``1`` a category never seen in training (the unseen token), ``2 + i`` the
  i-th training category (sorted, so the codes do not depend on row order).
* Numeric scaling, fitted on the training values that are not missing: ``quantile`` (the empirical CDF mapped to a
  standard normal, as scikit-learn's ``QuantileTransformer(output_distribution="normal")`` with up to 1,000
  quantiles), ``standard`` ((x - mean) / std) or ``none``. A missing number stays NaN (the adapter gives it the
  column's missing-value token).

The schema is a plain JSON-able object (:meth:`Schema.to_dict`): the export keeps it in its config, and the export's
processor (``backbones/remote/modeling_selfsup_tabular.py``) applies the same numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from selfsup.errors import SelfsupError

MISSING, UNSEEN, RESERVED = 0, 1, 2          # categorical codes: missing, unseen, first training category
MISSING_MARKERS = frozenset({"", "?", "NA", "N/A", "NaN", "nan", "null", "None"})
SCALINGS = ("quantile", "standard", "none")
NUM_QUANTILES = 1000
QUANTILE_CLIP = 1e-7                         # scikit-learn's BOUNDS_THRESHOLD: the CDF is clipped to [c, 1 - c]


def is_missing(value: Any) -> bool:
    """True for a cell that holds no value (module docstring)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (str, bytes)):
        return (value.decode() if isinstance(value, bytes) else value).strip() in MISSING_MARKERS
    return False


def as_number(value: Any) -> float | None:
    """The cell as a float (NaN when missing), or None when it is text that is not a number."""
    if is_missing(value):
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def as_category(value: Any) -> str | None:
    """The cell as a category string (None when missing); ``3`` and ``3.0`` are the same category."""
    if is_missing(value):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass
class Column:
    """name; kind ``"numeric"`` or ``"categorical"``; categories: the training categories (code ``2 + i``);
    scaling and its numbers: ``mean`` / ``std`` (standard), ``quantiles`` (the training values at
    ``NUM_QUANTILES`` evenly spaced levels, quantile)."""

    name: str
    kind: str
    categories: list[str] = field(default_factory=list)
    scaling: str = "none"
    mean: float = 0.0
    std: float = 1.0
    quantiles: list[float] = field(default_factory=list)

    @property
    def vocab_size(self) -> int:
        """Codes of a categorical column: missing, unseen and its categories."""
        return RESERVED + len(self.categories)


@dataclass
class Schema:
    """The feature columns (numeric ones first, then categorical: the token order), the label column and its
    classes (sorted training labels), and the source the schema was inferred from."""

    columns: list[Column]
    label: str | None = None
    label_classes: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def numeric(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "numeric"]

    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "categorical"]

    @property
    def vocab_sizes(self) -> tuple[int, ...]:
        return tuple(c.vocab_size for c in self.categorical)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schema":
        return cls(columns=[Column(**c) for c in data["columns"]], label=data.get("label"),
                   label_classes=list(data.get("label_classes", [])), source=data.get("source", ""))


# -- scalers -------------------------------------------------------------------------------------------------------
def fit_scaler(column: Column, values: np.ndarray, scaling: str) -> None:
    """Fit ``column``'s scaler on its training values (float64, NaN = missing, dropped)."""
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose from {list(SCALINGS)}")
    column.scaling = scaling
    seen = values[~np.isnan(values)]
    if not len(seen):
        seen = np.zeros(1)
    if scaling == "standard":
        column.mean, std = float(seen.mean()), float(seen.std())
        column.std = std if std > 0 else 1.0
    elif scaling == "quantile":
        levels = np.linspace(0, 1, min(NUM_QUANTILES, len(seen)))
        column.quantiles = [float(q) for q in np.quantile(seen, levels)]


def quantile_normal(x: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """scikit-learn's ``QuantileTransformer`` (normal output) with these fitted quantiles: the empirical CDF by
    interpolation, averaged over both directions so that ties take their middle level, a value at or past the
    smallest (largest) quantile at level 0 (1), clipped to [1e-7, 1 - 1e-7], then the standard normal's inverse
    CDF. NaN stays NaN."""
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0, 1, len(q))
    if len(q) < 2:
        return np.where(np.isnan(x), np.nan, 0.0)
    u = 0.5 * (np.interp(x, q, levels) - np.interp(-x, -q[::-1], -levels[::-1]))
    u = np.where(x - QUANTILE_CLIP < q[0], 0.0, np.where(x + QUANTILE_CLIP > q[-1], 1.0, u))   # as scikit-learn
    u = np.clip(u, QUANTILE_CLIP, 1 - QUANTILE_CLIP)
    z = torch.special.ndtri(torch.from_numpy(u)).numpy()
    return np.where(np.isnan(x), np.nan, z)


def scale(column: Column, values: np.ndarray) -> np.ndarray:
    """(R,) float64 raw numbers -> the column's scaled values (float64, NaN kept)."""
    if column.scaling == "standard":
        return (values - column.mean) / column.std
    if column.scaling == "quantile":
        return quantile_normal(values, column.quantiles)
    return values


def label_index(schema: Schema) -> dict[str, int]:
    return {c: i for i, c in enumerate(schema.label_classes)}


def check_schema(schema: Schema) -> None:
    if not schema.columns:
        raise SelfsupError(f"{schema.source}: no feature columns (every column is the label or dropped)")


__all__ = ["Column", "Schema", "MISSING", "UNSEEN", "RESERVED", "MISSING_MARKERS", "SCALINGS", "is_missing",
           "as_number", "as_category", "fit_scaler", "quantile_normal", "scale", "label_index", "check_schema"]
