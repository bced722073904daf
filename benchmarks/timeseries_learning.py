"""Does pretraining help on small labelled series sets? PatchTST (or another series method) on UCR GunPoint, Coffee
and PigCVP through ``recipes/timeseries.py``: a linear probe on the frozen encoder beside a randomly initialised
one of the same shape and beside 1-NN Euclidean on the raw series (the UCR baseline), over seeds.

Each set pretrains on its training split (labels unused), then the probe is fitted on the training split and
scored on the test split.

    python benchmarks/timeseries_learning.py                               # the three sets, seeds 0-2
    python benchmarks/timeseries_learning.py --sets GunPoint --seeds 0 --method data2vec
    python benchmarks/timeseries_learning.py --sets Coffee --seeds 0 1 2 3 4 --probe svm_cv --probe_layers all
    python benchmarks/timeseries_learning.py --quick                       # 2 steps each: a smoke run
    python benchmarks/timeseries_learning.py --sets Coffee --seeds 0 1 2 3 4 --scaling none   # recipe flags pass on

Any flag this script does not know goes on to ``recipes/timeseries.py`` after its own (``--scaling none``,
``--learning_rate 1e-4``, ``--hidden_size 128``, ...), the same for every set and seed; the rows record them.

Writes one JSON line per set (mean and std over seeds of the pretrained and random-init probes, raw 1-NN,
minutes) and, with ``--table FILE``, a markdown table.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.benchmarking import machine
from selfsup.recipes import timeseries
from selfsup.recipes._timeseries import METHODS, PROBES

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "timeseries" / "UCR"
# patches per set: about 16-32 patches over the series
PATCHES = {"GunPoint": (16, 8), "Coffee": (16, 16), "PigCVP": (64, 64)}
# recipe flags each run is given from this benchmark's own (a passed-on copy would override them unrecorded)
OWN_FLAGS = {"--train_dir", "--method", "--seed", "--output_dir", "--max_steps", "--random_init_seeds", "--pooling",
             "--norm", "--probe", "--probe_layers", "--dropout", "--report_to"}


def run(name: str, method: str, seed: int, steps: int, out: Path, pooling: str = "mean", norm: str = "batchnorm",
        probe: str = "logistic", probe_layers: str = "last", extra: tuple[str, ...] = ()) -> dict:
    patch, stride = PATCHES[name]
    argv = ["--train_dir", str(DATA / name), "--method", method, "--seed", str(seed), "--output_dir", str(out),
            "--report_to", "none", "--max_steps", str(steps), "--patch_length", str(patch), "--stride", str(stride),
            "--hidden_size", "64", "--num_layers", "3", "--heads", "4", "--per_device_train_batch_size", "32",
            "--learning_rate", "1e-3", "--random_init_seeds", "1", "--pooling", pooling, "--norm", norm,
            "--probe", probe, "--probe_layers", probe_layers, *extra]
    t0 = time.perf_counter()
    metrics = timeseries.main(argv)
    return {"ours": 100 * metrics["probe/accuracy"], "random_init": 100 * metrics["probe/random_init_accuracy"],
            "raw_1nn": 100 * metrics["raw_1nn/accuracy"], "minutes": (time.perf_counter() - t0) / 60}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", nargs="+", default=list(PATCHES), choices=list(PATCHES))
    p.add_argument("--method", default="patchtst", choices=METHODS, help="any of the series recipe's methods")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pooling", default="mean", choices=["mean", "max"], help="over a channel's patches")
    p.add_argument("--norm", default="batchnorm", choices=["batchnorm", "layernorm"], help="the Transformer's norms")
    p.add_argument("--probe", default="logistic", choices=PROBES,
                   help="logistic regression at C = 1, with C by cross-validation on the training split, or an RBF SVM "
                        "with C by cross-validation (TS2Vec's protocol); the same for the pretrained and random encoders")
    p.add_argument("--probe_layers", default="last", choices=["last", "all"],
                   help="the last layer, or the input and every layer's output pooled side by side")
    p.add_argument("--dropout", type=float, default=0.0, help="the Transformer's dropout in pretraining")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--table", default=None)
    args, recipe_flags = p.parse_known_args(argv)
    if clash := sorted({f.split("=")[0] for f in recipe_flags} & OWN_FLAGS):
        p.error(f"{', '.join(clash)}: set by this benchmark for every run (its rows would not say what ran); "
                f"use its own flags (--steps, --seeds, --sets, ...)")
    rows = []
    for name in args.sets:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                extra = ("--dropout", str(args.dropout), *recipe_flags)
                runs.append(run(name, args.method, seed, 2 if args.quick else args.steps, Path(tmp), args.pooling,
                                args.norm, args.probe, args.probe_layers, extra))
        ours, rand = np.array([r["ours"] for r in runs]), np.array([r["random_init"] for r in runs])
        row = {"set": name, "method": args.method, "pooling": args.pooling, "norm": args.norm, "probe": args.probe,
               "probe_layers": args.probe_layers, "dropout": args.dropout, "recipe_flags": recipe_flags,
               "seeds": args.seeds,
               "steps": 2 if args.quick else args.steps,
               "ours_mean": float(ours.mean()), "ours_std": float(ours.std()), "random_init_mean": float(rand.mean()),
               "random_init_std": float(rand.std()),
               "per_seed_ours": [round(float(x), 1) for x in ours], "per_seed_random_init": [round(float(x), 1) for x in rand],
               "raw_1nn": runs[0]["raw_1nn"],
               "minutes": float(sum(r["minutes"] for r in runs)), "machine": machine(),
               "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.table:
        lines = [f"Machine: {machine()}, {torch.get_num_threads()} thread(s).", "",
                 "| set | method | steps | probe, pretrained | probe, random init | raw 1-NN | minutes |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['set']} | {r['method']} | {r['steps']} | {r['ours_mean']:.1f} ± {r['ours_std']:.1f} | "
                  f"{r['random_init_mean']:.1f} ± {r['random_init_std']:.1f} | {r['raw_1nn']:.1f} | "
                  f"{r['minutes']:.1f} |" for r in rows]
        with open(args.table, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
