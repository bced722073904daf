"""The built-in graph data: SYNTHETIC graphs from three random-graph generators, one class each, needing no
network. The classes are not told apart by size: every graph draws its node count from the same range and has
about 2 edges per node (an average degree of 4) whichever generator made it; what differs is the structure --

* class 0, small world (Watts & Strogatz, 1998): a ring where each node links to its 2 nearest neighbours on
  each side, every edge rewired to a random node with probability 0.3 (2n edges; narrow degrees, many
  triangles);
* class 1, uniform random (Erdős–Rényi G(n, m)): m = 2n distinct edges drawn uniformly (Poisson-like degrees,
  few triangles);
* class 2, preferential attachment (Barabási & Albert, 1999): from a triangle, each new node links to 2
  distinct nodes drawn in proportion to their degree (2n - 3 edges; a few hubs).

A GNN separates them from local structure (degrees, triangles), a count of nodes or edges cannot. Everything
is drawn from a ``torch.Generator`` seeded by ``seed``, so the same seed gives the same graphs.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor
from torch_geometric.data import Data

from selfsup.modalities.graph.data import GraphSet, prepare_graphs

logger = logging.getLogger(__name__)
SYNTHETIC_NOTE = "SYNTHETIC graphs (small-world, uniform-random and preferential-attachment generators, not real data)"
GENERATORS = ("small_world", "uniform_random", "preferential_attachment")


def _undirected(pairs: set[tuple[int, int]]) -> Tensor:
    """Undirected pairs -> (2, 2·|pairs|) edge_index with both directions, sorted."""
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long)
    one = torch.tensor(sorted(pairs), dtype=torch.long).t()
    both = torch.cat([one, one.flip(0)], dim=1)
    return both[:, torch.argsort(both[0] * (int(both.max()) + 1) + both[1])]


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _randint(n: int, g: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=g))


def small_world(n: int, g: torch.Generator, k: int = 2, rewire: float = 0.3) -> Tensor:
    """Watts-Strogatz: ring lattice of ``k`` neighbours each side, each edge rewired with ``rewire``."""
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        for step in range(1, k + 1):
            a, b = i, (i + step) % n
            if float(torch.rand((), generator=g)) < rewire:
                for _ in range(10):   # a new endpoint that makes neither a loop nor a duplicate
                    c = _randint(n, g)
                    if c != a and _pair(a, c) not in pairs:
                        b = c
                        break
            pairs.add(_pair(a, b))
    return _undirected(pairs)


def uniform_random(n: int, g: torch.Generator, per_node: int = 2) -> Tensor:
    """Erdős-Rényi G(n, m) with m = ``per_node`` · n distinct edges."""
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < min(per_node * n, n * (n - 1) // 2):
        a, b = _randint(n, g), _randint(n, g)
        if a != b:
            pairs.add(_pair(a, b))
    return _undirected(pairs)


def preferential_attachment(n: int, g: torch.Generator, m: int = 2) -> Tensor:
    """Barabási-Albert: from a triangle, each new node links to ``m`` distinct nodes chosen by degree."""
    pairs = {(0, 1), (0, 2), (1, 2)}
    ends = [0, 1, 0, 2, 1, 2]             # every edge's endpoints: drawing one uniformly draws by degree
    for new in range(3, n):
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(ends[_randint(len(ends), g)])
        for old in sorted(chosen):
            pairs.add((old, new))
            ends += [old, new]
    return _undirected(pairs)


def synthetic_graphs(num_graphs: int = 300, seed: int = 0, min_nodes: int = 12, max_nodes: int = 30) -> list[Data]:
    """``num_graphs`` graphs, class ``i % 3`` for graph ``i`` (module docstring), ``y`` their class, no node
    features (the pipeline's degree features or the adapter's token), node counts uniform in
    [min_nodes, max_nodes] for every class."""
    g = torch.Generator().manual_seed(seed)
    makers = (small_world, uniform_random, preferential_attachment)
    out = []
    for i in range(num_graphs):
        n = min_nodes + _randint(max_nodes - min_nodes + 1, g)
        label = i % len(makers)
        out.append(Data(edge_index=makers[label](n, g), num_nodes=n, y=torch.tensor([label])))
    return out


def builtin_graphs(num_graphs: int = 300, seed: int = 0, **prepare) -> GraphSet:
    """The synthetic graphs prepared as a :class:`GraphSet` (one-hot degree features unless ``prepare`` says
    otherwise); logs a line saying that they are synthetic."""
    logger.warning("no graph data given: using the built-in %s, %d graphs in 3 classes", SYNTHETIC_NOTE, num_graphs)
    return prepare_graphs(synthetic_graphs(num_graphs, seed), f"built-in {SYNTHETIC_NOTE}", **prepare)


__all__ = ["synthetic_graphs", "builtin_graphs", "small_world", "uniform_random", "preferential_attachment",
           "SYNTHETIC_NOTE", "GENERATORS"]
