"""GraphMAE training step: selfsup's MAE objective on its GIN (padded node tokens through the backbone contract)
against the same model written directly on ``torch_geometric`` (``benchmarks/graphmae_reference.py``: PyG's
``GINConv`` and the loss, no engine), on the same graphs with the same weights, in one run.

Before timing, the two losses are checked equal on one batch with the same mask (the reference is given our
weights and our mask), or the run stops. Both sides then train with Adam on the same fixed batches (MUTAG's
GraphMAE configuration by default: GIN 5 x 32, mask 0.75, replace 0.1, SCE alpha 2, batch 64), timed in
alternating rounds, the median round reported; dropout is off on both sides (it costs the same on both).

    python -m benchmarks.graph_speed --quick            (from the repository root: it imports its reference)
    python -m benchmarks.graph_speed --dataset PROTEINS --threads 1

The last line printed is one JSON object: ``ours`` / ``reference`` graphs per second and their ``ratio``, and the
model FLOPs utilisation of each (``mfu_ours``, ``mfu_reference``: the reference's forward + backward FLOPs per graph,
``model_mflop_per_graph``, times graphs/s over a square fp32 matmul measured at the same thread count).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from benchmarks.graphmae_reference import CONFIGS, GraphMAE, copy_weights, formula_loss, lowest_noise_nodes
from selfsup.benchmarking import (StepPair, check_agreement, cycling_step, first_call_timed, interleaved, machine,
                                  matmul_peak, mfu)
from selfsup.compiling import compile_backbones
from selfsup.data import to_device
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


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int | None = None,
              compile_backend: str | None = None, dataset: str = "MUTAG", batches: int = 8) -> StepPair:
    """Both sides' Adam steps on ``device`` over ``batches`` fixed batches in turn (``fused`` is not used: Adam as in
    GraphMAE's code; ours again with its GNN compiled, when asked)."""
    c = CONFIGS[dataset]
    size = batch_size or c["batch_size"]
    ours, ref, ours_batches, ref_batches, _ = sides(dataset, size, batches)
    ours, ref = ours.to(device).train(), ref.to(device).train()
    ours_batches = [to_device(b, torch.device(device)) for b in ours_batches]
    ref_batches = [b.to(device) for b in ref_batches]

    def ours_step(model):
        def loss(batch):
            out = model(batch)
            return out.loss / out.num_targets
        return cycling_step(loss, ours_batches, torch.optim.Adam(model.parameters(), lr=c["lr"]), bf16, device)

    def reference_pass() -> None:
        ref(ref_batches[0].x, ref_batches[0].edge_index).backward()
        ref.zero_grad(set_to_none=True)

    def ours_pass() -> None:
        out = ours(ours_batches[0])
        (out.loss / out.num_targets).backward()
        ours.zero_grad(set_to_none=True)

    compiled, seconds = None, []
    if compile_backend:
        twin = sides(dataset, size, 1)[0].to(device).train()
        compile_backbones(twin, compile_backend)
        compiled = first_call_timed(ours_step(twin), seconds)
    ref_step = cycling_step(lambda batch: ref(batch.x, batch.edge_index), ref_batches,
                            torch.optim.Adam(ref.parameters(), lr=c["lr"]), bf16, device)
    return StepPair(ours_step(ours), ref_step, size, reference_pass, "graphs/s", compiled, seconds, ours_pass)


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
    pair = step_pair(dataset=args.dataset)
    o, r = interleaved(pair.sides(), steps, rounds, 3, batch_size, args.dataset)
    flops = pair.flops_per_sample()                 # the reference's forward + backward, per graph
    executed = pair.executed_flops_per_sample()     # ours' own (its padded GIN and decoder)
    peak = matmul_peak()
    result = {"name": f"graphmae_step_{args.dataset.lower()}", "unit": "graphs/s", "ours": round(o, 1),
              "reference": round(r, 1), "ratio": round(o / r, 3), "machine": machine(),
              "threads": torch.get_num_threads(), "model_mflop_per_graph": round(flops / 1e6, 3),
              "matmul_peak_gflops": round(peak / 1e9, 1), "mfu_ours": round(mfu(flops, o, peak), 5),
              "mfu_reference": round(mfu(flops, r, peak), 5), "ours_executed_mflop_per_graph": round(executed / 1e6, 3),
              "mfu_ours_executed": round(mfu(executed, o, peak), 5)}
    print(f"median: ours {o:.1f}  reference {r:.1f} graphs/s  ratio {o / r:.2f}x  MFU {mfu(flops, o, peak):.2%} vs "
          f"{mfu(flops, r, peak):.2%} of a measured {peak / 1e9:.0f} GFLOP/s fp32 matmul", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
