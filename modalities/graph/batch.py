"""Graph batches: the keys, collation of PyG ``Data`` objects into one packed batch dict, and joining batches.

The format is described in the package docstring (:mod:`selfsup.modalities.graph`). A graph handed to
:func:`collate_graphs` follows the package's ``Data`` convention: ``x`` (n, F) float node features (F may be 0),
``edge_index`` (2, e) long, and optionally ``node_labels`` (n,) / (n, k) long, ``edge_labels`` (e,) / (e, k)
long, ``node_pe`` (n, K) float, ``y`` its label (graph-level data) and, for node-level data, ``node_ids`` (n,)
and ``node_classes`` (n,).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data

from selfsup.graphs import node_offsets
from selfsup.types import EXAMPLE_SEEDS

NODE_FEATURES, NODE_LABELS, NODE_PE = "node_features", "node_labels", "node_pe"
EDGE_INDEX, EDGE_LABELS, NUM_NODES = "edge_index", "edge_labels", "num_nodes"
GRAPH_LABELS, NODE_IDS, NODE_CLASSES, NUM_SEED_NODES = "graph_labels", "node_ids", "node_classes", "num_seed_nodes"
ADAPTER_KEYS = (NODE_FEATURES, NODE_LABELS, EDGE_INDEX, EDGE_LABELS, NUM_NODES, NODE_PE)
NODE_KEYS = (NODE_FEATURES, NODE_LABELS, NODE_PE, NODE_IDS, NODE_CLASSES)     # (T, ...) per packed node
EDGE_KEYS = (EDGE_LABELS,)                                                  # (E, ...) per edge
GRAPH_KEYS = (NUM_NODES, GRAPH_LABELS, EXAMPLE_SEEDS, NUM_SEED_NODES)       # (B,) per graph
# Data attribute -> batch key, for the per-node and per-edge tensors a Data may carry
DATA_NODE_ATTRS = {"x": NODE_FEATURES, "node_labels": NODE_LABELS, "node_pe": NODE_PE, "node_ids": NODE_IDS,
                   "node_classes": NODE_CLASSES}


def _graphs_and_seeds(examples: Sequence[Any]) -> tuple[list[Data], list[int] | None]:
    """Examples are ``Data`` objects or ``{"graph": Data, "seed": int}`` dicts (``selfsup.data.SeededExamples``)."""
    graphs = [e["graph"] if isinstance(e, Mapping) else e for e in examples]
    seeds = [int(e["seed"]) for e in examples] if all(isinstance(e, Mapping) and "seed" in e for e in examples) \
        else None
    return graphs, seeds


def _stack_optional(graphs: Sequence[Data], attr: str) -> Tensor | None:
    """The graphs' ``attr`` concatenated along dim 0, or None when no graph has it; an error when some do."""
    present = [getattr(g, attr, None) is not None for g in graphs]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(f"graph {present.index(False)} of the batch has no {attr!r} but graph "
                         f"{present.index(True)} has: every graph of a batch needs the same fields")
    return torch.cat([getattr(g, attr) for g in graphs])


def collate_graphs(examples: Sequence[Any]) -> dict[str, Any]:
    """A list of graphs (``Data`` or ``{"graph", "seed"}`` dicts) -> one packed batch dict (package docstring):
    node tensors concatenated, ``edge_index`` offset to the packed node numbering, ``num_nodes`` (B,),
    ``graph_labels`` (B,) from ``y``, ``example_seeds`` (B,) from the seeds."""
    graphs, seeds = _graphs_and_seeds(examples)
    if not graphs:
        raise ValueError("collate_graphs got no graphs")
    counts = torch.tensor([int(g.num_nodes) for g in graphs], dtype=torch.long)
    offsets = node_offsets(counts).tolist()
    edge_index = torch.cat([g.edge_index.long() + off for g, off in zip(graphs, offsets)], dim=1)
    batch: dict[str, Any] = {EDGE_INDEX: edge_index, NUM_NODES: counts}
    for attr, key in DATA_NODE_ATTRS.items():
        if (value := _stack_optional(graphs, attr)) is not None:
            batch[key] = value
    if NODE_FEATURES not in batch:
        batch[NODE_FEATURES] = torch.zeros(int(counts.sum()), 0)
    if (labels := _stack_optional(graphs, "edge_labels")) is not None:
        batch[EDGE_LABELS] = labels
    if all(getattr(g, "y", None) is not None and g.y.numel() == 1 for g in graphs):
        batch[GRAPH_LABELS] = torch.cat([g.y.reshape(1) for g in graphs])
    if seeds is not None:
        batch[EXAMPLE_SEEDS] = torch.tensor(seeds, dtype=torch.long)
    return batch


def join_batches(batches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One batch holding the graphs of ``batches`` in order: ``edge_index`` of each shifted by the nodes before
    it, per-node, per-edge and per-graph tensors concatenated; other values taken from the first batch."""
    if not batches:
        raise ValueError("join_batches got no batches")
    totals = torch.tensor([int(b[NUM_NODES].sum()) for b in batches])
    offsets = (torch.cumsum(totals, 0) - totals).tolist()
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
        if key == EDGE_INDEX:
            out[key] = torch.cat([b[key] + off for b, off in zip(batches, offsets)], dim=1)
        elif isinstance(value, Tensor):
            missing = [i for i, b in enumerate(batches) if key not in b]
            if missing:
                raise ValueError(f"batch {missing[0]} has no {key!r}; graph batches to join need the same keys")
            out[key] = torch.cat([b[key] for b in batches])
        else:
            out[key] = value
    return out


def signature(batch: Mapping[str, Any]) -> tuple:
    """What must agree for :func:`join_batches`: the keys and the per-row widths (any graph sizes join)."""
    return tuple((k, tuple(v.shape[1:]) if k != EDGE_INDEX else ()) for k, v in sorted(batch.items())
                 if isinstance(v, Tensor))


__all__ = ["collate_graphs", "join_batches", "signature", "NODE_FEATURES", "NODE_LABELS", "NODE_PE", "EDGE_INDEX",
           "EDGE_LABELS", "NUM_NODES", "GRAPH_LABELS", "NODE_IDS", "NODE_CLASSES", "NUM_SEED_NODES", "ADAPTER_KEYS",
           "NODE_KEYS", "EDGE_KEYS", "GRAPH_KEYS"]
