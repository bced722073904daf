"""Tables: the feature tokenizer (adapter), the schema (column kinds, categories, scalers), loading and SCARF views.

Batch format
------------
A batch of B rows is a dict of tensors:

================  ===============  ======================================================================
key               shape, dtype     what
================  ===============  ======================================================================
numeric           (B, Fn) float    the numeric columns, scaled by the schema; NaN = missing
categorical       (B, Fc) long     the categorical columns' codes: 0 missing, 1 unseen in training,
                                   2 + i the i-th training category
class_labels      (B,) long        the label column's class, when the data has one (evaluation)
example_seeds     (B,) long        per-example seeds (``selfsup.data.example_seed``) for the objective's draws
views             list of batches  two-view training (SCARF): the row, then its corrupted copy
================  ===============  ======================================================================

:class:`TabularAdapter` reads ``numeric`` and ``categorical`` and gives one token per column, numeric columns
first (a [CLS] token in front after ``add_prefix``).

Where things are
----------------
``schema.py`` (:class:`Schema`, kinds, categories, scalers), ``data.py`` (CSV / parquet / ``datasets`` folders /
scikit-learn tables, inference, encoding, the one-line errors), ``adapter.py`` (:class:`TabularAdapter`),
``batch.py`` (keys, seeded rows, collation, SCARF's corruption and views).
"""
from selfsup.modalities.tabular.adapter import TabularAdapter, TabularConfig
from selfsup.modalities.tabular.batch import (ADAPTER_KEYS, CATEGORICAL, CLASS_LABELS, NUMERIC, TableExamples,
                                              TableViewDataset, collate_rows, collate_views, corrupted_count,
                                              scarf_corrupt)
from selfsup.modalities.tabular.data import (BUILTIN, RawTable, TableArrays, builtin_table, concat_tables, encode,
                                             from_frame, infer_schema, read_csv, read_dataset_folder, read_parquet,
                                             read_table)
from selfsup.modalities.tabular.schema import MISSING, RESERVED, UNSEEN, Column, Schema

__all__ = ["TabularAdapter", "TabularConfig", "ADAPTER_KEYS", "NUMERIC", "CATEGORICAL", "CLASS_LABELS",
           "TableExamples", "TableViewDataset", "collate_rows", "collate_views", "corrupted_count", "scarf_corrupt",
           "RawTable", "TableArrays", "builtin_table", "concat_tables", "encode", "from_frame", "infer_schema",
           "read_csv", "read_dataset_folder", "read_parquet", "read_table", "BUILTIN", "Column", "Schema", "MISSING",
           "UNSEEN", "RESERVED"]
