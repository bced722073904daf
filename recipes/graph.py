"""Pretrain a graph encoder: GraphMAE, GraphCL (or any two-view method) or data2vec, on a GIN, a GAT or a Transformer.

    accelerate launch recipes/graph.py                                   # GraphMAE on built-in synthetic graphs
    accelerate launch recipes/graph.py --preset graphmae_mutag --train_dir ../shared/data/graphs/TUDataset
    accelerate launch recipes/graph.py --preset graphcl_proteins --train_dir ../shared/data/graphs/TUDataset
    accelerate launch recipes/graph.py --preset graphmae_cora --train_dir ../shared/data/graphs/Planetoid
    accelerate launch recipes/graph.py --method data2vec --backbone transformer --structural_encoding 16

Graph classification (``--task graph``, the default): every graph is pretrained on, then its frozen pooled
embedding is scored by GraphMAE's protocol (an SVM with a grid over C, 10-fold stratified cross-validation) beside
a randomly initialised encoder's. Node classification (``--task node``, one large graph): a logistic regression on
frozen node embeddings with the public split, beside random init; every node's embedding is written to
OUTPUT_DIR/node_embeddings.safetensors. Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (selfsup's own
transformers model, loadable with ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` without selfsup,
and a GIN also as plain torch_geometric modules). Data formats: docs/recipes/graph.md.
"""
from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import save_file

from selfsup.backbones.hf_graph import export_graph
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import run_cli
from selfsup.modalities.graph import collate_graphs, full_graph_batch
from selfsup.recipes._graph import (PRESETS, GraphRun, add_graph_args, build_objective, graph_loader, load_graphs,
                                    load_node_graph, node_embeddings, node_probe_figures, num_examples, readout, steps_for,
                                    svm_figures)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/graph", max_steps=100, learning_rate=1e-3,
                    weight_decay=0.0, per_device_train_batch_size=32, warmup_ratio=0.0, max_grad_norm=0.0,
                    lr_scheduler_type="constant", random_init_seeds=1, mixed_precision="no")
    add_graph_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv, PRESETS)                                     # parse
    run = settings_from(GraphRun, args)
    accelerator = start_run(TrainingSettings.from_args(args), run.seed)
    if run.task == "node":                                                               # data
        graph = load_node_graph(run)
        graphs, num_features, labels, source = [graph], graph.num_features, (), "node-level graph"
        accelerator.print(f"graph: {graph.num_nodes} nodes, {graph.num_edges} edges, {num_features} features")
    else:
        data = load_graphs(run)
        graphs, num_features, labels, source = data.graphs, data.num_features, data.node_label_sizes, data.source
        accelerator.print(f"graphs: {len(data)} from {data.source} ({data.num_features} node features by the "
                          f"{data.features!r} rule, {data.num_classes} classes)")
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    max_steps = steps_for(run, num_examples(run, graphs), global_batch, args.max_steps)
    settings = TrainingSettings.from_args(args, max_steps=max_steps)
    objective = build_objective(run, num_features, max_steps, labels)                   # build
    build_fresh = lambda: build_objective(run, num_features, max_steps, labels)           # noqa: E731
    loader = graph_loader(run, graphs, args.per_device_train_batch_size, accelerator, args.dataloader_num_workers)
    accelerator.print(f"{run.method} on a {run.backbone}: {num_parameters(objective.encoder()) / 1e3:.1f}k encoder "
                      f"parameters, {max_steps} steps of {global_batch} {'seed nodes' if run.num_neighbors else 'graphs'}, lr {args.learning_rate:.3g}")
    trainer = Trainer(objective, loader, settings, accelerator,
                      run_config={"recipe": "graph", "method": run.method, "backbone": run.backbone, "data": source})
    metrics = trainer.train()                                                            # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        device = accelerator.device                                                      # evaluate
        fresh = [readout(e, run) for e in random_init_encoders(build_fresh, args.random_init_seeds, run.seed, device)]
        encoder = readout(objective.encoder(), run)
        encoders = {"": encoder, "random_init_": fresh}
        if run.task == "node":
            metrics.update(node_probe_figures(encoders, graph, run, device))
            out = Path(args.output_dir) / "node_embeddings.safetensors"
            out.parent.mkdir(parents=True, exist_ok=True)
            save_file({"embeddings": node_embeddings(encoder, graph, device).contiguous()}, str(out))
            metrics["node_embeddings"] = str(out)
        elif data.num_classes >= 2:
            metrics.update(svm_figures(encoders, data, device))
        sample = full_graph_batch(graph) if run.task == "node" else collate_graphs(graphs[:4])
        export_dir = Path(args.output_dir) / "export"                                    # export
        metrics.update(export_graph(encoder, export_dir, sample, metrics, run={
            "objective": run.method, "backbone": run.backbone, "data": source, "steps": metrics.get("steps")}))
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
