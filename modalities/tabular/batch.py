"""Table batches: the keys, seeded examples, SCARF's corruption and two-view batches.

:class:`TableExamples` yields row ``i`` with ``example_seed(seed, epoch, i)``; :func:`collate_rows` stacks rows into
``{"numeric": (B, Fn) float32, "categorical": (B, Fc) long, "class_labels": (B,) long, "example_seeds": (B,)}``.

SCARF (Bahri et al., ICLR 2022, sec. 2): a row's positive view replaces a random subset of ``floor(c * M)`` of its M
features (c = 0.6 in the paper), chosen uniformly without replacement, each by a draw from that feature's empirical
marginal over the training set -- the feature's value in a training row drawn uniformly (a missing value is a value
of the marginal too). :func:`scarf_corrupt` does it for one row from a ``torch.Generator``; :class:`TableViewDataset`
draws view ``v`` of example ``i`` from ``example_seed(seed, epoch, i, stream=VIEW_STREAM + v)``, so the views are
the same in any process, batch, order or resumed run. View 0 is the row itself, view 1 the corrupted row (SCARF's
anchor and positive).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from selfsup.data import example_seed
from selfsup.types import EXAMPLE_SEEDS, VIEWS

NUMERIC, CATEGORICAL, CLASS_LABELS = "numeric", "categorical", "class_labels"
ADAPTER_KEYS = (NUMERIC, CATEGORICAL)
VIEW_STREAM = 2


class TableExamples(Dataset):
    """Rows of encoded arrays (``numeric`` (R, Fn), ``categorical`` (R, Fc), ``labels`` (R,) or None) as seeded
    examples; call :meth:`set_epoch` each epoch (``selfsup.data.set_loader_position`` does)."""

    def __init__(self, numeric: np.ndarray, categorical: np.ndarray, labels: np.ndarray | None = None,
                 seed: int = 0) -> None:
        self.numeric, self.categorical, self.labels = numeric, categorical, labels
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.numeric)

    def row(self, index: int) -> dict[str, Any]:
        out = {NUMERIC: self.numeric[index], CATEGORICAL: self.categorical[index]}
        if self.labels is not None:
            out[CLASS_LABELS] = int(self.labels[index])
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.row(index), "seed": example_seed(self.seed, self.epoch, index)}


def collate_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rows (dicts of one row's arrays, optional ``class_labels`` and ``seed``) -> one batch (module docstring)."""
    if not rows:
        raise ValueError("collate_rows got no rows")
    batch: dict[str, Any] = {NUMERIC: torch.from_numpy(np.stack([r[NUMERIC] for r in rows]).astype(np.float32)),
                             CATEGORICAL: torch.from_numpy(np.stack([r[CATEGORICAL] for r in rows]).astype(np.int64))}
    if all(CLASS_LABELS in r for r in rows):
        batch[CLASS_LABELS] = torch.tensor([r[CLASS_LABELS] for r in rows], dtype=torch.long)
    if all("seed" in r for r in rows):
        batch[EXAMPLE_SEEDS] = torch.tensor([r["seed"] for r in rows], dtype=torch.long)
    return batch


def corrupted_count(num_features: int, rate: float) -> int:
    """``floor(rate * M)`` features of a row are corrupted (a tolerance for float error at exact products)."""
    return int(math.floor(rate * num_features + 1e-9))


def scarf_corrupt(numeric: np.ndarray, categorical: np.ndarray, pool_numeric: np.ndarray,
                  pool_categorical: np.ndarray, rate: float, generator: torch.Generator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCARF's corruption of one row (module docstring): (numeric (Fn,), categorical (Fc,), corrupted (Fn + Fc,)
    bool). ``pool_*``: the training set's encoded rows, whose columns are the features' empirical marginals."""
    fn, m = len(numeric), len(numeric) + len(categorical)
    q = corrupted_count(m, rate)
    chosen = torch.randperm(m, generator=generator)[:q].numpy()
    donors = torch.randint(len(pool_numeric), (q,), generator=generator).numpy()   # one training row per feature
    numeric, categorical = numeric.copy(), categorical.copy()
    is_num = chosen < fn
    numeric[chosen[is_num]] = pool_numeric[donors[is_num], chosen[is_num]]
    cat_cols = chosen[~is_num] - fn
    categorical[cat_cols] = pool_categorical[donors[~is_num], cat_cols]
    mask = np.zeros(m, dtype=bool)
    mask[chosen] = True
    return numeric, categorical, mask


class TableViewDataset(TableExamples):
    """SCARF's two views of each row: ``{"views": [row, corrupted row], "seed", "class_labels"?}``, the
    corruption drawn from the example's own generator (module docstring). ``pool``: the rows the marginals come
    from (default: these rows, the training set)."""

    def __init__(self, numeric: np.ndarray, categorical: np.ndarray, labels: np.ndarray | None = None,
                 seed: int = 0, corruption_rate: float = 0.6,
                 pool: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        super().__init__(numeric, categorical, labels, seed)
        if not 0.0 <= corruption_rate <= 1.0:
            raise ValueError(f"corruption_rate must be in [0, 1], got {corruption_rate}")
        self.rate = corruption_rate
        self.pool = pool if pool is not None else (numeric, categorical)

    def generator(self, index: int, view: int) -> torch.Generator:
        return torch.Generator().manual_seed(example_seed(self.seed, self.epoch, index, stream=VIEW_STREAM + view))

    def corrupted(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return scarf_corrupt(self.numeric[index], self.categorical[index], *self.pool, self.rate,
                             self.generator(index, 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.row(index)
        numeric, categorical, _ = self.corrupted(index)
        views = [{NUMERIC: row[NUMERIC], CATEGORICAL: row[CATEGORICAL]}, {NUMERIC: numeric, CATEGORICAL: categorical}]
        out = {"views": views, "seed": example_seed(self.seed, self.epoch, index)}
        if CLASS_LABELS in row:
            out[CLASS_LABELS] = row[CLASS_LABELS]
        return out


def collate_views(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"views": [one row batch per view], "example_seeds": (B,), "class_labels": (B,) when labelled}``."""
    num_views = len(examples[0]["views"])
    batch: dict[str, Any] = {VIEWS: [collate_rows([e["views"][v] for e in examples]) for v in range(num_views)],
                             EXAMPLE_SEEDS: torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)}
    if all(CLASS_LABELS in e for e in examples):
        batch[CLASS_LABELS] = torch.tensor([e[CLASS_LABELS] for e in examples], dtype=torch.long)
    return batch


__all__ = ["NUMERIC", "CATEGORICAL", "CLASS_LABELS", "ADAPTER_KEYS", "VIEW_STREAM", "TableExamples", "collate_rows",
           "scarf_corrupt", "corrupted_count", "TableViewDataset", "collate_views"]
