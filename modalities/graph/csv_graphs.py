"""Graphs from plain CSV files: a folder holding ``edges.csv`` and optionally ``nodes.csv`` and ``graphs.csv``.

Each file has a header row; ids are any text (``mol_17``, ``3``).

* ``edges.csv`` (required): ``graph_id,src,dst`` then optional categorical edge-label columns named ``label``
  or ``label_<name>`` (integers >= 0). ``src`` and ``dst`` are node ids of that graph. A row is an undirected
  edge (both directions are stored; a pair listed both ways is kept once) unless ``directed=True``.
* ``nodes.csv`` (optional): ``graph_id,node_id`` then any columns: ``label`` / ``label_<name>`` columns are
  categorical node labels (integers >= 0), every other column a float node feature. Nodes are numbered in the
  order of the file within each graph, so a graph may have isolated nodes (and no edges at all). Without
  ``nodes.csv`` the nodes are those the edges name, numbered in order of appearance, with no features.
* ``graphs.csv`` (optional): ``graph_id,label``, an integer class per graph (empty: unlabelled; then every
  graph must be). It also fixes the order of the graphs, else they come in order of first appearance in
  ``nodes.csv``, then ``edges.csv``.

A row with more or fewer fields than the header, a field that is not a number, a node id that ``nodes.csv`` does
not list, a node listed twice or a missing header column stops loading with a one-line error naming the file
and line. The graphs then go through :func:`~selfsup.modalities.graph.data.prepare_graphs` (GraphMAE's feature
rules, self-loops, normalisation).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator

import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce

from selfsup.errors import SelfsupError
from selfsup.modalities.graph.data import GraphSet, prepare_graphs

EDGES, NODES, GRAPHS = "edges.csv", "nodes.csv", "graphs.csv"


def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str], list[str]]]:
    """(line, row as a dict, header) per data row; one-line errors for a missing column or a ragged row."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise SelfsupError(f"{path}: the header needs the columns {','.join(required)}; missing "
                               f"{','.join(missing)} (found {','.join(header) or 'no header'})")
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise SelfsupError(f"{path}:{reader.line_num}: {len(fields)} fields, but the header has "
                                   f"{len(header)}")
            yield reader.line_num, dict(zip(header, (f.strip() for f in fields))), header


def _number(path: Path, line: int, column: str, value: str, kind: type) -> Any:
    try:
        out = kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SelfsupError(f"{path}:{line}: column {column}: {value!r} is not {what}") from None
    if kind is int and out < 0:
        raise SelfsupError(f"{path}:{line}: column {column}: label {out} is negative")
    return out


def _is_label(column: str) -> bool:
    return column == "label" or column.startswith("label_")


class _Graph:
    """One graph as it is read: node ids -> numbers, per-node features and labels, edges."""

    def __init__(self) -> None:
        self.nodes: dict[str, int] = {}
        self.features: list[list[float]] = []
        self.labels: list[list[int]] = []
        self.edges: list[tuple[int, int]] = []
        self.edge_labels: list[list[int]] = []
        self.y: int | None = None

    def node(self, node_id: str) -> int:
        return self.nodes.setdefault(node_id, len(self.nodes))


def _read_nodes(path: Path, graphs: dict[str, _Graph]) -> None:
    for line, row, header in _rows(path, ("graph_id", "node_id")):
        rest = [c for c in header if c not in ("graph_id", "node_id")]
        graph = graphs.setdefault(row["graph_id"], _Graph())
        if row["node_id"] in graph.nodes:
            raise SelfsupError(f"{path}:{line}: graph {row['graph_id']}: node {row['node_id']!r} listed twice")
        graph.node(row["node_id"])
        graph.labels.append([_number(path, line, c, row[c], int) for c in rest if _is_label(c)])
        graph.features.append([_number(path, line, c, row[c], float) for c in rest if not _is_label(c)])


def _read_edges(path: Path, graphs: dict[str, _Graph], nodes_given: bool) -> None:
    for line, row, header in _rows(path, ("graph_id", "src", "dst")):
        rest = [c for c in header if c not in ("graph_id", "src", "dst")]
        unknown = [c for c in rest if not _is_label(c)]
        if unknown:
            raise SelfsupError(f"{path}: column {unknown[0]!r}: edges.csv takes only label / label_<name> columns "
                               f"after graph_id,src,dst")
        graph = graphs.setdefault(row["graph_id"], _Graph())
        for end in ("src", "dst"):
            if nodes_given and row[end] not in graph.nodes:
                raise SelfsupError(f"{path}:{line}: graph {row['graph_id']}: node {row[end]!r} is not in {NODES}")
        graph.edges.append((graph.node(row["src"]), graph.node(row["dst"])))
        graph.edge_labels.append([_number(path, line, c, row[c], int) for c in rest])


def _read_graph_labels(path: Path, graphs: dict[str, _Graph]) -> dict[str, _Graph]:
    ordered: dict[str, _Graph] = {}
    for line, row, _ in _rows(path, ("graph_id", "label")):
        graph = ordered[row["graph_id"]] = graphs.pop(row["graph_id"], None) or _Graph()
        graph.y = _number(path, line, "label", row["label"], int) if row["label"] else None
    if graphs:
        raise SelfsupError(f"{path}: graph {next(iter(graphs))} of the node or edge file is not listed here")
    return ordered


def _to_data(graph: _Graph, directed: bool) -> Data:
    n = len(graph.nodes)
    edges = torch.tensor(graph.edges, dtype=torch.long).reshape(-1, 2).t()
    labels = torch.tensor(graph.edge_labels, dtype=torch.long).reshape(edges.shape[1], -1)
    if not directed and edges.numel():   # both directions, each pair once (a pair's labels: the largest)
        edges, labels = torch.cat([edges, edges.flip(0)], 1), torch.cat([labels, labels])
        if labels.shape[1]:
            edges, labels = coalesce(edges, labels, n, reduce="max")
        else:
            edges = coalesce(edges, num_nodes=n)
            labels = labels.new_zeros(edges.shape[1], 0)
    data = Data(edge_index=edges, num_nodes=n)
    if graph.features and len(graph.features[0]):
        data.x = torch.tensor(graph.features, dtype=torch.float32)
    if graph.labels and len(graph.labels[0]):
        data.node_labels = torch.tensor(graph.labels, dtype=torch.long).squeeze(1)
    if labels.shape[1] and len(labels):
        data.edge_labels = labels.squeeze(1)
    if graph.y is not None:
        data.y = torch.tensor([graph.y])
    return data


def load_csv_graphs(folder: str | Path, directed: bool = False, **prepare: Any) -> GraphSet:
    """The graphs of a CSV folder (module docstring) as a prepared :class:`GraphSet`."""
    root = Path(folder)
    if not (root / EDGES).is_file():
        raise SelfsupError(f"{root}: no {EDGES} in this folder (a CSV graph folder needs {EDGES}, and may have "
                           f"{NODES} and {GRAPHS})")
    graphs: dict[str, _Graph] = {}
    nodes_given = (root / NODES).is_file()
    if nodes_given:
        _read_nodes(root / NODES, graphs)
    _read_edges(root / EDGES, graphs, nodes_given)
    if (root / GRAPHS).is_file():
        graphs = _read_graph_labels(root / GRAPHS, graphs)
    return prepare_graphs([_to_data(g, directed) for g in graphs.values()], str(root), **prepare)


__all__ = ["load_csv_graphs", "EDGES", "NODES", "GRAPHS"]
