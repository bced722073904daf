"""Graph data sets whose examples carry their per-example seed, and two-view (GraphCL-style) batches.

:class:`GraphExamples` yields ``{"graph": Data, "seed": example_seed(seed, epoch, i)}`` (as
``selfsup.data.SeededExamples``), so an objective's masks are the example's own whichever process or batch it
lands in; :func:`collate_graphs` turns a list of them into a batch with ``example_seeds``.

:class:`GraphViewDataset` draws view ``v`` of example ``i`` in ``epoch`` from a ``torch.Generator`` seeded by
``example_seed(seed, epoch, i, stream=VIEW_STREAM + v)``: the same views in any process, DataLoader worker,
batch or order, and in a resumed run. :func:`collate_graph_views` gives ``{"views": [batch, batch, ...],
"example_seeds": (B,), "graph_labels": (B,)}``, each view a batch in the package format that the adapter reads.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from selfsup.data import VIEW_STREAM, example_seed, view_generator
from selfsup.modalities.graph.batch import GRAPH_LABELS, collate_graphs
from selfsup.types import EXAMPLE_SEEDS, VIEWS

Augmentation = Callable[[Data, torch.Generator], Data]


class GraphExamples(Dataset):
    """A list of graphs as seeded examples ``{"graph": Data, "seed": int}``; call :meth:`set_epoch` each epoch
    (``selfsup.data.set_loader_position`` does)."""

    def __init__(self, graphs: Sequence[Data], seed: int = 0) -> None:
        self.graphs, self.seed, self.epoch = graphs, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"graph": self.graphs[index], "seed": example_seed(self.seed, self.epoch, index)}


class GraphViewDataset(Dataset):
    """Augmented views of each graph: ``augmentations`` one per view (two views of one augmentation: pass it
    twice, or ``num_views``). ``__getitem__(i)`` -> ``{"views": [Data per view], "graph": the original,
    "seed": example_seed(seed, epoch, i)}``."""

    def __init__(self, graphs: Sequence[Data], augmentations: Sequence[Augmentation] | Augmentation,
                 seed: int = 0, num_views: int = 2) -> None:
        self.graphs, self.seed, self.epoch = graphs, seed, 0
        self.augmentations = list(augmentations) if isinstance(augmentations, (list, tuple)) \
            else [augmentations] * num_views
        if not self.augmentations:
            raise ValueError("GraphViewDataset needs at least one augmentation")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.graphs)

    def view(self, index: int, v: int) -> Data:
        """View ``v`` of example ``index``, drawn from its own generator."""
        return self.augmentations[v](self.graphs[index], view_generator(self.seed, self.epoch, index, v))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"views": [self.view(index, v) for v in range(len(self.augmentations))],
                "graph": self.graphs[index], "seed": example_seed(self.seed, self.epoch, index)}


def collate_graph_views(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"views": [one packed batch per view], "example_seeds": (B,), "graph_labels": (B,) when labelled}``."""
    num_views = len(examples[0]["views"])
    batch: dict[str, Any] = {VIEWS: [collate_graphs([e["views"][v] for e in examples]) for v in range(num_views)],
                             EXAMPLE_SEEDS: torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)}
    originals = collate_graphs([e["graph"] for e in examples])
    if GRAPH_LABELS in originals:
        batch[GRAPH_LABELS] = originals[GRAPH_LABELS]
    return batch


__all__ = ["GraphExamples", "GraphViewDataset", "collate_graph_views", "view_generator", "VIEW_STREAM"]
