"""PatchTST's self-supervised ETTh1 figure: pretrain with the paper's settings, then a linear head on the frozen
encoder forecasts horizons 24 and 48 (MSE on the standardised series), beside the same encoder at random init and a
linear model on the raw context.

1. ``recipes/timeseries.py --preset patchtst_etth1`` pretrains on windows of 512 steps cut from ETTh1's training
   period (rows 0-8,639; context 512, patches of 12 every 12, 3 layers x 128, 16 heads, MLP 512, batch norm,
   dropout 0.2, 40 % of the patches masked) and exports ``PatchTSTModel``;
2. the export, loaded with transformers alone, embeds every window (its own per-instance scaling, as PatchTST's
   RevIN); a ridge regression (the penalty chosen on the validation period) maps each channel's flattened patch
   embeddings (42 x 128) to its scaled future, shared by the channels as PatchTST's linear probe; predictions are
   scaled back and scored against the standardised series (training statistics) on the test period (first future
   steps 11,520-14,351: the windows of the longest horizon for both);
3. beside it: the same encoder at random initialisation, a ridge regression on the scaled raw context, and the
   last observed value held over the horizon.

    python benchmarks/etth1_forecast.py --steps 300
    python benchmarks/etth1_forecast.py --quick                 # a smoke run (tiny budget), not a result

Published (Nie et al., 2023, self-supervised linear probing, context 512): 0.322 (24), 0.354 (48). One JSON line per
horizon, then the minutes.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from selfsup.benchmarking import machine
from selfsup.modalities.timeseries.data import read_series_csv, windows
from selfsup.recipes import timeseries
from selfsup.recipes._timeseries import PRESETS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "timeseries" / "ETT" / "ETTh1.csv"
PUBLISHED = {24: 0.322, 48: 0.354, 168: 0.419}
BORDERS = (8640, 11520, 14400)   # ends of the train / validation / test periods (12 / 4 / 4 months)


@torch.no_grad()
def embed(model, contexts: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (W·C, N·D), loc (W, 1, C), scale (W, 1, C)) of a PatchTSTModel on windows (W, L, C)."""
    feats, locs, scales = [], [], []
    for i in range(0, len(contexts), batch):
        out = model(past_values=contexts[i:i + batch])
        feats.append(out.last_hidden_state.flatten(2).flatten(0, 1))
        locs.append(out.loc), scales.append(out.scale)
    return torch.cat(feats), torch.cat(locs), torch.cat(scales)


def scaled_targets(futures: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(W, H, C) futures -> (W·C, H) in each window's own scaling."""
    return ((futures - loc) / scale).transpose(1, 2).flatten(0, 1)


def unscale(pred: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(W·C, H) scaled predictions -> (W, H, C)."""
    w, c = loc.shape[0], loc.shape[2]
    return pred.view(w, c, -1).transpose(1, 2) * scale + loc


def ridge(x: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    """Weights (F + 1, H) of a ridge regression with an unpenalised bias, in float64."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
    gram = x.T @ x
    eye = torch.eye(len(gram), dtype=torch.float64)
    eye[-1, -1] = 0
    return torch.linalg.solve(gram + penalty * len(x) * eye, x.T @ y.double())


def apply(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weights[:-1] + weights[-1]).float()


def probe(features: dict, futures: dict, horizon: int) -> tuple[float, float]:
    """(test MSE, penalty): ridge fitted on train, penalty chosen on validation, scored on test."""
    split = {k: (features[k][0], *features[k][1:], futures[k][:, :horizon]) for k in features}
    x_tr, loc_tr, sc_tr, f_tr = split["train"]
    y_tr = scaled_targets(f_tr, loc_tr, sc_tr)
    best = None
    for penalty in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        weights = ridge(x_tr, y_tr, penalty)
        x_va, loc_va, sc_va, f_va = split["val"]
        mse = float(((unscale(apply(weights, x_va), loc_va, sc_va) - f_va) ** 2).mean())
        if best is None or mse < best[0]:
            best = (mse, penalty, weights)
    x_te, loc_te, sc_te, f_te = split["test"]
    return float(((unscale(apply(best[2], x_te), loc_te, sc_te) - f_te) ** 2).mean()), best[1]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--horizons", type=int, nargs="+", default=[24, 48])
    p.add_argument("--probe_stride", type=int, default=4, help="every k-th training / validation window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output_dir", default=None)
    args = p.parse_args(argv)
    from transformers import PatchTSTModel

    from selfsup.objectives.masked.hf_patchtst import to_patchtst
    from selfsup.recipes._timeseries import SeriesRun, build_objective, series_config
    from selfsup.modalities.timeseries.data import SeriesSet

    t0 = time.perf_counter()
    context = 96 if args.quick else PRESETS["patchtst_etth1"]["context_length"]
    out = Path(args.output_dir or tempfile.mkdtemp())
    flags = ["--preset", "patchtst_etth1", "--train_file", str(DATA), "--csv_layout", "columns", "--train_rows",
             str(BORDERS[0]), "--seed", str(args.seed), "--output_dir", str(out / "pretrain"), "--report_to", "none",
             "--max_steps", str(2 if args.quick else args.steps)]
    if args.quick:
        flags += ["--context_length", "96", "--window_stride", "24", "--hidden_size", "16", "--heads", "2",
                  "--num_layers", "1", "--intermediate_size", "32"]
    metrics = timeseries.main(flags)
    pretrained = PatchTSTModel.from_pretrained(out / "pretrain" / "export").eval()
    preset = {**PRESETS["patchtst_etth1"], **({"context_length": 96, "hidden_size": 16, "heads": 2, "num_layers": 1,
                                                "intermediate_size": 32} if args.quick else {})}
    keys = set(SeriesRun.__dataclass_fields__)
    run = SeriesRun(**{k: v for k, v in preset.items() if k in keys}, seed=args.seed)
    raw = read_series_csv(DATA, "columns").series[0]
    torch.manual_seed(args.seed + 1)
    fresh = to_patchtst(build_objective(run, series_config(run, SeriesSet([raw[:context]])), 1),
                        encoder_only=True).eval()
    mean, std = raw[:BORDERS[0]].mean(0), raw[:BORDERS[0]].std(0)
    z = (raw - mean) / std
    longest = max(args.horizons)
    stride = 24 if args.quick else args.probe_stride
    spans = {"train": (0, BORDERS[0], stride), "val": (BORDERS[0], BORDERS[1], stride),
             "test": (BORDERS[1], BORDERS[2], 24 if args.quick else 1)}
    cut = {k: windows(z, context, longest, a, b, s) for k, (a, b, s) in spans.items()}
    futures = {k: v[1] for k, v in cut.items()}
    encoders = {"pretrained": pretrained, "random_init": fresh}
    feats = {name: {k: embed(m, cut[k][0]) for k in cut} for name, m in encoders.items()}
    raw_feats = {}
    for k, (ctx, _) in cut.items():                    # the raw context, in each window's own scaling
        loc, scale = ctx.mean(1, keepdim=True), torch.sqrt(ctx.var(1, keepdim=True, unbiased=False) + 1e-5)
        raw_feats[k] = (((ctx - loc) / scale).transpose(1, 2).flatten(0, 1), loc, scale)
    rows = []
    for h in args.horizons:
        row = {"horizon": h, "published": PUBLISHED.get(h), "pretrain_steps": metrics["steps"]}
        for name in encoders:
            row[name], row[f"{name}_penalty"] = probe(feats[name], futures, h)
        row["raw_linear"], row["raw_linear_penalty"] = probe(raw_feats, futures, h)
        last = cut["test"][0][:, -1:, :]                # the last observed value, held over the horizon
        row["last_value"] = float(((last - futures["test"][:, :h]) ** 2).mean())
        row.update(machine=machine(), threads=torch.get_num_threads(),
                   test_windows=len(futures["test"]), minutes=(time.perf_counter() - t0) / 60)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
