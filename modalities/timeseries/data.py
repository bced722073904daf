"""Series data: UCR / UEA text and ``.ts`` files, CSV (one series per row, or one column per channel with a time
index), parquet and ``datasets`` folders (a column of series), a generated default, and the collation the adapter
reads.

A :class:`SeriesSet` holds series of shape (L_i, C) (lengths may differ) and optional integer labels. Loaders stop
with one line naming the file and the row (1-based) of what they cannot take: an empty file, a ragged CSV row, a
value that is not a number, NaN inside a series (trailing NaN in a UCR row is how variable-length sets pad, and is
cut off), inf.

:func:`collate_series` pads a batch at the start to its longest series (``past_observed_mask`` False there) and
carries ``example_seeds`` and ``labels``.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import SelfsupError
from selfsup.modalities.timeseries.adapter import OBSERVED, PAST_VALUES
from selfsup.types import EXAMPLE_SEEDS

logger = logging.getLogger(__name__)
LABELS = "labels"
GENERATED_NOTE = "generated series (sine, square and sawtooth waves with noise: 3 classes; not a real data set)"


@dataclass
class SeriesSet:
    """series: (L_i, C) float tensors; labels: (n,) long or None; source: where they came from; classes: the
    original label of each class id."""

    series: list[Tensor]
    labels: Tensor | None = None
    source: str = ""
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, index: int) -> dict[str, Any]:
        out: dict[str, Any] = {"values": self.series[index]}
        if self.labels is not None:
            out["label"] = int(self.labels[index])
        return out

    @property
    def num_channels(self) -> int:
        return int(self.series[0].shape[1])

    @property
    def max_length(self) -> int:
        return max(int(s.shape[0]) for s in self.series)

    @property
    def min_length(self) -> int:
        return min(int(s.shape[0]) for s in self.series)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SelfsupError(f"{where}: {text!r} is not a number") from None
    if math.isinf(value):
        raise SelfsupError(f"{where}: an infinite value")
    return value


def _series_row(values: list[float], where: str) -> Tensor:
    """A univariate row: trailing NaN cut (variable-length padding), NaN inside is an error."""
    arr = np.asarray(values, dtype=np.float32)
    finite = np.nonzero(~np.isnan(arr))[0]
    if not len(finite):
        raise SelfsupError(f"{where}: no values")
    arr = arr[: finite[-1] + 1]
    if np.isnan(arr).any():
        raise SelfsupError(f"{where}: NaN inside the series (mark missing steps another way, or fill them)")
    return torch.from_numpy(arr.copy())[:, None]


def _encode_labels(raw: list[str], classes: list[str] | None = None) -> tuple[Tensor, list[str]]:
    classes = classes if classes is not None else sorted(set(raw), key=lambda v: (float(v) if _isnum(v) else 0, v))
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(raw) - set(index))
    if missing:
        raise SelfsupError(f"labels {missing[:3]} are not among the training labels {classes[:10]}")
    return torch.tensor([index[v] for v in raw], dtype=torch.long), classes


def _isnum(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_ucr(path: str | Path, classes: list[str] | None = None) -> SeriesSet:
    """A UCR text file (whitespace or comma separated; first column the label, the rest one series)."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: no such file")
    raw_labels, series = [], []
    with open(path, encoding="utf-8") as handle:
        for row, line in enumerate(handle, 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            where = f"{path}, row {row}"
            if len(parts) < 2:
                raise SelfsupError(f"{where}: a label and no values")
            label = parts[0]
            raw_labels.append(str(int(float(label))) if _isnum(label) and float(label).is_integer() else label)
            series.append(_series_row([_number(v, where) if v.lower() != "nan" else math.nan for v in parts[1:]],
                                      where))
    if not series:
        raise SelfsupError(f"{path}: empty file (no series)")
    labels, classes = _encode_labels(raw_labels, classes)
    return SeriesSet(series, labels, str(path), classes)


def load_ucr(folder: str | Path, name: str | None = None) -> tuple[SeriesSet, SeriesSet]:
    """(train, test) of a UCR / UEA data set: ``folder/NAME_TRAIN.txt`` and ``NAME_TEST.txt``, or the ``.ts``
    files (``name`` default: the folder's name); the test labels are coded with the training classes."""
    folder = Path(folder)
    name = name or folder.name
    ext = ".ts" if (folder / f"{name}_TRAIN.ts").is_file() and not (folder / f"{name}_TRAIN.txt").is_file() else ".txt"
    train_path, test_path = folder / f"{name}_TRAIN{ext}", folder / f"{name}_TEST{ext}"
    if not train_path.is_file() and (folder / name).is_dir():
        return load_ucr(folder / name, name)
    read = read_ts if ext == ".ts" else read_ucr
    train = read(train_path)
    test = read(test_path, train.classes) if test_path.is_file() else SeriesSet([], None, "", train.classes)
    if test.series and test.num_channels != train.num_channels:
        raise SelfsupError(f"{test_path}: {test.num_channels} channels, the training file has {train.num_channels}")
    return train, test


def read_ts(path: str | Path, classes: list[str] | None = None) -> SeriesSet:
    """A sktime / UEA ``.ts`` file: ``@`` header lines, then one series per line, channels separated by ``:``
    (values by ``,``, ``?`` or NaN for a missing step at the end), the class label last when ``@classLabel true``."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: no such file")
    labelled, in_data, raw_labels, series = False, False, [], []
    with open(path, encoding="utf-8") as handle:
        for row, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                key = line.lower()
                if key.startswith("@classlabel"):
                    labelled = key.split()[1] == "true"
                elif key.startswith("@data"):
                    in_data = True
                continue
            where = f"{path}, row {row}"
            parts = line.split(":")
            if labelled:
                raw_labels.append(parts.pop().strip())
            channels = [_series_row([math.nan if v.strip() in ("?", "NaN", "nan") else _number(v, where)
                                     for v in part.split(",")], where) for part in parts]
            if len({len(c) for c in channels}) != 1:
                raise SelfsupError(f"{where}: channels of different lengths")
            if series and len(channels) != series[0].shape[1]:
                raise SelfsupError(f"{where}: {len(channels)} channels, the first series has {series[0].shape[1]}")
            series.append(torch.cat(channels, dim=1))
    if not series:
        raise SelfsupError(f"{path}: empty file (no series after @data)")
    labels, classes = _encode_labels(raw_labels, classes) if raw_labels else (None, classes or [])
    return SeriesSet(series, labels, str(path), classes)


def read_series_table(path: str | Path, value_column: str = "values", label_column: str | None = None
                      ) -> SeriesSet:
    """A parquet file or a ``datasets`` folder (``save_to_disk``) with one series per row: ``value_column`` a list
    of numbers (univariate) or of lists (steps x channels), ``label_column`` the label when given."""
    path = Path(path)
    if path.is_dir():
        from datasets import load_from_disk

        table = load_from_disk(str(path))
        table = table[next(iter(table))] if hasattr(table, "keys") else table
        rows = table.to_dict()
    elif path.is_file():
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pydict()
    else:
        raise SelfsupError(f"{path}: no such file or folder")
    if value_column not in rows:
        raise SelfsupError(f"{path}: no column {value_column!r} (columns: {sorted(rows)})")
    series = []
    for row, values in enumerate(rows[value_column], 1):
        where = f"{path}, row {row}"
        if not values:
            raise SelfsupError(f"{where}: an empty series")
        if isinstance(values[0], (list, tuple)):
            arr = torch.tensor(values, dtype=torch.float32)
            if not torch.isfinite(arr).all():
                raise SelfsupError(f"{where}: NaN or inf")
            series.append(arr)
        else:
            series.append(_series_row([math.nan if v is None else float(v) for v in values], where))
    if not series:
        raise SelfsupError(f"{path}: empty (no rows)")
    if label_column:
        labels, classes = _encode_labels([str(v) for v in rows[label_column]])
        return SeriesSet(series, labels, str(path), classes)
    return SeriesSet(series, None, str(path), [])


def read_series_csv(path: str | Path, layout: str = "rows", label_column: str | None = None,
                    time_column: str | None = None) -> SeriesSet:
    """A CSV of series: ``layout="rows"`` one univariate series per row (``label_column`` the label's header,
    else no labels; a header row is detected when its first field is not a number), or ``layout="columns"`` one
    long multivariate series, one column per channel (``time_column`` left out; default: a first column named
    ``date`` / ``time`` / ``timestamp``)."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle) if any(cell.strip() for cell in r)]
    if not rows:
        raise SelfsupError(f"{path}: empty file")
    header = rows[0] if not _isnum(rows[0][0]) or (label_column and label_column in rows[0]) else None
    body = rows[1:] if header else rows
    if not body:
        raise SelfsupError(f"{path}: a header and no rows")
    if layout == "columns":
        names = header or [f"channel_{i}" for i in range(len(body[0]))]
        skip = {i for i, n in enumerate(names) if n == time_column or (time_column is None and i == 0 and
                                                                       n.lower() in ("date", "time", "timestamp"))}
        keep = [i for i in range(len(names)) if i not in skip]
        values = []
        for row, cells in enumerate(body, 2 if header else 1):
            if len(cells) != len(names):
                raise SelfsupError(f"{path}, row {row}: {len(cells)} fields, the header has {len(names)}")
            values.append([_number(cells[i], f"{path}, row {row}, column {names[i]!r}") for i in keep])
        arr = torch.tensor(values, dtype=torch.float32)
        if torch.isnan(arr).any():
            row = int(torch.isnan(arr).any(1).nonzero()[0]) + (2 if header else 1)
            raise SelfsupError(f"{path}, row {row}: NaN")
        return SeriesSet([arr], None, str(path), [])
    label_at = header.index(label_column) if header and label_column else None
    width = len(body[0])
    raw_labels, series = [], []
    for row, cells in enumerate(body, 2 if header else 1):
        where = f"{path}, row {row}"
        if len(cells) != width:
            raise SelfsupError(f"{where}: {len(cells)} fields, the first row has {width}")
        if label_at is not None:
            raw_labels.append(cells[label_at].strip())
        series.append(_series_row([_number(c, where) if c.strip().lower() not in ("", "nan") else math.nan
                                   for i, c in enumerate(cells) if i != label_at], where))
    labels, classes = _encode_labels(raw_labels) if raw_labels else (None, [])
    return SeriesSet(series, labels, str(path), classes)


def windows(series: Tensor, context: int, horizon: int, start: int, end: int, step: int = 1
            ) -> tuple[Tensor, Tensor]:
    """Forecasting windows of one long series (T, C): (contexts (W, context, C), futures (W, horizon, C)) for
    every first future step ``t`` in ``[max(start, context), end - horizon]`` (every ``step``-th): a window
    belongs to the split its future starts in, its context may reach back before ``start`` (the usual ETT split:
    train t in [0, 8640), validation [8640, 11520), test [11520, 14400))."""
    firsts = range(max(start, context), end - horizon + 1, step)
    if not len(firsts):
        raise SelfsupError(f"no window of {context} + {horizon} steps fits in steps {start}..{end}")
    ctx = torch.stack([series[t - context:t] for t in firsts])
    fut = torch.stack([series[t:t + horizon] for t in firsts])
    return ctx, fut


def window_set(data: SeriesSet, context: int, stride: int, rows: int | None = None) -> SeriesSet:
    """One long series (a ``columns`` CSV) cut into training examples of ``context`` steps every ``stride`` steps,
    from its first ``rows`` steps (default all: keep a test period out with ``rows``)."""
    if len(data) != 1:
        raise SelfsupError(f"{data.source}: windows are cut from one long series, not {len(data)}")
    series = data.series[0][:rows] if rows else data.series[0]
    if len(series) < context:
        raise SelfsupError(f"{data.source}: {len(series)} steps, shorter than one window of {context}")
    starts = range(0, len(series) - context + 1, stride)
    return SeriesSet([series[s:s + context] for s in starts], None,
                     f"{data.source} ({len(starts)} windows of {context} steps every {stride})", [])


def generated_series(num_series: int = 300, length: int = 96, seed: int = 0) -> SeriesSet:
    """A built-in labelled default that needs no network: sine, square and sawtooth waves of random frequency,
    phase and amplitude plus noise (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    series, labels = [], []
    for i in range(num_series):
        kind = i % 3
        freq = 2 * math.pi * (1.5 + 3 * float(torch.rand((), generator=g))) / length
        phase = 2 * math.pi * float(torch.rand((), generator=g))
        amp = 0.5 + float(torch.rand((), generator=g))
        wave = torch.sin(freq * t + phase)
        if kind == 1:
            wave = torch.sign(wave)
        elif kind == 2:
            wave = 2 * torch.remainder((freq * t + phase) / (2 * math.pi), 1.0) - 1
        series.append((amp * wave + 0.2 * torch.randn(length, generator=g))[:, None])
        labels.append(kind)
    return SeriesSet(series, torch.tensor(labels), f"built-in {GENERATED_NOTE}", ["sine", "square", "sawtooth"])


def builtin_series(num_series: int = 300, length: int = 96, seed: int = 0) -> tuple[SeriesSet, SeriesSet]:
    """(train, test) of :func:`generated_series` (test: a different draw), logged as generated."""
    logger.warning("no series given: using the built-in %s", GENERATED_NOTE)
    train = generated_series(num_series, length, seed)
    test = generated_series(num_series // 3, length, seed + 1)
    return train, test


def collate_series(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"values": (L, C), "seed"?, "label"?}`` examples -> ``past_values`` (B, L_max, C) padded at the start,
    ``past_observed_mask`` (B, L_max, C) (only when lengths differ), ``example_seeds`` (B,), ``labels`` (B,)."""
    if not examples:
        raise ValueError("collate_series got no series")
    lengths = [int(e["values"].shape[0]) for e in examples]
    longest, channels = max(lengths), int(examples[0]["values"].shape[1])
    values = torch.zeros(len(examples), longest, channels)
    for i, e in enumerate(examples):
        values[i, longest - lengths[i]:] = e["values"]
    batch: dict[str, Any] = {PAST_VALUES: values}
    if len(set(lengths)) > 1:
        observed = torch.arange(longest)[None, :, None] >= (longest - torch.tensor(lengths))[:, None, None]
        batch[OBSERVED] = observed.expand(-1, -1, channels).contiguous()
    if all("seed" in e for e in examples):
        batch[EXAMPLE_SEEDS] = torch.tensor([e["seed"] for e in examples], dtype=torch.long)
    if all("label" in e for e in examples):
        batch[LABELS] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


__all__ = ["SeriesSet", "read_ucr", "read_ts", "read_series_table", "load_ucr", "read_series_csv", "windows", "window_set", "generated_series", "builtin_series",
           "collate_series", "LABELS", "GENERATED_NOTE"]
