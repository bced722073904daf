"""Helpers of ``recipes/tabular.py``, each one step of its ``main``, on typed settings (:class:`TabularRun`): the flags,
the tables (schema inferred from the training split, every split encoded with it), the parts (feature tokenizer +
the shared Transformer, FT-Transformer style) and the objective of any registered method on them, the loader, and
the evaluation (a logistic regression on frozen row embeddings beside random init and the raw features). Nothing here
calls back into the recipe."""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.backbones.mlp import MLPBackbone, MLPConfig
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.config import RecipeSettings
from selfsup.data import make_train_loader, to_device
from selfsup.errors import SelfsupError
from selfsup.modalities.tabular import (BUILTIN, Schema, TableArrays, TableExamples, TableViewDataset, TabularAdapter,
                                        TabularConfig, builtin_table, collate_rows, collate_views, encode,
                                        infer_schema, read_table)
from selfsup.modalities.tabular.data import RawTable
from selfsup.objectives import registry
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.mae import compose_masked_autoencoder
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.two_view.build import from_encoder
from selfsup.types import Encoder, Objective

METHODS = ("masked_features", "scarf", "data2vec", *[m for m in registry.names("two_view") if m not in ("scarf", "graphcl")])
# The column Transformer's sizes: tiny (tests, seconds), small (a CPU, minutes), base (FT-Transformer's default
# width and depth, Gorishniy et al. 2021, table 13: d = 192, 3 layers, 8 heads; a GELU MLP of 4/3 d, not ReGLU)
SIZES = {"tiny": dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
         "small": dict(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128),
         "base": dict(hidden_size=192, num_layers=3, num_heads=8, intermediate_size=256)}
# ``--backbone mlp``: the column tokens (token_size wide) flattened into an MLP; small is SCARF's encoder (Bahri et
# al., ICLR 2022, sec. 4: four ReLU layers of 256)
MLP_SIZES = {"tiny": dict(token_size=8, hidden_size=32, num_layers=2),
             "small": dict(token_size=16, hidden_size=256, num_layers=4),
             "base": dict(token_size=32, hidden_size=512, num_layers=4)}
BACKBONES = ("transformer", "mlp")


@dataclass
class TabularRun(RecipeSettings):
    """The tabular recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names."""

    method: str = "masked_features"
    backbone: str = "transformer"
    validation_file: list[str] | None = None
    csv_header: str = "auto"
    column_names: list[str] | None = None
    label_column: str | None = None
    numeric_columns: list[str] | None = None
    categorical_columns: list[str] | None = None
    drop_columns: list[str] | None = None
    scaling: str = "quantile"
    strip_label_suffix: str | None = None
    validation_split_percentage: float = 20.0
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    token_size: int | None = None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    mask_ratio: float = 0.3
    mask_mode: str = "replace"
    ce_weight: float = 1.0
    mse_weight: float = 1.0
    corruption_rate: float = 0.6
    temperature: float | None = None
    num_train_epochs: int | None = None
    probe_max_train: int | None = 20000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SelfsupError(f"--method {self.method}: choose from {list(METHODS)}")
        if self.backbone not in BACKBONES:
            raise SelfsupError(f"--backbone {self.backbone}: choose from {list(BACKBONES)}")
        if self.backbone == "mlp" and self.method in ("masked_features", "data2vec"):
            raise SelfsupError(f"--backbone mlp gives one output per row; --method {self.method} needs one per column "
                               f"(use the Transformer, or a two-view method such as scarf)")
        if self.backbone == "mlp" and (self.num_heads or self.attention_dropout):
            raise SelfsupError("--num_heads and --attention_dropout are the Transformer's; --backbone mlp has no "
                               "attention (its flags: --token_size, --hidden_size, --num_layers, --dropout)")
        if self.temperature is not None and self.method in ("masked_features", "data2vec"):
            raise SelfsupError(f"--temperature is the two-view methods' loss temperature; --method {self.method} "
                               "has none")
        if self.backbone != "mlp" and self.token_size:
            raise SelfsupError("--token_size is --backbone mlp's (the Transformer's tokens are --hidden_size wide)")
        if self.dataset_name and self.train_file:
            raise SelfsupError("give --train_file or --dataset_name, not both")
        if not 0.0 < self.validation_split_percentage < 100.0:
            raise SelfsupError("--validation_split_percentage must be in (0, 100)")


def add_tabular_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("tables")
    g.add_argument("--method", default="masked_features", choices=METHODS,
                   help=registry.describe("masked", "two_view").replace("%", "%%"))
    g.add_argument("--backbone", default="transformer", choices=BACKBONES,
                   help="transformer: over the column tokens (FT-Transformer); mlp: the column tokens flattened into "
                        "an MLP (SCARF's encoder; two-view methods only)")
    g.add_argument("--csv_header", default="auto", choices=["auto", "yes", "no"],
                   help="auto: a first row of text over columns of numbers is a header")
    g.add_argument("--column_names", nargs="+", default=None, help="names of a headerless CSV's columns")
    g.add_argument("--label_column", default=None,
                   help="the column the evaluation predicts (not a feature); built-in tables: target")
    g.add_argument("--numeric_columns", nargs="+", default=None, help="columns read as numbers whatever they hold")
    g.add_argument("--categorical_columns", nargs="+", default=None, help="columns read as categories")
    g.add_argument("--drop_columns", nargs="+", default=None, help="columns left out")
    g.add_argument("--scaling", default="quantile", choices=["quantile", "standard", "none"],
                   help="numeric scaling fitted on the training split (quantile: to a standard normal)")
    g.add_argument("--strip_label_suffix", default=None,
                   help="cut this from the end of every label (UCI Adult's test labels end with '.')")
    g.add_argument("--hidden_size", type=int, default=None, help="override the --model_size width")
    g.add_argument("--num_layers", type=int, default=None, help="override the --model_size depth")
    g.add_argument("--token_size", type=int, default=None, help="--backbone mlp: override the column tokens' width")
    g.add_argument("--num_heads", type=int, default=None, help="override the --model_size heads")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--attention_dropout", type=float, default=0.0)
    g.add_argument("--mask_ratio", type=float, default=0.3, help="masked_features / data2vec: share of columns masked")
    g.add_argument("--mask_mode", default="replace", choices=["replace", "drop"],
                   help="masked_features: masked columns become a mask token (replace) or leave the encoder (drop)")
    g.add_argument("--ce_weight", type=float, default=1.0, help="masked_features: weight of masked categories' loss")
    g.add_argument("--mse_weight", type=float, default=1.0, help="masked_features: weight of masked numbers' loss")
    g.add_argument("--corruption_rate", type=float, default=0.6, help="scarf: share of a row's features replaced")
    g.add_argument("--temperature", type=float, default=None, help="two-view methods: the loss temperature")
    g.add_argument("--num_train_epochs", type=int, default=None, help="epochs (then --max_steps is derived)")
    g.add_argument("--probe_max_train", type=int, default=20000,
                   help="at most this many training rows (the first) fit the logistic-regression probe")


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass
class TabularData:
    """The schema, the encoded training and test splits (test None without labels), where they came from, and a
    few training rows as read (cells by column name: the export's check)."""

    schema: Schema
    train: TableArrays
    test: TableArrays | None
    source: str
    sample: list[dict]


def split_rows(n: int, percent: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of n rows into (train, held-out) index arrays, ``percent`` held out."""
    order = np.random.default_rng(seed).permutation(n)
    cut = max(1, int(round(n * percent / 100.0)))
    return np.sort(order[cut:]), np.sort(order[:cut])


def read_tables(run: TabularRun) -> tuple[list[RawTable], list[RawTable], str | None]:
    """(training tables, validation tables, label column) of the data flags; the built-in table by default."""
    if run.train_file:
        train = [read_table(f, run.csv_header, run.column_names) for f in run.train_file]
        valid = [read_table(f, run.csv_header, run.column_names) for f in run.validation_file or ()]
        return train, valid, run.label_column
    name = run.dataset_name or "breast_cancer"
    if name in BUILTIN:
        return [builtin_table(name)], [], run.label_column or "target"
    path = Path(name)
    if not path.is_dir():
        raise SelfsupError(f"--dataset_name {name}: neither a built-in table ({', '.join(sorted(BUILTIN))}) nor a "
                           f"datasets folder (no network: Hub names are not fetched)")
    from selfsup.modalities.tabular.data import read_dataset_folder

    train = [read_dataset_folder(path, "train")]
    try:
        valid = [read_dataset_folder(path, "test")]
    except SelfsupError:
        valid = []
    return train, valid, run.label_column


def load_tables(run: TabularRun) -> TabularData:
    """Read, infer the schema on the training tables, encode every split; without a validation file a seeded
    ``--validation_split_percentage`` of the training rows is held out (before the schema is fitted)."""
    train_tables, valid_tables, label = read_tables(run)
    source = train_tables[0].source if len(train_tables) == 1 else f"{len(train_tables)} files"
    kinds = dict(label=label, numeric=run.numeric_columns or (), categorical=run.categorical_columns or (),
                 drop=run.drop_columns or (), scaling=run.scaling)
    if valid_tables or not label:
        schema = infer_schema(train_tables, **kinds)
        train = encode_all(train_tables, schema, run)
        test = encode_all(valid_tables, schema, run) if valid_tables and label else None
    else:
        from selfsup.modalities.tabular import concat_tables

        whole = concat_tables(train_tables)
        keep, held = split_rows(len(whole), run.validation_split_percentage, run.seed)
        schema = infer_schema([whole.take(keep)], **kinds)
        train, test = (encode(whole.take(idx), schema, True, run.strip_label_suffix) for idx in (keep, held))
    if run.max_train_samples:
        train = train.subset(np.arange(min(run.max_train_samples, len(train))))
    first = train_tables[0]
    sample = [{n: first.cells[n][i] for n in first.names} for i in range(min(8, len(first)))]
    return TabularData(schema, train, test, source, sample)


def encode_all(tables: list[RawTable], schema: Schema, run: TabularRun) -> TableArrays:
    parts = [encode(t, schema, True, run.strip_label_suffix) for t in tables]
    if len(parts) == 1:
        return parts[0]
    unseen: dict[str, int] = {}
    for p in parts:
        for k, v in p.unseen.items():
            unseen[k] = unseen.get(k, 0) + v
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    return TableArrays(np.concatenate([p.numeric for p in parts]), np.concatenate([p.categorical for p in parts]),
                       labels, " + ".join(p.source for p in parts), unseen)


def describe(data: TabularData) -> str:
    s = data.schema
    test = f", {len(data.test)} test rows" if data.test is not None else ""
    unseen = sum(data.test.unseen.values()) if data.test is not None else 0
    note = f" ({unseen} test cells of categories unseen in training: the unseen token)" if unseen else ""
    return (f"table: {len(data.train)} training rows{test} from {data.source}; {len(s.numeric)} numeric and "
            f"{len(s.categorical)} categorical columns, label {s.label!r} with {len(s.label_classes)} classes{note}")


def steps_for(run: TabularRun, num_rows: int, global_batch: int, max_steps: int) -> int:
    """``--num_train_epochs`` as optimizer steps (full global batches), else ``--max_steps``."""
    if not run.num_train_epochs:
        return max_steps
    return run.num_train_epochs * max(1, num_rows // global_batch)


# -- parts and objective ---------------------------------------------------------------------------------------------
def backbone_config(run: TabularRun, layers: int | None = None):
    size = {**SIZES[run.model_size]}
    for key, value in (("hidden_size", run.hidden_size), ("num_layers", run.num_layers), ("num_heads", run.num_heads)):
        if value:
            size[key] = value
    if run.hidden_size and not run.num_heads:
        size["num_heads"] = next(h for h in (size["num_heads"], 4, 2, 1) if run.hidden_size % h == 0)
    if run.hidden_size:
        size["intermediate_size"] = 2 * run.hidden_size
    if layers:
        size["num_layers"] = layers
    return transformer_config(size, "vit", dropout=run.dropout, attention_dropout=run.attention_dropout)


def mlp_config(run: TabularRun, schema: Schema) -> MLPConfig:
    size = {**MLP_SIZES[run.model_size]}
    for key in ("token_size", "hidden_size", "num_layers"):
        if getattr(run, key):
            size[key] = getattr(run, key)
    return MLPConfig(num_tokens=len(schema.numeric) + len(schema.vocab_sizes), dropout=run.dropout, **size)


def make_adapter(run: TabularRun, schema: Schema) -> TabularAdapter:
    """The feature tokenizer: as wide as the Transformer, with its [CLS] token; for the MLP, the MLP's token size
    and no [CLS] (every token is read at once)."""
    if run.backbone == "mlp":
        return TabularAdapter(TabularConfig(len(schema.numeric), schema.vocab_sizes, cls_token=False),
                              mlp_config(run, schema).token_size)
    return TabularAdapter(TabularConfig(len(schema.numeric), schema.vocab_sizes), backbone_config(run).hidden_size)


def make_backbone(run: TabularRun, schema: Schema) -> TransformerEncoder | MLPBackbone:
    return MLPBackbone(mlp_config(run, schema)) if run.backbone == "mlp" else TransformerEncoder(backbone_config(run))


def build_objective(run: TabularRun, schema: Schema, max_steps: int) -> Objective:
    """The registered method ``run.method`` on the table's parts: the MAE class with loss 'mixed' (masked feature
    modelling), the data2vec class, or a two-view class (SCARF = SimCLR on a row and its corruption) on the
    encoder's [CLS] output (the MLP's one output token)."""
    adapter = make_adapter(run, schema)
    backbone = make_backbone(run, schema)
    if run.method in ("masked_features", "data2vec") and int(run.mask_ratio * adapter.config.num_columns) == 0:
        raise SelfsupError(f"--mask_ratio {run.mask_ratio} masks no column of a table of "
                           f"{adapter.config.num_columns}; raise it")
    if run.method == "masked_features":
        decoder = TransformerEncoder(backbone_config(run, layers=1))
        return compose_masked_autoencoder(adapter, backbone, decoder, mask_ratio=run.mask_ratio, norm_pix_loss=False,
                                          target="values", mask_mode=run.mask_mode, loss="mixed",
                                          ce_weight=run.ce_weight, mse_weight=run.mse_weight)
    if run.method == "data2vec":
        top = max(1, backbone.config.num_layers // 2)
        config = Data2VecObjectiveConfig(target_layer="block", average_top_k_layers=top, ema_decay=0.99,
                                         ema_end_decay=0.999, ema_anneal_end_step=max(max_steps, 1),
                                         ema_transformer_only=False, ema_layers_only=False)
        return Data2VecObjective(adapter, backbone, SpanMasker(run.mask_ratio, 1, 1), config)
    overrides = {} if run.temperature is None else {"temperature": run.temperature}
    return from_encoder(run.method, Encoder(adapter, backbone, "first"), run.model_size, max_steps, **overrides)


def pooled_encoder(encoder: Encoder) -> Encoder:
    """The objective's encoder with the objective's pooling (what the evaluation scores and the export pools): the
    [CLS] token's output for the two-view methods, which train it; the mean over every token for the masked ones,
    whose loss reads the column tokens and leaves the [CLS] output untrained (as MAE's)."""
    return Encoder(encoder.adapter, encoder.backbone, encoder.pooling if encoder.pooling == "mean" else "first")


def is_two_view(run: TabularRun) -> bool:
    return registry.get(run.method).family == "two_view"


def table_loader(run: TabularRun, data: TableArrays, batch_size: int, accelerator, workers: int = 0):
    """Training batches: seeded rows (masked methods) or a row and its SCARF corruption (two-view methods; the
    marginals are the training split's)."""
    if is_two_view(run):
        dataset, collate = TableViewDataset(data.numeric, data.categorical, data.labels, run.seed,
                                            run.corruption_rate), collate_views
    else:
        dataset, collate = TableExamples(data.numeric, data.categorical, data.labels, run.seed), collate_rows
    return make_train_loader(dataset, collate, batch_size, accelerator.num_processes, accelerator.process_index,
                             run.seed, workers)


# -- evaluation ----------------------------------------------------------------------------------------------------
def batches(arrays: TableArrays, batch_size: int = 1024):
    for i in range(0, len(arrays), batch_size):
        j = min(i + batch_size, len(arrays))
        yield {"numeric": torch.from_numpy(arrays.numeric[i:j]), "categorical": torch.from_numpy(arrays.categorical[i:j])}


@torch.no_grad()
def embeddings(encoder: Encoder, arrays: TableArrays, device) -> np.ndarray:
    """(R, D) frozen pooled embeddings of every row, in order (eval mode)."""
    was = encoder.training
    encoder.eval()
    out = [encoder.pooled(to_device(b, device)).float().cpu() for b in batches(arrays)]
    encoder.train(was)
    return torch.cat(out).numpy()


def one_hot_features(schema: Schema, arrays: TableArrays) -> np.ndarray:
    """The raw reference features: the scaled numbers (missing -> 0, plus a missing flag) and one-hot categories."""
    num = np.nan_to_num(arrays.numeric, nan=0.0)
    flags = np.isnan(arrays.numeric).astype(np.float32)
    hots = [np.eye(v, dtype=np.float32)[arrays.categorical[:, j]] for j, v in enumerate(schema.vocab_sizes)]
    return np.concatenate([num, flags, *hots], axis=1)


def probe_figures(encoders: dict[str, Encoder | list[Encoder]], data: TabularData, run: TabularRun, device
                  ) -> dict[str, float]:
    """Logistic regression on frozen row embeddings (standardised), fitted on the training rows with labels and
    scored on the test rows: ``probe/{prefix}accuracy`` per encoder (random inits: the mean over seeds), and
    ``probe/raw_features/accuracy`` on the one-hot raw features."""
    from selfsup.evaluate import linear_probe

    if data.test is None or data.train.labels is None or len(data.schema.label_classes) < 2:
        return {}
    train = data.train.subset(np.arange(min(len(data.train), run.probe_max_train or len(data.train))))
    out = {}
    for prefix, group in encoders.items():
        scores = [linear_probe(embeddings(e, train, device), train.labels, embeddings(e, data.test, device),
                               data.test.labels) for e in (group if isinstance(group, list) else [group])]
        out[f"probe/{prefix}accuracy"] = float(np.mean(scores))
    out["probe/raw_features/accuracy"] = linear_probe(one_hot_features(data.schema, train), train.labels,
                                                      one_hot_features(data.schema, data.test), data.test.labels)
    return out


__all__ = ["TabularRun", "TabularData", "METHODS", "SIZES", "add_tabular_args", "load_tables", "describe", "steps_for",
           "build_objective", "make_adapter", "make_backbone", "backbone_config", "mlp_config", "MLP_SIZES",
           "BACKBONES", "pooled_encoder", "table_loader", "embeddings",
           "one_hot_features", "probe_figures", "is_two_view", "split_rows", "batches"]
