"""GraphMAE training step: selfsup's MAE objective on its GIN (padded node tokens through the backbone contract)
against the same model written directly on ``torch_geometric`` (``benchmarks/graphmae_reference.py``: PyG's
``GINConv`` and the loss, no engine), on the same graphs with the same weights, in one run.

Before timing, the two losses are checked equal on one batch with the same mask (the reference is given our
weights and our mask), or the run stops. Both sides then train with Adam on the same fixed batches (MUTAG's
GraphMAE configuration by default: GIN 5 x 32, mask 0.75, replace 0.1, SCE alpha 2, batch 64), timed in
alternating rounds, the median round reported; dropout is off on both sides (it costs the same on both).

    python -m benchmarks.graph_speed --quick            (from the repository root: it imports its reference)
    python -m benchmarks.graph_speed --dataset PROTEINS --threads 1

The last line printed is one JSON object: ``ours`` / ``reference`` graphs per second and their ``ratio``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from benchmarks.graphmae_reference import CONFIGS, GraphMAE, copy_weights, formula_loss, lowest_noise_nodes
from selfsup.benchmarking import check_agreement, cycling_step, interleaved, machine
from selfsup.modalities.graph import builtin_graphs, collate_graphs, load_tu
from selfsup.recipes._graph import PRESETS, GraphRun, build_objective
from selfsup.types import NOISE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "graphs" / "TUDataset"


def sides(dataset: str, batch_size: int, batches: int):
    graphs = (load_tu(DATA, dataset, self_loops=True) if (DATA / dataset).is_dir()
              else builtin_graphs(300, self_loops=True))
    preset = PRESETS[f"graphmae_{dataset.lower()}"]
    keys = {f.name for f in dataclasses.fields(GraphRun)}
    run = GraphRun(**{**{k: v for k, v in preset.items() if k in keys and k != "dataset_name"}, "dropout": 0.0})
    torch.manual_seed(0)
    ours = build_objective(run, graphs.num_features, 100)
    c = {**CONFIGS[dataset], "in_drop": 0.0}
    ref = GraphMAE(graphs.num_features, c)
    copy_weights(ours, ref)
    ours_batches = [collate_graphs([{"graph": graphs[(i * batch_size + j) % len(graphs)], "seed": i * batch_size + j}
                                    for j in range(batch_size)]) for i in range(batches)]
    from torch_geometric.data import Batch

    ref_batches = [Batch.from_data_list([graphs[(i * batch_size + j) % len(graphs)] for j in range(batch_size)])
                   for i in range(batches)]
    return ours, ref, ours_batches, ref_batches, run


def agreement(ours, ref, batch, run) -> tuple[float, float]:
    """Both losses on one batch with our mask (no random replacement on either side for this check)."""
    counts = batch["num_nodes"].tolist()
    noise = torch.rand(len(counts), max(counts), generator=torch.Generator().manual_seed(1))
    rate = ours.config.replace_rate
    ours.config.replace_rate = 0.0
    out = ours({**batch, NOISE: noise})
    ours.config.replace_rate = rate
    mask = lowest_noise_nodes(noise, counts, run.mask_ratio)
    expected = formula_loss(ref, batch["node_features"].float(), batch["edge_index"], mask, run.sce_alpha)
    return float(out.loss.detach() / out.num_targets), float(expected)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="MUTAG", choices=sorted(CONFIGS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps, rounds = (5, 3) if args.quick else (20, 7)
    batch_size = CONFIGS[args.dataset]["batch_size"]
    ours, ref, ours_batches, ref_batches, run = sides(args.dataset, batch_size, 8)
    ours.train(), ref.train()
    check_agreement([("one batch, same mask", *agreement(ours, ref, ours_batches[0], run), 1e-5)])
    lr = CONFIGS[args.dataset]["lr"]
    opt_ours, opt_ref = torch.optim.Adam(ours.parameters(), lr=lr), torch.optim.Adam(ref.parameters(), lr=lr)
    def ours_loss(batch):
        out = ours(batch)
        return out.loss / out.num_targets

    ours_step = cycling_step(ours_loss, ours_batches, opt_ours)
    ref_step = cycling_step(lambda batch: ref(batch.x, batch.edge_index), ref_batches, opt_ref)

    o, r = interleaved({"ours": ours_step, "reference": ref_step}, steps, rounds, 3, batch_size, args.dataset)
    result = {"name": f"graphmae_step_{args.dataset.lower()}", "unit": "graphs/s", "ours": round(o, 1),
              "reference": round(r, 1), "ratio": round(o / r, 3), "machine": machine(),
              "threads": torch.get_num_threads()}
    print(f"median: ours {o:.1f}  reference {r:.1f} graphs/s  ratio {o / r:.2f}x", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
