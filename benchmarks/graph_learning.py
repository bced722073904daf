"""GraphMAE and GraphCL on the published benchmarks, through ``recipes/graph.py`` with the papers' settings.

Each preset (``recipes/_graph.py`` ``PRESETS``: GraphMAE's ``configs.yml`` for MUTAG, PROTEINS and Cora, GraphCL's
unsupervised_TU settings for MUTAG and PROTEINS) is pretrained once per seed and scored with the published protocol:
graph classification by an SVM with a grid over C and 10-fold stratified cross-validation on frozen pooled
embeddings (GraphMAE's ``main_graph.py``); node classification by a logistic regression on frozen node embeddings
with Cora's public split (``main_transductive.py``). Beside each: a randomly initialised encoder of the same shape,
scored the same way.

    python benchmarks/graph_learning.py                                  # every preset, seeds 0-4
    python benchmarks/graph_learning.py --presets graphmae_mutag --seeds 0 1
    python benchmarks/graph_learning.py --quick                          # 2 steps each: a smoke run, not a result

Writes one JSON line per preset (mean and std over seeds of the pretrained and the random-init figures, the
published figure, minutes) and, with ``--table FILE``, a markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.benchmarking import machine
from selfsup.recipes import graph

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "graphs"
# the papers' figures: GraphMAE (Hou et al., KDD 2022) tables 1 and 2; GraphCL (You et al., NeurIPS 2020) table 4
PUBLISHED = {"graphmae_mutag": (88.19, 1.26), "graphmae_proteins": (75.30, 0.39), "graphmae_cora": (84.2, 0.4),
             "graphcl_mutag": (86.80, 1.34), "graphcl_proteins": (74.39, 0.45)}
ROOTS = {"graphmae_cora": "Planetoid"}


def run(preset: str, seed: int, data: Path, out: Path, quick: bool) -> dict:
    argv = ["--preset", preset, "--train_dir", str(data / ROOTS.get(preset, "TUDataset")), "--seed", str(seed),
            "--output_dir", str(out), "--report_to", "none", *(["--num_train_epochs", "0", "--max_steps", "2"]
                                                              if quick else [])]
    t0 = time.perf_counter()
    metrics = graph.main(argv)
    key = "probe" if preset.endswith("cora") else "svm"
    return {"ours": 100 * metrics[f"{key}/accuracy"], "random_init": 100 * metrics[f"{key}/random_init_accuracy"],
            "steps": metrics["steps"], "minutes": (time.perf_counter() - t0) / 60}


def summarise(preset: str, runs: list[dict], seeds: list[int]) -> dict:
    ours, rand = np.array([r["ours"] for r in runs]), np.array([r["random_init"] for r in runs])
    pub = PUBLISHED[preset]
    return {"preset": preset, "seeds": seeds, "per_seed": [round(float(x), 2) for x in ours],
            "ours_mean": float(ours.mean()), "ours_std": float(ours.std()), "random_init_mean": float(rand.mean()),
            "random_init_std": float(rand.std()), "published": pub[0], "published_std": pub[1],
            "gap": float(ours.mean() - pub[0]), "steps": runs[0]["steps"],
            "minutes": float(sum(r["minutes"] for r in runs))}


def table(rows: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}.", "",
             "| preset | seeds | ours (mean ± std) | random init | published | gap | steps | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {len(r['seeds'])} | {r['ours_mean']:.2f} ± {r['ours_std']:.2f} | "
                     f"{r['random_init_mean']:.2f} ± {r['random_init_std']:.2f} | {r['published']:.2f} ± "
                     f"{r['published_std']:.2f} | {r['gap']:+.2f} | {r['steps']} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(DATA))
    p.add_argument("--presets", nargs="+", default=list(PUBLISHED), choices=list(PUBLISHED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--table", default=None, help="append the markdown table to this file")
    args = p.parse_args(argv)
    data = Path(args.data_dir)
    if not data.is_dir():
        sys.exit(f"error: {data}: the graph data sets are not there (../shared/data/graphs)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.output_dir or tmp)
        for preset in args.presets:
            runs = [run(preset, s, data, base / f"{preset}-seed{s}", args.quick) for s in args.seeds]
            rows.append(summarise(preset, runs, args.seeds))
            print(json.dumps(rows[-1]), flush=True)
    if args.table:
        with open(args.table, "a") as f:
            f.write(table(rows, f"{machine()}, {torch.get_num_threads()} threads") + "\n")
    return rows


if __name__ == "__main__":
    main()
