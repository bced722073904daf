"""Graph-level data sets: checks, GraphMAE's feature rules, and the loaders (TU, any InMemoryDataset, a saved
list of ``Data``); the CSV format is in ``csv_graphs.py``, the built-in synthetic graphs in ``synthetic.py``.

Every loader ends in :func:`prepare_graphs`, which checks each graph (a one-line :class:`SelfsupError` naming
the source and the graph index for no nodes, an ``edge_index`` out of range or NaN / infinite features; no
edges, isolated nodes, a single node and missing features are fine) and rebuilds it in the package's ``Data``
convention with node features by GraphMAE's rules (``load_graph_classification_dataset``):

* ``features="auto"``: the graphs' own ``x`` when every graph has one (PyG's ``TUDataset`` gives the one-hot
  node labels: 7 columns for MUTAG, 3 for PROTEINS with ``use_node_attr=False``); else one-hot
  ``node_labels`` (max label + 1 columns); else one-hot node degree capped at 400 (min(max degree, 400) + 1
  columns, the in-degree before any self-loop is added). ``"x"``, ``"node_labels"``, ``"degree"`` force one;
  ``"none"`` gives (n, 0) features (the adapter's learned node token).
* ``self_loops=True``: remove and re-add self-loops on every graph (GraphMAE's
  ``remove_self_loop().add_self_loop()``); a loop gets a new edge label (``edge_label_sizes`` grows by one).
* ``normalize=True``: row-normalise the features (PyG's ``NormalizeFeatures``; DGL's Cora features are).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import AddRandomWalkPE, NormalizeFeatures
from torch_geometric.utils import add_self_loops, degree, remove_self_loops

from selfsup.data import check_files
from selfsup.errors import SelfsupError

FEATURE_RULES = ("auto", "x", "node_labels", "degree", "none")
MAX_DEGREE = 400   # GraphMAE's cap of the one-hot degree


@dataclass
class GraphSet:
    """A prepared graph-level data set: ``graphs`` in the package's ``Data`` convention, ``num_features`` F,
    ``num_classes`` of the graph labels (0 when unlabelled), ``features`` the rule that made the features,
    ``source`` for messages and model cards, and the label sizes the adapter embeds."""

    graphs: list[Data]
    num_features: int
    num_classes: int
    features: str
    source: str
    node_label_sizes: tuple[int, ...] = ()
    edge_label_sizes: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Data:
        return self.graphs[index]

    @property
    def labels(self) -> list[int]:
        return [int(g.y) for g in self.graphs] if self.num_classes else []


def check_graph(graph: Data, where: str, index: int) -> None:
    """A one-line :class:`SelfsupError` ``"{where}: graph {index}: ..."`` for a graph nothing can embed."""
    n = graph.num_nodes
    if not n:
        raise SelfsupError(f"{where}: graph {index} has no nodes")
    edges = graph.edge_index
    if edges is not None and edges.numel():
        if edges.dim() != 2 or edges.shape[0] != 2:
            raise SelfsupError(f"{where}: graph {index}: edge_index of shape {tuple(edges.shape)}, expected (2, E)")
        low, high = int(edges.min()), int(edges.max())
        if low < 0 or high >= n:
            raise SelfsupError(f"{where}: graph {index}: edge_index names node {high if high >= n else low}, but "
                               f"the graph has {n} nodes (0..{n - 1})")
    x = getattr(graph, "x", None)
    if x is not None:
        if x.shape[0] != n:
            raise SelfsupError(f"{where}: graph {index}: {x.shape[0]} rows of node features for {n} nodes")
        bad = (~torch.isfinite(x.reshape(n, -1).float())).any(dim=1).nonzero()
        if len(bad):
            raise SelfsupError(f"{where}: graph {index}: node {int(bad[0])} has a NaN or infinite feature")


def _rule(graphs: Sequence[Data], features: str) -> str:
    if features not in FEATURE_RULES:
        raise ValueError(f"unknown features rule {features!r}; choose from {list(FEATURE_RULES)}")
    if features != "auto":
        return features
    if all(getattr(g, "x", None) is not None and g.x.numel() for g in graphs):
        return "x"
    return "node_labels" if all(getattr(g, "node_labels", None) is not None for g in graphs) else "degree"


def _in_degrees(graph: Data) -> Tensor:
    edges = graph.edge_index if graph.edge_index is not None else torch.zeros(2, 0, dtype=torch.long)
    return degree(edges[1], graph.num_nodes, dtype=torch.long)


def node_features(graphs: Sequence[Data], rule: str, where: str, width: int | None = None) -> list[Tensor]:
    """Each graph's (n, F) float features by ``rule`` (module docstring); ``width`` fixes F (an evaluation set
    matching a training set), else it comes from the data."""
    if rule == "x":
        missing = [i for i, g in enumerate(graphs) if getattr(g, "x", None) is None]
        if missing:
            raise SelfsupError(f"{where}: graph {missing[0]} has no node features (x), which features='x' needs")
        return [g.x.reshape(g.num_nodes, -1).float() for g in graphs]
    if rule == "none":
        return [torch.zeros(g.num_nodes, 0) for g in graphs]
    if rule == "node_labels":
        missing = [i for i, g in enumerate(graphs) if getattr(g, "node_labels", None) is None]
        if missing:
            raise SelfsupError(f"{where}: graph {missing[0]} has no node_labels, which features='node_labels' needs")
        values = [g.node_labels.reshape(g.num_nodes, -1)[:, 0].long() for g in graphs]
    else:
        values = [_in_degrees(g).clamp(max=MAX_DEGREE) for g in graphs]
    width = width or int(max(int(v.max()) for v in values)) + 1
    return [F.one_hot(v.clamp(max=width - 1), width).float() for v in values]


def _with_loops(edges: Tensor, num_nodes: int, edge_labels: Tensor | None,
                loop_labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """GraphMAE's remove_self_loop().add_self_loop(); the loops' edge labels are ``loop_labels`` (k,)."""
    edges, labels = remove_self_loops(edges, edge_labels)
    if labels is None:
        return add_self_loops(edges, num_nodes=num_nodes)[0], None
    fill = loop_labels.to(labels.dtype).reshape(1, *labels.shape[1:]).expand(num_nodes, *labels.shape[1:])
    loops = torch.arange(num_nodes).repeat(2, 1)
    return torch.cat([edges, loops], dim=1), torch.cat([labels, fill])


def _label_sizes(graphs: Sequence[Data], attr: str) -> tuple[int, ...]:
    values = [getattr(g, attr).reshape(len(getattr(g, attr)), -1) for g in graphs]
    values = [v for v in values if len(v)]
    return tuple(int(c) + 1 for c in torch.cat(values).amax(dim=0)) if values else ()


def random_walk_encoding(graph: Data, steps: int) -> Tensor:
    """(n, steps) random-walk structural encoding (Dwivedi et al., ICLR 2022): the probability of a walk from
    each node returning to it after 1..steps steps, by ``torch_geometric.transforms.AddRandomWalkPE``."""
    if graph.num_nodes == 0:
        return torch.zeros(0, steps)
    return AddRandomWalkPE(steps, attr_name="node_pe")(Data(edge_index=graph.edge_index,
                                                             num_nodes=graph.num_nodes)).node_pe.float()


def prepare_graphs(graphs: Sequence[Data], where: str, features: str = "auto", self_loops: bool = False,
                   normalize: bool = False, num_features: int | None = None,
                   structural_encoding: int = 0) -> GraphSet:
    """Check ``graphs`` (:func:`check_graph`) and rebuild them in the package convention (module docstring);
    ``structural_encoding`` > 0 adds ``node_pe``, the random-walk encoding of that many steps."""
    graphs = list(graphs)
    if not graphs:
        raise SelfsupError(f"{where}: no graphs")
    for i, g in enumerate(graphs):
        check_graph(g, where, i)
    rule = _rule(graphs, features)
    xs = node_features(graphs, rule, where, num_features)
    if normalize:
        xs = [NormalizeFeatures()(Data(x=x)).x if x.numel() else x for x in xs]
    has_edge_labels = all(getattr(g, "edge_labels", None) is not None for g in graphs)
    edge_sizes = _label_sizes(graphs, "edge_labels") if has_edge_labels else ()
    has_edge_labels = has_edge_labels and bool(edge_sizes)      # labels of no edge at all: none
    loop_labels = torch.tensor([edge_sizes[0]] + [0] * (len(edge_sizes) - 1)) if edge_sizes else None
    out = []
    for g, x in zip(graphs, xs):
        edges = g.edge_index.long() if g.edge_index is not None else torch.zeros(2, 0, dtype=torch.long)
        labels = g.edge_labels.long() if has_edge_labels else None
        if self_loops:
            edges, labels = _with_loops(edges, g.num_nodes, labels, loop_labels)
        new = Data(x=x, edge_index=edges, num_nodes=g.num_nodes)
        if labels is not None:
            new.edge_labels = labels
        for attr in ("node_labels", "node_pe"):
            if getattr(g, attr, None) is not None:
                setattr(new, attr, getattr(g, attr))
        if getattr(g, "y", None) is not None:
            new.y = g.y.reshape(-1)[:1]
        if structural_encoding:
            new.node_pe = random_walk_encoding(new, structural_encoding)
        out.append(new)
    if self_loops and edge_sizes:
        edge_sizes = (edge_sizes[0] + 1, *edge_sizes[1:])   # the loops' own label
    node_sizes = _label_sizes(out, "node_labels") if all(getattr(g, "node_labels", None) is not None
                                                           for g in out) else ()
    labels = [int(g.y) for g in out if getattr(g, "y", None) is not None and not g.y.is_floating_point()]
    num_classes = max(labels) + 1 if len(labels) == len(out) else 0
    return GraphSet(out, int(xs[0].shape[1]), num_classes, rule, where, node_sizes, edge_sizes)


def _edge_labels_from_one_hot(graph: Data) -> None:
    """TUDataset's one-hot ``edge_attr`` -> categorical ``edge_labels`` (E,); continuous attributes are left."""
    attr = getattr(graph, "edge_attr", None)
    if attr is not None and attr.numel() and ((attr == 0) | (attr == 1)).all() and (attr.sum(dim=1) == 1).all():
        graph.edge_labels = attr.argmax(dim=1)


def load_tu(root: str | Path, name: str, use_node_attr: bool = False, **prepare: Any) -> GraphSet:
    """A TU data set from ``root/name/raw/`` (the raw TU files), read by PyG's ``TUDataset`` from a temporary
    copy (``processed/`` is written there, so ``root`` may be read-only); ``prepare`` goes to
    :func:`prepare_graphs`."""
    from torch_geometric.datasets import TUDataset

    raw = Path(root) / name / "raw"
    if not (raw / f"{name}_A.txt").is_file():
        raise SelfsupError(f"{raw}: no TU data set {name} here (expected {name}_A.txt and the other raw files)")
    with tempfile.TemporaryDirectory(prefix="selfsup-tu-") as tmp:
        shutil.copytree(raw, Path(tmp) / name / "raw")
        try:
            with torch.serialization.safe_globals(pyg_safe_globals()):   # PyG would fall back to unpickling
                dataset = TUDataset(tmp, name, use_node_attr=use_node_attr)
        except Exception as err:  # noqa: BLE001 - PyG's readers raise many types on malformed files
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SelfsupError(f"{raw}: could not read the TU files ({type(err).__name__}: {first})") from None
        graphs = [dataset[i] for i in range(len(dataset))]
    for g in graphs:
        _edge_labels_from_one_hot(g)
    return prepare_graphs(graphs, f"{raw} ({name})", **prepare)


def from_dataset(dataset: Any, where: str | None = None, **prepare: Any) -> GraphSet:
    """Any PyG data set (an ``InMemoryDataset`` instance, or a list of ``Data``) -> :class:`GraphSet`."""
    where = where or f"{type(dataset).__name__} data set"
    return prepare_graphs([dataset[i] for i in range(len(dataset))], where, **prepare)


def pyg_safe_globals() -> list[type]:
    """The PyG classes a ``torch.save``-d list of ``Data`` needs to load with ``weights_only=True``."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import EdgeStorage, GlobalStorage, NodeStorage

    return [Data, DataEdgeAttr, DataTensorAttr, GlobalStorage, NodeStorage, EdgeStorage]


def load_saved(path: str | Path, **prepare: Any) -> GraphSet:
    """A list of ``Data`` saved with ``torch.save``, loaded with ``weights_only=True`` (only PyG's data classes
    are allowed, nothing else is unpickled)."""
    (path,) = check_files([path], (".pt", ".pth"), "saved graph list")
    try:
        with torch.serialization.safe_globals(pyg_safe_globals()):
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - the unpickler's many error types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SelfsupError(f"{path}: not a list of torch_geometric Data objects loadable with weights_only=True "
                           f"({first[:160]})") from None
    graphs = [obj] if isinstance(obj, Data) else obj
    if not isinstance(graphs, (list, tuple)) or not all(isinstance(g, Data) for g in graphs):
        raise SelfsupError(f"{path}: expected a list of torch_geometric Data objects, found {type(obj).__name__}")
    return prepare_graphs(graphs, str(path), **prepare)


__all__ = ["GraphSet", "check_graph", "prepare_graphs", "random_walk_encoding", "node_features", "load_tu", "from_dataset", "load_saved",
           "pyg_safe_globals", "FEATURE_RULES", "MAX_DEGREE"]
