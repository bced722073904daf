"""Helpers of ``recipes/graph.py``, each one step of its ``main``, on typed settings (:class:`GraphRun`): the flags
and presets, the graphs, the parts (graph adapter, GIN / GAT / Transformer backbone, decoder, masker) and the
objective of any registered method on them, the loaders, and the published evaluation. Nothing here calls back into
the recipe."""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.backbones.gnn import GNNBackbone, decoder_config, gnn_config
from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.config import RecipeSettings
from selfsup.data import make_train_loader, to_device
from selfsup.errors import SelfsupError
from selfsup.modalities.graph import (GraphAdapter, GraphConfig, GraphExamples, GraphSet, GraphViewDataset,
                                      builtin_graphs, collate_graph_views, collate_graphs, full_graph_batch,
                                      graphcl_augmentation, karate_club, load_csv_graphs, load_planetoid, load_saved,
                                      load_tu, random_walk_encoding)
from selfsup.modalities.graph.nodes import SeedNodes
from selfsup.modalities.graph.augment import Identity
from selfsup.objectives import registry
from selfsup.objectives.masked.mae import compose_masked_autoencoder
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.sizes import GRAPHMAE
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.two_view.build import from_encoder
from selfsup.protocols import svm_cross_validation, transductive_probe
from selfsup.types import Encoder, Objective

PLANETOID = ("Cora", "CiteSeer", "PubMed")
METHODS = ("graphmae", "graphcl", "data2vec", *[m for m in registry.names("two_view") if m not in ("graphcl", "scarf")])
BACKBONES = ("gin", "gat", "transformer")
_GRAPHMAE_GIN = dict(method="graphmae", backbone="gin", node_encoder="none", self_loops=True, norm="batchnorm",
                     activation="prelu", dropout=0.2, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                     max_grad_norm=0.0, adam_beta2=0.999, adam_epsilon=1e-8, mixed_precision="no")
_GRAPHCL_GIN = dict(method="graphcl", backbone="gin", node_encoder="none", norm="batchnorm", activation="relu",
                    dropout=0.0, hidden_size=32, num_layers=3, learning_rate=0.01, weight_decay=0.0,
                    num_train_epochs=20, per_device_train_batch_size=128, readout="sum", readout_layers="all",
                    augmentation="random4", aug_ratio=0.1, subgraph_keep=0.2, temperature=0.2,
                    lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, adam_beta2=0.999,
                    adam_epsilon=1e-8, mixed_precision="no")
# The papers' own settings (flag -> value; flags given on the command line win): GraphMAE's configs.yml for MUTAG,
# PROTEINS (graph classification, GIN) and Cora (node classification, GAT), GraphCL's unsupervised_TU (go.sh).
PRESETS: dict[str, dict[str, Any]] = {
    "graphmae_mutag": {**_GRAPHMAE_GIN, "dataset_name": "MUTAG", "hidden_size": 32, "num_layers": 5,
                       "mask_ratio": 0.75, "replace_rate": 0.1, "sce_alpha": 2.0, "learning_rate": 5e-4,
                       "num_train_epochs": 20, "readout": "sum", "per_device_train_batch_size": 64},
    "graphmae_proteins": {**_GRAPHMAE_GIN, "dataset_name": "PROTEINS", "hidden_size": 512, "num_layers": 3,
                          "mask_ratio": 0.5, "replace_rate": 0.0, "sce_alpha": 1.0, "learning_rate": 1.5e-4,
                          "num_train_epochs": 100, "readout": "max", "per_device_train_batch_size": 32},
    "graphmae_cora": {**_GRAPHMAE_GIN, "dataset_name": "Cora", "task": "node", "backbone": "gat", "hidden_size": 512,
                      "num_layers": 2, "heads": 4, "norm": "none", "attention_dropout": 0.1, "normalize_features": True,
                      "mask_ratio": 0.5, "replace_rate": 0.05, "sce_alpha": 3.0, "learning_rate": 1e-3,
                      "weight_decay": 2e-4, "num_train_epochs": 1500, "lr_scheduler_type": "cosine",
                      "probe_learning_rate": 0.01, "probe_weight_decay": 1e-4, "probe_epochs": 300},
    "graphcl_mutag": {**_GRAPHCL_GIN, "dataset_name": "MUTAG"},
    "graphcl_proteins": {**_GRAPHCL_GIN, "dataset_name": "PROTEINS"},
}


@dataclass
class GraphRun(RecipeSettings):
    """The graph recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names."""

    method: str = "graphmae"
    backbone: str = "gin"
    task: str = "graph"
    node_features: str = "auto"
    self_loops: bool = False
    normalize_features: bool = False
    structural_encoding: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    heads: int = 1
    dropout: float = 0.0
    attention_dropout: float = 0.0
    norm: str = "batchnorm"
    activation: str = "prelu"
    node_encoder: str = "linear"
    readout: str = "mean"
    readout_layers: str = "last"
    mask_ratio: float = 0.5
    replace_rate: float = 0.1
    sce_alpha: float = 2.0
    augmentation: str = "random4"
    aug_ratio: float = 0.1
    subgraph_keep: float = 0.2
    temperature: float | None = None
    num_train_epochs: int | None = None
    num_neighbors: list[int] | None = None
    probe_learning_rate: float = 0.01
    probe_weight_decay: float = 1e-4
    probe_epochs: int = 300

    def __post_init__(self) -> None:
        checks = ((self.method in METHODS, f"--method {self.method}: choose from {list(METHODS)}"),
                  (self.backbone in BACKBONES, f"--backbone {self.backbone}: choose from {list(BACKBONES)}"),
                  (self.task in ("graph", "node"), "--task: graph or node"),
                  (self.task == "graph" or self.method in ("graphmae", "data2vec"),
                   f"--task node trains graphmae or data2vec, not {self.method}"))
        for ok, problem in checks:
            if not ok:
                raise SelfsupError(problem)
        if self.structural_encoding is None:    # attention sees no edges: it needs the structure as positions
            self.structural_encoding = 16 if self.backbone == "transformer" else 0


def add_graph_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("graphs")
    g.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="a paper's settings (GraphMAE on MUTAG / PROTEINS / Cora, GraphCL on MUTAG / PROTEINS)")
    g.add_argument("--method", default="graphmae", choices=METHODS, help=registry.describe("masked", "two_view").replace("%", "%%"))
    g.add_argument("--backbone", default="gin", choices=BACKBONES,
                   help="gin / gat (message passing over the edges) or transformer (attention over all nodes, with "
                        "the structural encoding as positions)")
    g.add_argument("--task", default="graph", choices=["graph", "node"],
                   help="graph: many graphs, graph embeddings; node: one large graph, node embeddings")
    g.add_argument("--node_features", default="auto", choices=["auto", "given", "labels", "degree"],
                   help="auto: the data's features, else one-hot node labels, else one-hot degrees (GraphMAE)")
    g.add_argument("--self_loops", action="store_true", help="remove and re-add a self-loop on every node (GraphMAE)")
    g.add_argument("--normalize_features", action="store_true", help="row-normalise node features (DGL's Cora)")
    g.add_argument("--structural_encoding", type=int, default=None,
                   help="random-walk structural encoding of this many steps, added to the node tokens (0: none; "
                        "default: 16 for the transformer, 0 for gin / gat)")
    g.add_argument("--hidden_size", type=int, default=None, help="override the --model_size width")
    g.add_argument("--num_layers", type=int, default=None, help="override the --model_size depth")
    g.add_argument("--heads", type=int, default=1, help="GAT / Transformer attention heads")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout on every GNN layer's input")
    g.add_argument("--attention_dropout", type=float, default=0.0)
    g.add_argument("--norm", default="batchnorm", choices=["batchnorm", "layernorm", "none"])
    g.add_argument("--activation", default="prelu", choices=["prelu", "relu", "elu", "gelu"])
    g.add_argument("--node_encoder", default="linear", choices=["linear", "none"],
                   help="node features through a linear map, or straight into the first layer (GraphMAE)")
    g.add_argument("--readout", default="mean", choices=["mean", "sum", "max"], help="graph embedding pooling")
    g.add_argument("--readout_layers", default="last", choices=["last", "all"],
                   help="pool the last layer, or every layer concatenated (InfoGraph / GraphCL)")
    g.add_argument("--mask_ratio", type=float, default=0.5, help="graphmae: share of the nodes masked")
    g.add_argument("--replace_rate", type=float, default=0.1, help="graphmae: masked nodes given another's features")
    g.add_argument("--sce_alpha", type=float, default=2.0, help="graphmae: the scaled cosine error's exponent")
    g.add_argument("--augmentation", default="random4",
                   choices=["dnodes", "pedges", "subgraph", "mask_nodes", "random2", "random3", "random4"],
                   help="two-view methods: GraphCL's augmentations (random2/3/4: a random one per view)")
    g.add_argument("--aug_ratio", type=float, default=0.1, help="share of nodes / edges an augmentation changes")
    g.add_argument("--subgraph_keep", type=float, default=0.2, help="share of nodes a subgraph view keeps")
    g.add_argument("--temperature", type=float, default=None, help="two-view methods: the loss temperature")
    g.add_argument("--num_train_epochs", type=int, default=None, help="epochs (then --max_steps is derived)")
    g.add_argument("--num_neighbors", type=int, nargs="+", default=None,
                   help="--task node: neighbour-sampled mini-batches (fanout per hop) instead of the whole graph")
    e = p.add_argument_group("graph evaluation")
    e.add_argument("--probe_learning_rate", type=float, default=0.01, help="--task node: the linear probe's")
    e.add_argument("--probe_weight_decay", type=float, default=1e-4)
    e.add_argument("--probe_epochs", type=int, default=300)


# -- data ----------------------------------------------------------------------------------------------------------
def load_graphs(run: GraphRun) -> GraphSet:
    """The graphs of the data flags: a TU data set (``--train_dir ROOT --dataset_name NAME``), a folder of CSV
    files, a ``torch.save``-d list of ``Data`` (``--train_file``), or the built-in synthetic graphs."""
    prepare = dict(features=run.node_features, self_loops=run.self_loops, normalize=run.normalize_features,
                   structural_encoding=run.structural_encoding)
    if run.train_file:
        return load_saved(run.train_file[0], **prepare)
    if run.train_dir and (Path(run.train_dir) / "edges.csv").is_file():
        return load_csv_graphs(run.train_dir, **prepare)
    if run.train_dir:
        if not run.dataset_name:
            raise SelfsupError(f"{run.train_dir}: name the TU data set in it with --dataset_name (e.g. MUTAG)")
        return load_tu(run.train_dir, run.dataset_name, **prepare)
    return builtin_graphs(seed=run.seed, **prepare)


def load_node_graph(run: GraphRun):
    """The one large graph of ``--task node``: a Planetoid graph (``--train_dir ROOT --dataset_name Cora``) or
    PyG's bundled KarateClub."""
    if run.train_dir:
        graph = load_planetoid(run.train_dir, run.dataset_name or "Cora", self_loops=run.self_loops,
                               normalize=run.normalize_features)
    else:
        graph = karate_club(self_loops=run.self_loops)
    if run.structural_encoding:
        graph.node_pe = random_walk_encoding(graph, run.structural_encoding)
    return graph


def num_examples(run: GraphRun, graphs) -> int:
    """What an epoch runs over: the graphs, or the seed nodes of neighbour-sampled node-level batches."""
    return graphs[0].num_nodes if run.task == "node" and run.num_neighbors else len(graphs)


def steps_for(run: GraphRun, num_examples: int, global_batch: int, max_steps: int) -> int:
    """``--num_train_epochs`` as optimizer steps (every example once per epoch, the last batch kept), else
    ``--max_steps``."""
    if not run.num_train_epochs:
        return max_steps
    return run.num_train_epochs * max(1, -(-num_examples // global_batch))


# -- parts and objective ---------------------------------------------------------------------------------------------
def make_adapter(run: GraphRun, num_features: int, label_sizes: tuple[int, ...] = ()) -> GraphAdapter:
    width = None if run.node_encoder == "none" else encoder_width(run)
    return GraphAdapter(GraphConfig(num_features=num_features, node_encoder=run.node_encoder,
                                    node_label_sizes=label_sizes, pe_size=run.structural_encoding), width)


def encoder_width(run: GraphRun) -> int:
    from selfsup.backbones.gnn import SIZES as GNN_SIZES

    return run.hidden_size or GNN_SIZES[run.model_size]["hidden_size"]


def make_backbone(run: GraphRun, input_size: int) -> nn.Module:
    """The encoder: GraphMAE's GIN or GAT, or the shared Transformer over the padded nodes."""
    if run.backbone == "transformer":
        size = dict(hidden_size=encoder_width(run), num_layers=run.num_layers or 3, num_heads=max(run.heads, 1),
                    intermediate_size=4 * encoder_width(run))
        return TransformerEncoder(transformer_config(size, "vit", dropout=run.dropout,
                                                     attention_dropout=run.attention_dropout))
    overrides = {k: v for k, v in (("hidden_size", run.hidden_size), ("num_layers", run.num_layers)) if v}
    cfg = gnn_config(run.model_size, input_size, run.backbone, dropout=run.dropout, norm=run.norm,
                     activation=run.activation, heads=run.heads, attention_dropout=run.attention_dropout, **overrides)
    return GNNBackbone(cfg)


def make_decoder(run: GraphRun, backbone: nn.Module, target_size: int) -> nn.Module:
    """GraphMAE's decoder: one layer of the encoder's kind that outputs the node features (a GAT decoder has one
    head); a one-layer Transformer for the Transformer."""
    if isinstance(backbone, GNNBackbone):
        return GNNBackbone(decoder_config(backbone.config, target_size))
    c = backbone.config
    return TransformerEncoder(transformer_config(dict(hidden_size=c.hidden_size, num_layers=1, num_heads=c.num_heads,
                                                      intermediate_size=c.intermediate_size), "vit"))


def build_objective(run: GraphRun, num_features: int, max_steps: int, label_sizes: tuple[int, ...] = ()) -> Objective:
    """The registered method ``run.method`` on graph parts: the MAE class with GraphMAE's options, the data2vec
    class, or a two-view class (GraphCL = SimCLR) on the encoder and its readout."""
    adapter = make_adapter(run, num_features, label_sizes)
    backbone = make_backbone(run, adapter.hidden_size)
    if run.method == "graphmae":
        if not num_features:
            raise SelfsupError("graphmae reconstructs node features; these graphs have none (--node_features degree)")
        transformer = isinstance(backbone, TransformerEncoder)
        return compose_masked_autoencoder(
            adapter, backbone, make_decoder(run, backbone, num_features),
            **{**GRAPHMAE, "mask_ratio": run.mask_ratio, "replace_rate": run.replace_rate,
               "sce_alpha": run.sce_alpha, "prediction_head": transformer})
    if run.method == "data2vec":
        top = max(1, backbone.config.num_layers // 2)
        config = Data2VecObjectiveConfig(target_layer="block", average_top_k_layers=top, ema_decay=0.99,
                                         ema_end_decay=0.999, ema_anneal_end_step=max(max_steps, 1),
                                         ema_transformer_only=False, ema_layers_only=False)
        return Data2VecObjective(adapter, backbone, SpanMasker(run.mask_ratio, 1, 1), config)
    overrides = {} if run.temperature is None else {"temperature": run.temperature}
    encoder = Encoder(adapter, backbone, run.readout, run.readout_layers)
    return from_encoder(run.method, encoder, run.model_size, max_steps, **overrides)


def readout(encoder: Encoder, run: GraphRun) -> Encoder:
    """The objective's encoder with the run's graph readout (``--readout`` over ``--readout_layers``): what the
    evaluation scores and the export pools."""
    return Encoder(encoder.adapter, encoder.backbone, run.readout, run.readout_layers)


def is_two_view(run: GraphRun) -> bool:
    return registry.get(run.method).family == "two_view"


def graph_loader(run: GraphRun, graphs, batch_size: int, accelerator, workers: int = 0):
    """Training batches: on one large graph with ``--num_neighbors``, the sampled neighbourhoods of batches of seed
    nodes (:class:`SeedNodes`); else seeded graphs (masked methods) or two seeded views of each (two-view methods: GraphCL's
    original graph and an augmented one; other methods two augmented views)."""
    if run.task == "node" and run.num_neighbors:
        data = SeedNodes(graphs[0], run.num_neighbors, run.seed)
        return make_train_loader(data, data.collate, batch_size, accelerator.num_processes,
                                 accelerator.process_index, run.seed, workers, drop_last=False)
    if is_two_view(run):
        aug = graphcl_augmentation(run.augmentation, run.aug_ratio, run.subgraph_keep)
        views = [Identity(), aug] if run.method == "graphcl" else [aug, aug]
        data, collate = GraphViewDataset(graphs, views, seed=run.seed), collate_graph_views
    else:
        data, collate = GraphExamples(graphs, seed=run.seed), collate_graphs
    return make_train_loader(data, collate, batch_size, accelerator.num_processes, accelerator.process_index,
                             run.seed, workers, drop_last=False)


# -- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def graph_embeddings(encoder: Encoder, graphs, device, batch_size: int = 256) -> np.ndarray:
    """(N, D) frozen pooled embeddings of every graph, in order (eval mode)."""
    was = encoder.training
    encoder.eval()
    out = [encoder.pooled(to_device(collate_graphs([graphs[j] for j in range(i, min(i + batch_size, len(graphs)))]),
                                    device)).float().cpu() for i in range(0, len(graphs), batch_size)]
    encoder.train(was)
    return torch.cat(out).numpy()


def svm_figures(encoders: dict[str, Encoder | list[Encoder]], graphs: GraphSet, device) -> dict[str, float]:
    """GraphMAE's protocol on frozen graph embeddings for each encoder: ``svm/{prefix}accuracy`` and its fold
    std (random inits: the mean over seeds)."""
    labels = np.asarray(graphs.labels)
    out = {}
    for prefix, group in encoders.items():
        runs = [svm_cross_validation(graph_embeddings(e, graphs, device), labels)
                for e in (group if isinstance(group, list) else [group])]
        out[f"svm/{prefix}accuracy"] = float(np.mean([r[0] for r in runs]))
        out[f"svm/{prefix}accuracy_std"] = float(np.mean([r[1] for r in runs]))
    return out


@torch.no_grad()
def node_embeddings(encoder: Encoder, graph, device) -> torch.Tensor:
    """(n, D) frozen embeddings of every node of the graph (the encoder's last layer, eval mode)."""
    was = encoder.training
    encoder.eval()
    out, padding = encoder(to_device(full_graph_batch(graph), device))
    encoder.train(was)
    return out.last_hidden_state[~padding].float().cpu()


def node_probe_figures(encoders: dict[str, Encoder | list[Encoder]], graph, run: GraphRun, device
                       ) -> dict[str, float]:
    """GraphMAE's linear probe on frozen node embeddings (public split): ``probe/{prefix}accuracy`` (the last
    epoch, what GraphMAE reports) and ``probe/{prefix}early_stopping_accuracy``."""
    train, val, test = (getattr(graph, m, None) for m in ("train_mask", "val_mask", "test_mask"))
    if train is None or getattr(graph, "node_classes", None) is None:
        return {}
    if test is None:                                  # KarateClub: a train mask only; score the other nodes
        test = ~train
    masks = [train, test if val is None else val, test]
    out = {}
    for prefix, group in encoders.items():
        runs = [transductive_probe(node_embeddings(e, graph, device), graph.node_classes, *masks,
                                   run.probe_learning_rate, run.probe_weight_decay, run.probe_epochs, run.seed)
                for e in (group if isinstance(group, list) else [group])]
        out[f"probe/{prefix}accuracy"] = float(np.mean([r["test_accuracy"] for r in runs]))
        out[f"probe/{prefix}early_stopping_accuracy"] = float(np.mean([r["early_stopping_test_accuracy"]
                                                                      for r in runs]))
    return out


__all__ = ["GraphRun", "PRESETS", "METHODS", "add_graph_args", "load_graphs", "load_node_graph", "steps_for",
           "num_examples",
           "build_objective", "graph_loader", "svm_figures", "node_probe_figures", "node_embeddings",
           "graph_embeddings", "is_two_view", "readout"]
