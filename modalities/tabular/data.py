"""Tables in, arrays out: CSV (with or without a header), parquet, ``datasets`` folders and scikit-learn's bundled
tables, read into a :class:`RawTable` (one array of cells per column, and where each row came from), the schema
inferred from the training split (:func:`infer_schema`), and every split encoded with it (:func:`encode`).

Bad input stops with one line naming the file and the row: an empty file, a ragged CSV row, a column that is
numeric in one file and text in another (or in the schema), an infinite number. A missing value (empty, ``?``,
``NaN``, ...) is not an error: it becomes the column's missing-value token. A category never seen in training is
not one either: it becomes the unseen token, and :class:`TableArrays` counts them.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from selfsup.errors import SelfsupError
from selfsup.modalities.tabular.schema import (MISSING, RESERVED, UNSEEN, Column, Schema, as_category, as_number,
                                               check_schema, fit_scaler, is_missing, scale)

BUILTIN = {"breast_cancer": "load_breast_cancer", "wine": "load_wine"}
FILE_TYPES = (".csv", ".tsv", ".parquet")


@dataclass
class RawTable:
    """Cells by column (object arrays of equal length), the column names in file order, and where each row
    came from: ``where(i)`` -> ``"FILE line L"`` (CSV: ``lines`` holds each row's line) or ``"FILE row R"`` (rows
    counted from 1); ``locate``, when set, answers instead (rows gathered from other tables)."""

    names: list[str]
    cells: dict[str, np.ndarray]
    source: str
    lines: list[int] | None = None
    locate: Callable[[int], str] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.cells.values()))) if self.cells else 0

    def where(self, i: int) -> str:
        if self.locate is not None:
            return self.locate(i)
        return f"{self.source} line {self.lines[i]}" if self.lines is not None else f"{self.source} row {i + 1}"

    def take(self, index: np.ndarray) -> "RawTable":
        """The rows ``index``, still named by their place in this table's file(s)."""
        return RawTable(self.names, {k: v[index] for k, v in self.cells.items()}, self.source,
                        locate=lambda i: self.where(int(index[i])))


@dataclass
class TableArrays:
    """One split encoded with a schema: ``numeric`` (R, Fn) float32 scaled (NaN = missing), ``categorical``
    (R, Fc) int64 codes, ``labels`` (R,) int64 or None; ``unseen`` counts the unseen categories per column."""

    numeric: np.ndarray
    categorical: np.ndarray
    labels: np.ndarray | None
    source: str = ""
    unseen: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numeric)

    def subset(self, index: np.ndarray) -> "TableArrays":
        return TableArrays(self.numeric[index], self.categorical[index],
                           None if self.labels is None else self.labels[index], self.source, dict(self.unseen))


# -- reading -----------------------------------------------------------------------------------------------------
def looks_like_header(first: list[str], rest: list[list[str]]) -> bool:
    """A first CSV row is a header when none of its fields is a number (or missing) while a later row has a
    number in one of those columns; a table of text alone is taken to have a header when its first row's
    fields are distinct and no later row repeats it."""
    if any(as_number(v) is not None and not is_missing(v) for v in first) or any(is_missing(v) for v in first):
        return False
    if any(as_number(v) is not None and not is_missing(v) for row in rest for v in row):
        return True
    return len(set(first)) == len(first) and all(row != first for row in rest)


def read_csv(path: str | Path, header: str = "auto", column_names: Sequence[str] | None = None) -> RawTable:
    """A CSV (or TSV) file as a :class:`RawTable`; ``header`` ``"auto"`` / ``"yes"`` / ``"no"``; without a
    header the columns are ``column_names`` or ``"0"``, ``"1"``, .... Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: data file not found")
    if path.stat().st_size == 0:
        raise SelfsupError(f"{path}: empty file")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [(n, row) for n, row in enumerate(csv.reader(handle, delimiter=delimiter, skipinitialspace=True), 1)
                if row and any(v.strip() for v in row)]
    if not rows:
        raise SelfsupError(f"{path}: empty file (no rows)")
    first = [v.strip() for v in rows[0][1]]
    has_header = header == "yes" or (header == "auto" and not column_names
                                     and looks_like_header(first, [r for _, r in rows[1:50]]))
    if has_header:
        names, rows = first, rows[1:]
    else:
        names = list(column_names) if column_names else [str(i) for i in range(len(first))]
    if len(names) != len(first):
        raise SelfsupError(f"{path}: {len(names)} column names for {len(first)} columns")
    if not rows:
        raise SelfsupError(f"{path}: a header and no rows")
    width = len(names)
    for line, row in rows:
        if len(row) != width:
            raise SelfsupError(f"{path} line {line}: {len(row)} fields, expected {width} (as the "
                               f"{'header' if has_header else 'first row'})")
    cells = {name: np.array([row[j].strip() for _, row in rows], dtype=object) for j, name in enumerate(names)}
    return RawTable(names, cells, str(path), lines=[line for line, _ in rows])


def from_frame(frame, source: str) -> RawTable:
    """A pandas DataFrame as a :class:`RawTable` (rows counted from 1)."""
    if len(frame) == 0:
        raise SelfsupError(f"{source}: empty file (no rows)")
    names = [str(c) for c in frame.columns]
    cells = {str(c): np.array(frame[c].tolist(), dtype=object) for c in frame.columns}
    return RawTable(names, cells, source)


def read_parquet(path: str | Path) -> RawTable:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise SelfsupError(f"{path}: data file not found")
    if path.stat().st_size == 0:
        raise SelfsupError(f"{path}: empty file")
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001 - a corrupt file becomes one line
        raise SelfsupError(f"{path}: not a readable parquet file ({err})") from None
    return from_frame(frame, str(path))


def read_dataset_folder(path: str | Path, split: str | None = None) -> RawTable:
    """A folder written by ``datasets``' ``save_to_disk`` (a ``Dataset`` or the ``split`` of a ``DatasetDict``;
    default ``train``)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001
        raise SelfsupError(f"{path}: not a datasets folder ({err})") from None
    if isinstance(data, datasets.DatasetDict):
        name = split or ("train" if "train" in data else next(iter(data)))
        if name not in data:
            raise SelfsupError(f"{path}: no split {name!r}; it has {sorted(data)}")
        data = data[name]
    elif split not in (None, "train"):
        raise SelfsupError(f"{path}: one Dataset, no split {split!r}")
    return from_frame(data.to_pandas(), f"{path}")


def read_table(path: str | Path, header: str = "auto", column_names: Sequence[str] | None = None) -> RawTable:
    """Any table file or ``datasets`` folder by its kind."""
    p = Path(path)
    if p.is_dir():
        return read_dataset_folder(p)
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt", ".data", ".test"):
        return read_csv(p, header, column_names)
    if suffix == ".parquet":
        return read_parquet(p)
    if not p.exists():
        raise SelfsupError(f"{path}: data file not found")
    raise SelfsupError(f"{path}: unsupported table file; expected one of {', '.join(FILE_TYPES)} or a datasets folder")


def builtin_table(name: str = "breast_cancer") -> RawTable:
    """One of scikit-learn's bundled tables (no network): ``breast_cancer`` (569 rows, 30 numeric features, 2
    classes) or ``wine`` (178 rows, 13 numeric features, 3 classes); the label column is ``target``."""
    import sklearn.datasets as skd

    if name not in BUILTIN:
        raise SelfsupError(f"unknown built-in table {name!r}; choose from {sorted(BUILTIN)}")
    bunch = getattr(skd, BUILTIN[name])(as_frame=True)
    return from_frame(bunch.frame, f"scikit-learn's bundled {name} table (the built-in default: no network)")


def concat_tables(tables: Sequence[RawTable]) -> RawTable:
    """Rows of several tables with the same columns, one after another (``where`` still names each file)."""
    if len(tables) == 1:
        return tables[0]
    names = tables[0].names
    for t in tables[1:]:
        if t.names != names:
            raise SelfsupError(f"{t.source}: columns {t.names} differ from {tables[0].source}'s {names}")
    cells = {n: np.concatenate([t.cells[n] for t in tables]) for n in names}
    starts = np.cumsum([0] + [len(t) for t in tables])

    def where(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right") - 1)
        return tables[k].where(i - int(starts[k]))

    return RawTable(names, cells, " + ".join(t.source for t in tables), locate=where)


# -- the schema ----------------------------------------------------------------------------------------------------
def first_text(table: RawTable, name: str) -> int | None:
    """The first row whose cell in column ``name`` is text that is not a number (None: every cell reads)."""
    for i, value in enumerate(table.cells[name]):
        if as_number(value) is None:
            return i
    return None


def infer_kinds(tables: Sequence[RawTable], features: Sequence[str], numeric: Sequence[str] = (),
                categorical: Sequence[str] = ()) -> dict[str, str]:
    """Each feature column's kind (module docstring of ``schema``); a column that reads as numbers in one
    training file and as text in another is an error naming both files and the first text row."""
    kinds = {}
    for name in features:
        if name in categorical:
            kinds[name] = "categorical"
            continue
        text = [(t, first_text(t, name)) for t in tables]
        texty = [(t, i) for t, i in text if i is not None]
        if name in numeric:
            if texty:
                t, i = texty[0]
                raise SelfsupError(f"{t.where(i)}, column {name}: {t.cells[name][i]!r} is not a number, but the "
                                   f"column is declared numeric")
            kinds[name] = "numeric"
        elif texty and len(texty) < len(tables) and any(np.any([not is_missing(v) for v in t.cells[name]])
                                                        for t, i in text if i is None):
            t, i = texty[0]
            clean = next(s for s, j in text if j is None)
            raise SelfsupError(f"{t.where(i)}, column {name}: {t.cells[name][i]!r} is text, but the column is "
                               f"numeric in {clean.source}; declare it with --categorical_columns {name}")
        else:
            kinds[name] = "categorical" if texty else "numeric"
    return kinds


def infer_schema(tables: Sequence[RawTable], label: str | None = None, numeric: Sequence[str] = (),
                 categorical: Sequence[str] = (), drop: Sequence[str] = (), scaling: str = "quantile") -> Schema:
    """The schema of the training ``tables`` (same columns): feature kinds, categories, scalers, label classes.
    ``label`` None: no label column; ``drop``: columns left out."""
    first = tables[0]
    names = first.names
    for given in [*numeric, *categorical, *drop, *([label] if label else [])]:
        if given not in names:
            raise SelfsupError(f"{first.source}: no column {given!r}; its columns are {names}")
    features = [n for n in names if n != label and n not in drop]
    kinds = infer_kinds(tables, features, numeric, categorical)
    table = concat_tables(tables)
    columns = []
    for name in features:
        column = Column(name, kinds[name])
        if column.kind == "numeric":
            fit_scaler(column, numbers(table, name), scaling)
        else:
            column.categories = sorted({c for c in map(as_category, table.cells[name]) if c is not None})
        columns.append(column)
    columns = [c for c in columns if c.kind == "numeric"] + [c for c in columns if c.kind == "categorical"]
    classes = []
    if label:
        classes = sorted({c for c in map(as_category, table.cells[label]) if c is not None}, key=_natural)
    schema = Schema(columns, label, classes, first.source)
    check_schema(schema)
    return schema


def _natural(value: str):
    number = as_number(value)
    return (0, number, value) if number is not None and not math.isnan(number) else (1, 0.0, value)


def numbers(table: RawTable, name: str, schema_source: str | None = None) -> np.ndarray:
    """(R,) float64 cells of a numeric column (NaN = missing); a one-line error at text or an infinite number."""
    out = np.empty(len(table), dtype=np.float64)
    for i, value in enumerate(table.cells[name]):
        number = as_number(value)
        if number is None:
            where = f"the schema of {schema_source}" if schema_source else "this file"
            raise SelfsupError(f"{table.where(i)}, column {name}: {value!r} is text, but the column is numeric in "
                               f"{where}")
        if math.isinf(number):
            raise SelfsupError(f"{table.where(i)}, column {name}: {value!r} is infinite; a table cell holds a "
                               f"finite number or a missing value (empty, ?, NaN)")
        out[i] = number
    return out


def encode(table: RawTable, schema: Schema, with_labels: bool = True, strip_label_suffix: str | None = None
           ) -> TableArrays:
    """One split as arrays (:class:`TableArrays`) with ``schema``: numbers scaled, categories coded (unseen ones
    to the unseen token and counted), labels indexed (a label not seen in training is an error)."""
    missing = [c.name for c in schema.columns if c.name not in table.cells]
    if missing:
        raise SelfsupError(f"{table.source}: no column(s) {missing} of the schema inferred from {schema.source}")
    num = [scale(c, numbers(table, c.name, schema.source)) for c in schema.numeric]
    numeric = np.stack(num, axis=1).astype(np.float32) if num else np.zeros((len(table), 0), np.float32)
    cats, unseen = [], {}
    for c in schema.categorical:
        index = {v: RESERVED + k for k, v in enumerate(c.categories)}
        codes = np.array([MISSING if v is None else index.get(v, UNSEEN) for v in map(as_category, table.cells[c.name])],
                         dtype=np.int64)
        if (count := int((codes == UNSEEN).sum())):
            unseen[c.name] = count
        cats.append(codes)
    categorical = np.stack(cats, axis=1) if cats else np.zeros((len(table), 0), np.int64)
    labels = None
    if with_labels and schema.label and schema.label in table.cells:
        index = {v: k for k, v in enumerate(schema.label_classes)}
        labels = np.empty(len(table), dtype=np.int64)
        for i, value in enumerate(table.cells[schema.label]):
            v = as_category(value)
            if v is not None and strip_label_suffix and v.endswith(strip_label_suffix):
                v = v[: -len(strip_label_suffix)]
            if v not in index:
                raise SelfsupError(f"{table.where(i)}, column {schema.label}: label {value!r} is not one of the "
                                   f"training labels {schema.label_classes}")
            labels[i] = index[v]
    return TableArrays(numeric, categorical, labels, table.source, unseen)


__all__ = ["RawTable", "TableArrays", "read_csv", "read_parquet", "read_dataset_folder", "read_table", "from_frame",
           "builtin_table", "concat_tables", "infer_kinds", "infer_schema", "encode", "numbers", "looks_like_header",
           "BUILTIN"]
