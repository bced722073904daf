"""GraphCL's graph augmentations (You et al., NeurIPS 2020), each drawing from a ``torch.Generator`` it is given.

Every augmentation is a callable ``aug(graph, generator) -> Data`` on a graph in the package's ``Data``
convention; it returns a new graph and leaves the input as it was. Node tensors (``x``, ``node_labels``,
``node_pe``, ``node_ids``, ``node_classes``) and edge tensors (``edge_labels``) follow the nodes and edges kept.
Self-loops (GraphMAE's pipeline adds them) stay with their node and are never perturbed.

* :class:`DropNodes` ``(ratio)``: drop ``int(n · ratio)`` nodes drawn uniformly (at least one node stays) and
  their edges; the rest are renumbered in order.
* :class:`PerturbEdges` ``(ratio)``: remove ``int(m · ratio)`` of the m edges and add as many new random ones
  between distinct nodes; an undirected graph is perturbed pair by pair and stays undirected. A new edge takes
  the labels of an edge drawn from the graph's own.
* :class:`MaskAttributes` ``(ratio, fill)``: the features of ``int(n · ratio)`` nodes are set to zero
  (``fill="zero"``, the default) or drawn from N(0.5, 0.5²) (``fill="gaussian"``, GraphCL's unsupervised TU
  code). Categorical node labels are left as they are.
* :class:`Subgraph` ``(keep)``: the subgraph induced by ``max(1, int(n · keep))`` nodes grown from a random
  start node, each step adding a random node adjacent to those taken (a random-walk-like expansion; it stops
  early when the start node's component is smaller). GraphCL keeps 20 % (``keep=0.2``).
* :class:`RandomChoice` ``(augmentations)``: one of them, drawn uniformly per call; GraphCL's ``random2`` =
  {drop nodes, subgraph}, ``random3`` = + edge perturbation, ``random4`` = + attribute masking
  (:func:`graphcl_augmentation`).

GraphCL's released code differs from its paper in places (e.g. its unsupervised node dropping keeps every node
and removes only edges); these follow the paper.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected, subgraph

NODE_ATTRS = ("x", "node_labels", "node_pe", "node_ids", "node_classes")
FILLS = ("zero", "gaussian")


def _check_ratio(ratio: float, name: str = "ratio") -> float:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")
    return float(ratio)


def _copy(graph: Data) -> Data:
    return Data(**{k: v for k, v in graph.items()})


def keep_nodes(graph: Data, keep: Tensor) -> Data:
    """The subgraph induced by the node indices ``keep`` (sorted), renumbered 0..len(keep)-1."""
    keep = torch.sort(keep).values
    edges, labels, edge_mask = subgraph(keep, graph.edge_index, getattr(graph, "edge_labels", None),
                                        relabel_nodes=True, num_nodes=graph.num_nodes, return_edge_mask=True)
    out = _copy(graph)
    out.edge_index, out.num_nodes = edges, len(keep)
    if labels is not None:
        out.edge_labels = labels
    for attr in NODE_ATTRS:
        if getattr(graph, attr, None) is not None:
            setattr(out, attr, getattr(graph, attr)[keep])
    return out


class DropNodes:
    """Drop ``int(n · ratio)`` uniformly drawn nodes and their edges (at least one node stays)."""

    def __init__(self, ratio: float = 0.2) -> None:
        self.ratio = _check_ratio(ratio)

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        n = graph.num_nodes
        drop = min(int(n * self.ratio), n - 1)
        return keep_nodes(graph, torch.randperm(n, generator=generator)[drop:])


def _units(graph: Data) -> tuple[Tensor, Tensor, bool]:
    """(the non-loop edges' columns that count as one edge each, the loops' columns, undirected?): an undirected
    graph counts each pair once (its src < dst column)."""
    src, dst = graph.edge_index
    loops = (src == dst).nonzero().squeeze(1)
    rest = (src != dst).nonzero().squeeze(1)
    undirected = is_undirected(graph.edge_index[:, rest], num_nodes=graph.num_nodes)
    if undirected:
        rest = rest[src[rest] < dst[rest]]
    return rest, loops, undirected


def _new_pairs(n: int, k: int, existing: set[int], generator: torch.Generator, undirected: bool) -> list[tuple[int, int]]:
    """Up to ``k`` random node pairs (u != v) that are not ``existing`` keys ``u * n + v`` (u < v if undirected)."""
    out: list[tuple[int, int]] = []
    for _ in range(8):
        if len(out) >= k:
            break
        cand = torch.randint(n, (2 * k + 4, 2), generator=generator)
        for u, v in cand.tolist():
            u, v = (min(u, v), max(u, v)) if undirected else (u, v)
            if u != v and u * n + v not in existing and len(out) < k:
                existing.add(u * n + v)
                out.append((u, v))
    return out


class PerturbEdges:
    """Remove ``int(m · ratio)`` of the m edges and add as many random new ones (module docstring)."""

    def __init__(self, ratio: float = 0.2) -> None:
        self.ratio = _check_ratio(ratio)

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        n, (src, dst) = graph.num_nodes, graph.edge_index
        units, loops, undirected = _units(graph)
        change = int(len(units) * self.ratio)
        order = torch.randperm(len(units), generator=generator)
        kept = units[order[change:]]
        existing = set((src[units] * n + dst[units]).tolist())
        added = torch.tensor(_new_pairs(n, change, existing, generator, undirected), dtype=torch.long).reshape(-1, 2).t()
        labels = getattr(graph, "edge_labels", None)
        columns = [graph.edge_index[:, kept], added]
        label_parts = None
        if labels is not None:
            donors = units[torch.randint(max(len(units), 1), (added.shape[1],), generator=generator)] if len(units) \
                else torch.zeros(0, dtype=torch.long)
            label_parts = [labels[kept], labels[donors]]
        if undirected:
            columns += [c.flip(0) for c in columns]
            label_parts = label_parts + label_parts if label_parts is not None else None
        out = _copy(graph)
        out.edge_index = torch.cat(columns + [graph.edge_index[:, loops]], dim=1)
        if label_parts is not None:
            out.edge_labels = torch.cat(label_parts + [labels[loops]])
        return out


class MaskAttributes:
    """Set the features of ``int(n · ratio)`` uniformly drawn nodes to zero or to N(0.5, 0.5²) noise."""

    def __init__(self, ratio: float = 0.2, fill: str = "zero") -> None:
        if fill not in FILLS:
            raise ValueError(f"unknown fill {fill!r}; choose from {list(FILLS)}")
        self.ratio, self.fill = _check_ratio(ratio), fill

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        n = graph.num_nodes
        picked = torch.randperm(n, generator=generator)[:int(n * self.ratio)]
        out = _copy(graph)
        if getattr(graph, "x", None) is None or graph.x.shape[1] == 0:
            return out
        x = graph.x.clone()
        if self.fill == "zero":
            x[picked] = 0.0
        else:
            x[picked] = torch.normal(0.5, 0.5, (len(picked), x.shape[1]), generator=generator).to(x.dtype)
        out.x = x
        return out


class Subgraph:
    """The subgraph induced by ``max(1, int(n · keep))`` nodes grown from a random start (module docstring)."""

    def __init__(self, keep: float = 0.2) -> None:
        self.keep = _check_ratio(keep, "keep")

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        n = graph.num_nodes
        target = max(1, int(n * self.keep))
        src, dst = graph.edge_index.tolist()
        neighbours: list[set[int]] = [set() for _ in range(n)]
        for a, b in zip(src, dst):
            if a != b:
                neighbours[a].add(b)
                neighbours[b].add(a)
        start = int(torch.randint(n, (1,), generator=generator))
        taken, frontier = {start}, set(neighbours[start])
        while len(taken) < target and frontier:
            choices = sorted(frontier)
            node = choices[int(torch.randint(len(choices), (1,), generator=generator))]
            taken.add(node)
            frontier = (frontier | neighbours[node]) - taken
        return keep_nodes(graph, torch.tensor(sorted(taken), dtype=torch.long))


class Identity:
    """The graph as it is (a copy)."""

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        return _copy(graph)


class RandomChoice:
    """One of ``augmentations``, drawn uniformly per call from the generator."""

    def __init__(self, augmentations: Sequence) -> None:
        if not augmentations:
            raise ValueError("RandomChoice needs at least one augmentation")
        self.augmentations = list(augmentations)

    def __call__(self, graph: Data, generator: torch.Generator) -> Data:
        pick = int(torch.randint(len(self.augmentations), (1,), generator=generator))
        return self.augmentations[pick](graph, generator)


GRAPHCL_NAMES = ("dnodes", "pedges", "subgraph", "mask_nodes", "none", "random2", "random3", "random4")


def graphcl_augmentation(name: str, ratio: float = 0.2, subgraph_keep: float = 0.2, fill: str = "zero"):
    """GraphCL's augmentation by its name in the released code (``--aug``): ``dnodes``, ``pedges``,
    ``subgraph``, ``mask_nodes``, ``none``, ``random2`` / ``random3`` / ``random4`` (module docstring)."""
    base = {"dnodes": DropNodes(ratio), "subgraph": Subgraph(subgraph_keep), "pedges": PerturbEdges(ratio),
            "mask_nodes": MaskAttributes(ratio, fill), "none": Identity()}
    if name in base:
        return base[name]
    sets = {"random2": ("dnodes", "subgraph"), "random3": ("dnodes", "pedges", "subgraph"),
            "random4": ("dnodes", "pedges", "subgraph", "mask_nodes")}
    if name not in sets:
        raise ValueError(f"unknown GraphCL augmentation {name!r}; choose from {list(GRAPHCL_NAMES)}")
    return RandomChoice([base[k] for k in sets[name]])


__all__ = ["DropNodes", "PerturbEdges", "MaskAttributes", "Subgraph", "Identity", "RandomChoice", "keep_nodes",
           "graphcl_augmentation", "GRAPHCL_NAMES"]
