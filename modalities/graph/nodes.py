"""Node-level data on one large graph (Cora, KarateClub): full-graph batches and neighbour-sampled mini-batches.

* :func:`load_planetoid` reads a Planetoid graph (Cora, CiteSeer, PubMed) with ``torch_geometric.datasets.
  Planetoid`` from a temporary copy of ``root/name/raw`` (``processed/`` is written there), with GraphMAE's
  preprocessing options (self-loops removed and re-added; row-normalised features, as DGL's Cora), and keeps
  the public split masks (``train_mask`` / ``val_mask`` / ``test_mask``: 140 / 500 / 1,000 nodes on Cora) and
  the classes (``node_classes``) for the probe. :func:`karate_club` is PyG's bundled KarateClub (34 nodes).
* :func:`full_graph_batch`: the whole graph as one batch (B = 1) in the package format, with ``node_ids``
  (T,) = 0..n-1 and ``node_classes``.
* :func:`neighbor_loader`: ``torch_geometric.loader.NeighborLoader`` mini-batches around ``batch_size`` seed
  nodes, each turned into the same batch format (one graph per mini-batch, ``B = 1``): the seed nodes come first,
  ``num_seed_nodes`` (1,) says how many, and ``node_ids`` (T,) maps every node back to the big graph, so that
  every node's embedding can be written out. Sampling is :class:`SeededNeighborSampler`'s: PyG's uniform
  "directional" rule (up to ``num_neighbors[h]`` incoming edges per node at hop h, without replacement) in plain
  torch, so it needs neither ``pyg-lib`` nor ``torch-sparse``, drawing each batch from a generator seeded by
  (seed, epoch, first input position): the same batches in a resumed run.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.sampler import NeighborSampler, NodeSamplerInput, SamplerOutput

from selfsup.data import example_seed
from selfsup.errors import SelfsupError
from selfsup.modalities.graph.batch import NUM_SEED_NODES, collate_graphs
from selfsup.modalities.graph.data import check_graph, prepare_graphs, pyg_safe_globals
from selfsup.types import EXAMPLE_SEEDS

SPLITS = ("train_mask", "val_mask", "test_mask")


def _node_level(graph: Data, where: str, self_loops: bool, normalize: bool) -> Data:
    """GraphMAE's preprocessing of a node-level graph; classes and split masks kept."""
    prepared = prepare_graphs([Data(x=graph.x, edge_index=graph.edge_index, num_nodes=graph.num_nodes)], where,
                              features="x", self_loops=self_loops, normalize=normalize).graphs[0]
    prepared.node_classes = graph.y.long()
    prepared.node_ids = torch.arange(graph.num_nodes)
    for split in SPLITS:
        if getattr(graph, split, None) is not None:
            setattr(prepared, split, graph[split])
    return prepared


def load_planetoid(root: str | Path, name: str = "Cora", self_loops: bool = True, normalize: bool = True) -> Data:
    """A Planetoid graph from ``root/name/raw`` (module docstring), in the package's ``Data`` convention."""
    from torch_geometric.datasets import Planetoid

    raw = Path(root) / name / "raw"
    if not raw.is_dir() or not any(raw.glob(f"ind.{name.lower()}.*")):
        raise SelfsupError(f"{raw}: no Planetoid files ind.{name.lower()}.* here")
    with tempfile.TemporaryDirectory(prefix="selfsup-planetoid-") as tmp:
        shutil.copytree(raw, Path(tmp) / name / "raw")
        try:
            with torch.serialization.safe_globals(pyg_safe_globals()):   # PyG would fall back to unpickling
                graph = Planetoid(tmp, name)[0]
        except Exception as err:  # noqa: BLE001 - PyG's readers raise many types on malformed files
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SelfsupError(f"{raw}: could not read the Planetoid files ({type(err).__name__}: {first})") from None
    return _node_level(graph, f"{raw} ({name})", self_loops, normalize)


def karate_club(self_loops: bool = True) -> Data:
    """PyG's bundled KarateClub (34 nodes, one-hot identity features, 4 classes), in the package convention."""
    from torch_geometric.datasets import KarateClub

    return _node_level(KarateClub()[0], "KarateClub", self_loops, normalize=False)


def full_graph_batch(graph: Data, seed: int | None = None) -> dict[str, Any]:
    """The whole graph as one batch (B = 1), with ``node_ids`` and ``node_classes`` (and ``example_seeds``)."""
    check_graph(graph, "node-level graph", 0)
    return collate_graphs([graph if seed is None else {"graph": graph, "seed": seed}])


def split_masks(graph: Data) -> dict[str, Tensor]:
    """The (n,) bool split masks the graph has (``train_mask``, ``val_mask``, ``test_mask``)."""
    return {s: graph[s] for s in SPLITS if getattr(graph, s, None) is not None}


class SeededNeighborSampler(NeighborSampler):
    """PyG's ``NeighborSampler`` (its CSC layout and output) with uniform directional sampling in plain torch,
    drawn from a generator seeded per batch by ``example_seed(seed, epoch, first input position)``."""

    def __init__(self, data: Data, num_neighbors: Sequence[int], seed: int = 0) -> None:
        import warnings

        with warnings.catch_warnings():    # "without pyg-lib is deprecated": this class does the sampling
            warnings.simplefilter("ignore")
            super().__init__(data, num_neighbors=list(num_neighbors))
        self.fanouts, self.seed, self.epoch = [int(k) for k in num_neighbors], seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample_from_nodes(self, inputs: NodeSamplerInput) -> SamplerOutput:
        first = int(inputs.input_id[0]) if inputs.input_id is not None and len(inputs.input_id) else 0
        generator = torch.Generator().manual_seed(example_seed(self.seed, self.epoch, first))
        out = self.sample_seeded(inputs.node, generator)
        out.metadata = (inputs.input_id, inputs.time)
        return out

    def _hop(self, frontier: Tensor, fanout: int, generator: torch.Generator) -> Tensor:
        """Positions (in CSC order) of up to ``fanout`` incoming edges per frontier node, drawn uniformly."""
        starts, counts = self.colptr[frontier], self.colptr[frontier + 1] - self.colptr[frontier]
        owner = torch.repeat_interleave(torch.arange(len(frontier)), counts)
        offset = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        positions = starts[owner] + offset
        if fanout < 0:
            return positions
        order = torch.argsort(owner.double() + torch.rand(len(owner), generator=generator, dtype=torch.float64))
        rank = torch.arange(len(order)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return positions[order][rank < fanout]

    def sample_seeded(self, seeds: Tensor, generator: torch.Generator) -> SamplerOutput:
        """Seeds first, then each hop's new nodes in order of first appearance; edges neighbour -> node."""
        local = torch.full((self.num_nodes,), -1, dtype=torch.long)
        local[seeds] = torch.arange(len(seeds))
        nodes, frontier, rows, cols, edges = [seeds], seeds, [], [], []
        per_hop_nodes, per_hop_edges = [len(seeds)], []
        for fanout in self.fanouts:
            positions = self._hop(frontier, fanout, generator)
            sources, targets = self.row[positions], torch.repeat_interleave(frontier, self._counts(frontier, fanout))
            fresh = sources[local[sources] < 0]
            uniq, inverse = torch.unique(fresh, return_inverse=True)
            first_seen = torch.full((len(uniq),), len(fresh), dtype=torch.long).scatter_reduce(
                0, inverse, torch.arange(len(fresh)), reduce="amin")
            new = uniq[torch.argsort(first_seen)]
            local[new] = torch.arange(len(new)) + sum(per_hop_nodes)
            rows.append(local[sources]), cols.append(local[targets]), edges.append(positions)
            nodes.append(new)
            per_hop_nodes.append(len(new))
            per_hop_edges.append(len(positions))
            frontier = new
        return SamplerOutput(node=torch.cat(nodes), row=torch.cat(rows), col=torch.cat(cols), edge=torch.cat(edges),
                             num_sampled_nodes=per_hop_nodes, num_sampled_edges=per_hop_edges)

    def _counts(self, frontier: Tensor, fanout: int) -> Tensor:
        degrees = self.colptr[frontier + 1] - self.colptr[frontier]
        return degrees if fanout < 0 else degrees.clamp(max=fanout)


def neighbor_batch(sub: Data) -> dict[str, Any]:
    """A ``NeighborLoader`` mini-batch (a ``Data`` with ``n_id`` and ``batch_size``) -> the package format."""
    graph = Data(x=sub.x, edge_index=sub.edge_index, num_nodes=sub.num_nodes, node_ids=sub.n_id)
    for attr in ("node_classes", "node_pe"):
        if getattr(sub, attr, None) is not None:
            setattr(graph, attr, getattr(sub, attr))
    batch = collate_graphs([graph])
    batch[NUM_SEED_NODES] = torch.tensor([int(sub.batch_size)])
    return batch


class SeedNodes(Dataset):
    """The nodes of one large graph as training examples ``{"node", "seed"}`` for the engine's sharded, resumable
    loader (``selfsup.data.make_train_loader``): :meth:`collate` turns a batch of seed nodes into their sampled
    neighbourhood (:class:`SeededNeighborSampler`, ``num_neighbors[h]`` per node at hop h, drawn from the first
    example's seed: the same subgraph in a resumed run) in the package format, seed nodes first. Each process
    samples around its own seed nodes, so with several processes the subgraphs (not the seed nodes) differ from
    one process's."""

    def __init__(self, graph: Data, num_neighbors: Sequence[int], seed: int = 0,
                 input_nodes: Tensor | None = None) -> None:
        check_graph(graph, "node-level graph", 0)
        if not num_neighbors or any(int(k) == 0 or int(k) < -1 for k in num_neighbors):
            raise SelfsupError(f"--num_neighbors {list(num_neighbors)}: one fan-out per hop, each > 0 (or -1: all)")
        self.graph, self.seed, self.epoch = graph, seed, 0
        self.nodes = torch.arange(graph.num_nodes) if input_nodes is None else torch.as_tensor(input_nodes)
        self.sampler = SeededNeighborSampler(graph, num_neighbors, seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, index: int) -> dict[str, int]:
        return {"node": int(self.nodes[index]), "seed": example_seed(self.seed, self.epoch, index)}

    def collate(self, examples: Sequence[dict[str, int]]) -> dict[str, Any]:
        seeds = torch.tensor([e["node"] for e in examples], dtype=torch.long)
        out = self.sampler.sample_seeded(seeds, torch.Generator().manual_seed(int(examples[0]["seed"])))
        g = self.graph
        sub = Data(x=g.x[out.node] if g.x is not None else None, edge_index=torch.stack([out.row, out.col]),
                   num_nodes=len(out.node), n_id=out.node, batch_size=len(seeds))
        for attr in ("node_classes", "node_pe"):
            if getattr(g, attr, None) is not None:
                setattr(sub, attr, getattr(g, attr)[out.node])
        batch = neighbor_batch(sub)
        batch[EXAMPLE_SEEDS] = torch.tensor([int(examples[0]["seed"])])
        return batch


def neighbor_loader(graph: Data, num_neighbors: Sequence[int], batch_size: int, seed: int = 0,
                    input_nodes: Tensor | None = None, shuffle: bool = True):
    """A ``torch_geometric.loader.NeighborLoader`` over ``graph`` (module docstring) yielding batch dicts."""
    from torch_geometric.loader import NeighborLoader

    sampler = SeededNeighborSampler(graph, num_neighbors, seed)
    keep = Data(x=graph.x, edge_index=graph.edge_index, num_nodes=graph.num_nodes)
    if getattr(graph, "node_classes", None) is not None:
        keep.node_classes = graph.node_classes
    return NeighborLoader(keep, num_neighbors=list(num_neighbors), input_nodes=input_nodes, batch_size=batch_size,
                          shuffle=shuffle, neighbor_sampler=sampler, transform=neighbor_batch,
                          generator=torch.Generator().manual_seed(seed))


__all__ = ["load_planetoid", "karate_club", "full_graph_batch", "split_masks", "neighbor_loader", "SeedNodes", "neighbor_batch",
           "SeededNeighborSampler", "SPLITS"]
