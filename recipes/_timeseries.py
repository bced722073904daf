"""The series recipe's settings, data, parts and evaluation (``recipes/timeseries.py``)."""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.config import RecipeSettings
from selfsup.data import SeededExamples, make_train_loader, to_device
from selfsup.errors import SelfsupError
from selfsup.evaluate import linear_probe as shared_linear_probe
from selfsup.modalities.timeseries.adapter import PAST_VALUES, SeriesAdapter, SeriesConfig, num_patches
from selfsup.modalities.timeseries.augment import SeriesAugment, SeriesViewDataset, collate_series_views
from selfsup.modalities.timeseries.data import (SeriesSet, builtin_series, collate_series, load_ucr, read_series_csv,
                                                read_series_table, read_ts, window_set)
from selfsup.objectives import registry
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.hf_patchtst import compose_patchtst
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.two_view.build import from_encoder
from selfsup.plots import new_figure, save_png
from selfsup.types import NOISE, Encoder, Objective

PROBES = ("logistic", "logistic_cv", "svm_cv")
METHODS = ("patchtst", "data2vec", *registry.names("two_view"))
# PatchTST's self-supervised settings (Nie et al., 2023; the repository's patchtst_pretrain.py): patches of 12
# every 12 steps, 3 layers x 128, 16 heads, MLP 512, batch norm, dropout 0.2, 40 % of the patches masked
PRESETS = {"patchtst_etth1": dict(context_length=512, patch_length=12, stride=12, num_layers=3, hidden_size=128,
                                  heads=16, intermediate_size=512, dropout=0.2, mask_ratio=0.4,
                                  learning_rate=1e-4, per_device_train_batch_size=64)}


@dataclass
class SeriesRun(RecipeSettings):
    """The series recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names."""

    method: str = "patchtst"
    csv_layout: str = "rows"
    label_column: str | None = None
    value_column: str = "values"
    window_stride: int = 1
    train_rows: int | None = None
    context_length: int | None = None
    patch_length: int = 8
    stride: int = 8
    scaling: str = "std"
    positions: str = "sincos"
    hidden_size: int = 64
    num_layers: int = 3
    heads: int = 4
    intermediate_size: int | None = None
    norm: str = "batchnorm"
    dropout: float = 0.0
    mask_ratio: float = 0.4
    pooling: str = "mean"
    probe: str = "logistic"
    probe_layers: str = "last"
    temperature: float | None = None
    num_train_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SelfsupError(f"--method {self.method}: choose from {list(METHODS)}")
        if self.probe not in PROBES:
            raise SelfsupError(f"--probe {self.probe}: choose from {list(PROBES)}")
        if self.hidden_size % self.heads:
            raise SelfsupError(f"--hidden_size {self.hidden_size} is not a multiple of --heads {self.heads}")


def add_series_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("series")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS), help="a paper's settings")
    g.add_argument("--method", default="patchtst", choices=METHODS,
                   help=("patchtst / data2vec, or a two-view method on augmented views of each series (crop, time "
                         "warp, segment permutation, scaling, jitter: modalities/timeseries/augment.py). " +
                         registry.describe("masked", "two_view")).replace("%", "%%"))
    g.add_argument("--csv_layout", default="rows", choices=["rows", "columns"],
                   help="--train_file CSV: one series per row, or one column per channel (one long series)")
    g.add_argument("--label_column", default=None, help="--train_file CSV rows / parquet / datasets: the label's column")
    g.add_argument("--value_column", default="values", help="--train_file parquet / datasets folder: the series column")
    g.add_argument("--window_stride", type=int, default=1,
                   help="--csv_layout columns: training windows of --context_length steps every this many steps")
    g.add_argument("--train_rows", type=int, default=None,
                   help="--csv_layout columns: cut windows from the first this many steps only (the training period)")
    g.add_argument("--context_length", type=int, default=None, help="default: the longest series")
    g.add_argument("--patch_length", type=int, default=8)
    g.add_argument("--stride", type=int, default=8)
    g.add_argument("--scaling", default="std", choices=["std", "none"], help="per-instance standardisation (RevIN)")
    g.add_argument("--positions", default="sincos", choices=["sincos", "learned"])
    g.add_argument("--hidden_size", type=int, default=64)
    g.add_argument("--num_layers", type=int, default=3)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--intermediate_size", type=int, default=None, help="default: 4 x hidden_size")
    g.add_argument("--norm", default="batchnorm", choices=["batchnorm", "layernorm"],
                   help="PatchTST's batch norm (equal-length series) or LayerNorm (padded batches)")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--mask_ratio", type=float, default=0.4, help="share of the patches masked")
    g.add_argument("--pooling", default="mean", choices=["mean", "max"], help="over a channel's patches")
    g.add_argument("--probe", default="logistic", choices=list(PROBES),
                   help="the classifier on frozen embeddings: logistic regression at C = 1, or with C chosen by "
                        "cross-validation on the training split (logistic_cv), or TS2Vec's RBF SVM, C by "
                        "cross-validation (svm_cv)")
    g.add_argument("--probe_layers", default="last", choices=["last", "all"],
                   help="the probe reads the last layer, or the input and every layer's output pooled side by side")
    g.add_argument("--temperature", type=float, default=None, help="two-view methods: the loss temperature")
    g.add_argument("--num_train_epochs", type=int, default=None, help="epochs (then --max_steps is derived)")


# -- data ----------------------------------------------------------------------------------------------------------
def load_series(run: SeriesRun) -> tuple[SeriesSet, SeriesSet]:
    """(train, test): a UCR / UEA set (``--train_dir``), a ``.ts``, parquet, ``datasets`` folder or CSV file
    (``--train_file``; no test split; one long CSV series is cut into windows of ``--context_length``) or the
    generated default."""
    if run.train_dir:
        return load_ucr(run.train_dir, run.dataset_name)
    if run.train_file and Path(run.train_file[0]).suffix == ".ts":
        data = read_ts(run.train_file[0])
        return data, SeriesSet([], None, "", data.classes)
    if run.train_file and (Path(run.train_file[0]).suffix == ".parquet" or Path(run.train_file[0]).is_dir()):
        data = read_series_table(run.train_file[0], run.value_column, run.label_column)
        return data, SeriesSet([], None, "", data.classes)
    if run.train_file:
        data = read_series_csv(run.train_file[0], run.csv_layout, run.label_column)
        if run.csv_layout == "columns":
            if not run.context_length:
                raise SelfsupError("--csv_layout columns (one long series) needs --context_length, the window")
            data = window_set(data, run.context_length, run.window_stride, run.train_rows)
        return data, SeriesSet([], None, "", data.classes)
    return builtin_series(seed=run.seed)


def is_two_view(run: SeriesRun) -> bool:
    return registry.get(run.method).family == "two_view"


def series_loader(run: SeriesRun, data: SeriesSet, batch_size: int, accelerator, workers: int = 0):
    """Training batches of seeded series (the objective draws each example's masks from its seed), or for
    two-view methods two augmented views of each, drawn from the example's own generators."""
    if is_two_view(run):
        dataset, collate = SeriesViewDataset(data, SeriesAugment(), run.seed), collate_series_views
    else:
        dataset, collate = SeededExamples(data, run.seed), collate_series
    return make_train_loader(dataset, collate, batch_size, accelerator.num_processes, accelerator.process_index,
                             run.seed, workers, drop_last=False)


def steps_for(run: SeriesRun, num_examples: int, global_batch: int, max_steps: int) -> int:
    """``--num_train_epochs`` as optimizer steps, else ``--max_steps``."""
    return run.num_train_epochs * max(1, -(-num_examples // global_batch)) if run.num_train_epochs else max_steps


# -- parts ---------------------------------------------------------------------------------------------------------
def series_config(run: SeriesRun, data: SeriesSet) -> SeriesConfig:
    length = run.context_length or data.max_length
    if data.min_length < run.patch_length:
        raise SelfsupError(f"{data.source}: a series of {data.min_length} steps is shorter than one patch "
                           f"(--patch_length {run.patch_length})")
    return SeriesConfig(num_channels=data.num_channels, context_length=length, patch_length=run.patch_length,
                        stride=run.stride, scaling=run.scaling, positions=run.positions)


def build_objective(run: SeriesRun, series: SeriesConfig, max_steps: int) -> Objective:
    """PatchTST (the MAE class on series patches), data2vec (the unchanged class) or a two-view method (the
    unchanged classes, on the pooled channels side by side) on the shared Transformer: pre-LN, no final norm,
    PatchTST's batch norm or LayerNorm."""
    backbone = transformer_config(dict(hidden_size=run.hidden_size, num_layers=run.num_layers, num_heads=run.heads,
                                       intermediate_size=run.intermediate_size or 4 * run.hidden_size), "bert",
                                  norm=run.norm, norm_first=True, final_norm=False, layer_norm_eps=1e-5,
                                  dropout=run.dropout, attention_dropout=0.0)
    if run.method == "patchtst":
        return compose_patchtst(series, backbone, run.mask_ratio)
    if is_two_view(run):
        encoder = Encoder(SeriesAdapter(series, run.hidden_size), TransformerEncoder(backbone), pooling=run.pooling)
        overrides = {} if run.temperature is None else {"temperature": run.temperature}
        return from_encoder(run.method, encoder, "small", max_steps, **overrides)
    top = max(1, run.num_layers // 2)
    config = Data2VecObjectiveConfig(target_layer="block", average_top_k_layers=top, ema_decay=0.999,
                                     ema_end_decay=0.9999, ema_anneal_end_step=max(max_steps, 1),
                                     ema_transformer_only=False, ema_layers_only=False)
    return Data2VecObjective(SeriesAdapter(series, run.hidden_size), TransformerEncoder(backbone),
                             SpanMasker(run.mask_ratio / 2, 2, 1), config)


def readout(encoder: Encoder, run: SeriesRun) -> Encoder:
    """The encoder with the run's pooling over a channel's patches (channels side by side)."""
    return Encoder(encoder.adapter, encoder.backbone, pooling=run.pooling)


# -- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def series_embeddings(encoder: Encoder, data: SeriesSet, device, batch_size: int = 128, layers: str = "last"
                      ) -> np.ndarray:
    """(n, C·D) frozen pooled embeddings of every series, in order (eval mode); ``layers="all"``: (n, C·(L+1)·D),
    the input to the first layer and every layer's output, each pooled, side by side."""
    was = encoder.training
    encoder.eval()
    view = "last" if layers == "last" else "all_layers"
    out = [encoder.pooled_views(to_device(collate_series([data[j] for j in range(i, min(i + batch_size, len(data)))]),
                                          device), (view,))[view].float().cpu()
           for i in range(0, len(data), batch_size)]
    encoder.train(was)
    return torch.cat(out).numpy()


CS = tuple(10.0 ** k for k in range(-4, 5))     # the regularisation grid of the cross-validated probes


def probe_folds(labels: np.ndarray) -> int:
    """Folds of the stratified cross-validation: 5, or fewer when the rarest class has fewer training series."""
    return int(max(2, min(5, np.bincount(labels).min())))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 kind: str = "logistic") -> float:
    """Test accuracy of a classifier fitted on frozen embeddings of the training split: ``logistic`` (standardised,
    logistic regression at C = 1), ``logistic_cv`` (the same, C from :data:`CS` by stratified cross-validation on
    the training split: :func:`probe_folds`; both :func:`selfsup.evaluate.linear_probe`), ``svm_cv`` (TS2Vec's
    protocol, Yue et al., AAAI 2022: an RBF SVM on the raw embeddings, C from :data:`CS` by the same
    cross-validation). The test split is never seen before the score."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    if kind not in PROBES:
        raise SelfsupError(f"probe {kind!r}: choose from {list(PROBES)}")
    if kind != "svm_cv":
        return shared_linear_probe(train_x, train_y, test_x, test_y, c=1.0 if kind == "logistic" else CS,
                                   max_iter=5000, folds=probe_folds(train_y))
    folds = StratifiedKFold(probe_folds(train_y), shuffle=True, random_state=0)
    model = GridSearchCV(SVC(kernel="rbf", gamma="scale"), {"C": list(CS)}, cv=folds)
    return float(model.fit(train_x, train_y).score(test_x, test_y))


def nearest_neighbour(train: SeriesSet, test: SeriesSet) -> float | None:
    """1-NN with the Euclidean distance on the raw series (the UCR baseline); None for unequal lengths."""
    if len({s.shape for s in train.series + test.series}) != 1:
        return None
    a = torch.stack(train.series).flatten(1)
    b = torch.stack(test.series).flatten(1)
    nearest = torch.cdist(b.double(), a.double()).argmin(1)
    return float((train.labels[nearest] == test.labels).double().mean())


def probe_figures(encoders: dict[str, Encoder | list[Encoder]], train: SeriesSet, test: SeriesSet, device,
                  kind: str = "logistic", layers: str = "last") -> dict[str, float]:
    """``probe/{prefix}accuracy`` for each encoder (random inits: their mean; the same probe, ``kind`` and
    ``layers``, for every encoder: :func:`linear_probe`, :func:`series_embeddings`) and ``raw_1nn/accuracy``."""
    if train.labels is None or not len(test) or train.num_classes < 2:
        return {}
    out = {}
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    for prefix, group in encoders.items():
        runs = [linear_probe(series_embeddings(e, train, device, layers=layers), y_train,
                             series_embeddings(e, test, device, layers=layers), y_test, kind)
                for e in (group if isinstance(group, list) else [group])]
        out[f"probe/{prefix}accuracy"] = float(np.mean(runs))
    if (nn_acc := nearest_neighbour(train, test)) is not None:
        out["raw_1nn/accuracy"] = nn_acc
    return out


class SeriesPicture(NamedTuple):
    """path: the PNG written; values (n, L): the series drawn (first channel, own units); reconstruction (n, N, P):
    the model's patches in the same units; mask (n, N) bool; starts (N,): each patch's first time step."""

    path: str
    values: np.ndarray
    reconstruction: np.ndarray
    mask: np.ndarray
    starts: np.ndarray


def reconstruction_picture(objective: Objective, data: SeriesSet, path: str | Path, device, count: int = 4,
                           seed: int = 0, title: str = "PatchTST") -> SeriesPicture | None:
    """PatchTST at work on ``count`` series of ``data`` (of its most common length): each series' first channel, the
    masked patches shaded and the reconstruction drawn over them, in the series' own units (the adapter's scale
    undone); the mask drawn from ``seed``, so every picture of a run masks the same patches. None for a method
    with no reconstruction or an empty set."""
    if not hasattr(objective, "predict") or not isinstance(getattr(objective, "adapter", None), SeriesAdapter):
        return None
    adapter, c = objective.adapter, objective.adapter.config
    lengths = [len(s) for s in data.series if c.patch_length <= len(s) <= c.context_length]
    if not lengths:
        return None
    common = max(set(lengths), key=lengths.count)
    chosen = [i for i, s in enumerate(data.series) if len(s) == common][:count]
    batch = to_device(collate_series([data[i] for i in chosen]), device)
    rows, n = len(chosen) * data.num_channels, num_patches(common, c.patch_length, c.stride)
    batch[NOISE] = torch.rand(rows, n, generator=torch.Generator().manual_seed(seed)).to(device)
    was = objective.training
    objective.eval()
    with torch.no_grad():
        out = objective.predict(batch)
        structure = adapter.embed(batch).structure
    objective.train(was)
    recon = adapter.unscale(out["logits"].float(), structure)[:, 0].cpu().numpy()          # (n, N, P)
    mask = out["mask"].reshape(len(chosen), data.num_channels, n)[:, 0].bool().cpu().numpy()
    values = batch[PAST_VALUES][:, :, 0].float().cpu().numpy()
    starts = common - (c.patch_length + c.stride * (n - 1)) + c.stride * np.arange(n)
    fig = new_figure(9, 1.8 * len(chosen))
    for row in range(len(chosen)):
        ax = fig.add_subplot(len(chosen), 1, row + 1)
        ax.plot(values[row], color="0.2", linewidth=1, label="series")
        for j in np.flatnonzero(mask[row]):
            t = starts[j] + np.arange(c.patch_length)
            ax.axvspan(t[0], t[-1], color="tab:orange", alpha=0.15, linewidth=0)
            ax.plot(t, recon[row, j], color="tab:orange", linewidth=1.2,
                    label="reconstruction (masked patches)" if j == np.flatnonzero(mask[row])[0] else None)
        ax.set_ylabel(f"series {chosen[row]}")
        if row == 0:
            ax.legend(loc="upper right", fontsize=8)
            ax.set_title(f"{title}: masked patches (shaded) and their reconstruction, {data.source}")
    return SeriesPicture(save_png(fig, path), values, recon, mask, starts)


__all__ = ["SeriesPicture", "reconstruction_picture", "SeriesRun", "METHODS", "is_two_view", "PRESETS", "add_series_args", "load_series", "series_loader", "steps_for",
           "series_config", "build_objective", "readout", "series_embeddings", "linear_probe", "nearest_neighbour",
           "PROBES", "CS", "probe_folds",
           "probe_figures"]
