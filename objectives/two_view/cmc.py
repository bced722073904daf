"""Contrastive Multiview Coding (Tian, Krishnan & Isola, ECCV 2020, "Contrastive Multiview Coding"): one encoder
per view, each view's embedding contrasted against the other views' embeddings of the same example.

``batch["views"]`` holds ``num_views`` views of each example, each of its own kind (on images the L and the ab
channels of one crop, ``modalities/image_views.LabViews``); view v goes through encoder v. Encoder 1 is the given
one, the others ``copy.deepcopy`` of it (the paper splits one network into halves of one architecture), each with
a linear head to ``out_dim`` (128), L2-normalised: z_v. For an ordered pair of views (i, j) the contrastive loss
from i to j is a softmax cross-entropy over temperature-scaled dot products (T = 0.07) of z_i with candidates of
view j: the positive is the same example's, the negatives

* ``negatives="batch"``: view j's embeddings of every other example of the global batch (gathered across
  processes with gradient), as CLIP and SimCLR across the two views (the same-view negatives left out);
* ``negatives="bank"``: ``num_negatives`` (K) rows of view j's memory bank drawn uniformly, the positive being the
  example's own bank row (CMC's ``NCEAverage`` with its NCE-free softmax, ``NCESoftmaxLoss``). One bank per view
  (num_views, num_examples, out_dim), random unit rows at first (seeded); after the loss every view's rows of the
  batch move, v <- normalise(m v + (1 - m) z) with m = ``bank_momentum`` (0.5), with every process's rows
  gathered first so that the banks of all processes stay identical. One draw of K indices per example and step,
  shared by all pairs; the draw is the global batch's (N processes draw what one draws).

``graph="full"`` sums the loss over every pair of views, both directions (the paper's full graph, eq. 7);
``graph="core"``: the pairs of view 1 with each other view, both directions (the core view, eq. 6). The loss is
summed over the batch with ``num_targets = B``: per example it is the sum over the pairs, the paper's
L(V1, V2) = L_contrast^{V1,V2} + L_contrast^{V2,V1} for two views.

``encoder()`` is a :class:`ViewsEncoder`: the feature of an example is the concatenation of each encoder's
pooled feature of its own view (the paper's evaluation: the L encoder's on L with the ab encoder's on ab), read
from ``{"views": [...]}`` batches (the image recipe makes them from an evaluation image with the pipeline's
``eval_views``). The banks and the draw counter are persistent buffers: checkpoints save them.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import gather_with_grad, global_count, row_offset
from selfsup.objectives.two_view.common import gather_rows, get_views
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import EXAMPLE_INDEX, VIEWS, BackboneOutput, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class CMCConfig:
    """num_views: views per example (2 or more); out_dim: the embedding width; temperature: T; negatives: "batch"
    (in-batch) or "bank" (memory banks, ``num_negatives`` rows drawn, needs ``num_examples``, which the builder
    fills); bank_momentum: m of the bank update; graph: "full" (every pair) or "core" (view 1 with each other);
    seed: the banks' initialisation and the negatives' draws; view_names: what the views are (the encoders'
    names in ``encoder().parts`` and their exports; the pipeline gives them, e.g. ("L", "ab"))."""

    num_views: int = 2
    out_dim: int = 128
    temperature: float = 0.07
    negatives: str = "batch"
    num_negatives: int = 16384
    bank_momentum: float = 0.5
    graph: str = "full"
    num_examples: int = 0
    seed: int = 0
    view_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.negatives not in ("batch", "bank"):
            raise ValueError(f"unknown CMC negatives {self.negatives!r}; choose 'batch' or 'bank'")
        if self.graph not in ("full", "core"):
            raise ValueError(f"unknown CMC graph {self.graph!r}; choose 'full' or 'core'")
        if self.num_views < 2:
            raise ValueError(f"CMC needs at least 2 views, got {self.num_views}")
        self.view_names = tuple(self.view_names)
        if self.view_names and len(self.view_names) != self.num_views:
            raise ValueError(f"{len(self.view_names)} view names for {self.num_views} views")

    def to_dict(self) -> dict:
        return asdict(self)

    def pairs(self) -> list[tuple[int, int]]:
        """The ordered pairs (anchor view, candidate view) the loss sums over."""
        m = self.num_views
        if self.graph == "core":
            return [p for j in range(1, m) for p in ((0, j), (j, 0))]
        return [p for i in range(m) for j in range(i + 1, m) for p in ((i, j), (j, i))]


class ViewsEncoder(Encoder):
    """Several encoders, encoder v reading view v of ``{"views": [batch per view]}``: the feature of an example is
    their pooled features concatenated, in view order. ``adapter`` / ``backbone`` / ``pooling`` are the first
    encoder's (what a recipe inspects); ``parts`` names each encoder (its export)."""

    def __init__(self, encoders: Sequence[Encoder], names: Sequence[str] | None = None) -> None:
        first = encoders[0]
        super().__init__(first.adapter, first.backbone, first.pooling, first.layers)
        self.encoders = nn.ModuleList(encoders)
        self.names = list(names or [f"view_{v + 1}" for v in range(len(encoders))])

    @property
    def parts(self) -> dict[str, Encoder]:
        return dict(zip(self.names, self.encoders))

    def views(self, batch: Batch) -> list[Batch]:
        views = batch.get(VIEWS)
        if not isinstance(views, (list, tuple)) or len(views) != len(self.encoders):
            raise ValueError(f"this encoder reads {len(self.encoders)} views, one per encoder: batch['views'] must "
                             f"be a list of {len(self.encoders)} batches (the image recipe makes them from an "
                             "evaluation image with the view pipeline's eval_views)")
        return list(views)

    def forward(self, batch: Batch, output_hidden_states: bool = False) -> tuple[BackboneOutput, Tensor | None]:
        """Every encoder's output on its view, concatenated along the features (the views' token grids agree)."""
        outs = [e(v, output_hidden_states) for e, v in zip(self.encoders, self.views(batch))]
        last = torch.cat([o.last_hidden_state for o, _ in outs], dim=-1)
        states = None
        if output_hidden_states:
            states = tuple(torch.cat(layer, dim=-1) for layer in zip(*(o.hidden_states for o, _ in outs)))
        return BackboneOutput(last, states), outs[0][1]

    def features(self, batch: Batch) -> Tensor:
        return torch.cat([e.features(v) for e, v in zip(self.encoders, self.views(batch))], dim=-1)

    @property
    def feature_size(self) -> int:
        return sum(e.feature_size for e in self.encoders)

    @torch.no_grad()
    def pooled_views(self, batch: Batch, views: Sequence[str] = ("last",)) -> dict[str, Tensor]:
        outs = [e.pooled_views(v, views) for e, v in zip(self.encoders, self.views(batch))]
        return {k: torch.cat([o[k] for o in outs], dim=-1) for k in outs[0]}


def bank_scores(z: Tensor, bank: Tensor, candidates: Tensor, by_rows: bool | None = None) -> Tensor:
    """(B, C) dot products of z (B, D) with the bank rows ``candidates`` (B, C) of ``bank`` (N, D): by gathering the
    B * C rows (CMC's ``NCEAverage``), or, when the bank has fewer rows than that times D (``by_rows=None``: the
    cheaper; a small data set), as z @ bank.T and its C columns per row. The bank is updated in place before the
    backward pass, so what the graph keeps of it is a copy."""
    if by_rows is None:
        by_rows = bank.shape[0] > candidates.shape[1] * bank.shape[1]
    if by_rows:
        return torch.einsum("bkd,bd->bk", bank[candidates].to(z.dtype), z)       # the gathered rows: a copy
    return (z @ bank.clone().to(z.dtype).T).gather(1, candidates)


class CMC(Objective):
    def __init__(self, encoder: Encoder, config: CMCConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CMCConfig()
        if c.negatives == "bank" and c.num_examples <= 0:
            raise ValueError("CMC with negatives='bank' needs num_examples > 0 (the training set's size, for its "
                             f"memory banks); got {c.num_examples}")
        self.encoders = nn.ModuleList([encoder] + [copy.deepcopy(encoder) for _ in range(c.num_views - 1)])
        self.heads = nn.ModuleList([nn.Linear(encoder.feature_size, c.out_dim) for _ in range(c.num_views)])
        if c.negatives == "bank":
            g = torch.Generator().manual_seed(c.seed)
            bank = F.normalize(torch.randn(c.num_views, c.num_examples, c.out_dim, generator=g), dim=-1)
            self.register_buffer("bank", bank, persistent=True)
            self.register_buffer("draws", torch.zeros((), dtype=torch.long), persistent=True)

    def embeddings(self, batch: Batch) -> list[Tensor]:
        """(B, out_dim) unit embeddings, one per view, each from its own encoder and head."""
        views = get_views(batch, need=self.config.num_views)[:self.config.num_views]
        return [F.normalize(head(enc.features(v)), dim=-1)
                for enc, head, v in zip(self.encoders, self.heads, views)]

    def sample_negatives(self, n: int, device: torch.device) -> Tensor:
        """(n, K) bank indices drawn uniformly for this process's n rows: the global batch's draw from a generator
        seeded by (seed, draw count), so N processes draw what one process draws, and a resumed run what the
        straight one drew."""
        c = self.config
        g = torch.Generator().manual_seed(c.seed * 1_000_003 + int(self.draws))
        offset, total = row_offset(n, device), int(global_count(self.bank, n))
        every = torch.randint(0, c.num_examples, (total, c.num_negatives), generator=g)
        return every[offset:offset + n].to(device)

    def pair_logits(self, z: list[Tensor], index: Tensor | None = None,
                    negatives: Tensor | None = None) -> dict[tuple[int, int], tuple[Tensor, Tensor]]:
        """Per ordered pair (i, j): (logits (B, candidates), the positive's column (B,))."""
        c, out = self.config, {}
        if c.negatives == "batch":
            every = [gather_with_grad(zj) for zj in z]                      # the global batch's embeddings
            target = row_offset(len(z[0]), z[0].device) + torch.arange(len(z[0]), device=z[0].device)
            for i, j in c.pairs():
                out[i, j] = (z[i] @ every[j].T / c.temperature, target)
            return out
        candidates = torch.cat([index[:, None], negatives], dim=1)           # (B, 1 + K), the positive first
        target = torch.zeros(len(index), dtype=torch.long, device=index.device)
        for i, j in c.pairs():
            out[i, j] = (bank_scores(z[i], self.bank[j].detach(), candidates) / c.temperature, target)
        return out

    @torch.no_grad()
    def update_bank(self, z: list[Tensor], index: Tensor) -> None:
        """v <- normalise(m v + (1 - m) z) for every view and every process's rows (a repeated index: its last row
        wins)."""
        index, m = gather_rows(index), self.config.bank_momentum
        for v, zv in enumerate(z):
            rows = gather_rows(zv).to(self.bank.dtype)
            self.bank[v].index_copy_(0, index, F.normalize(m * self.bank[v][index] + (1 - m) * rows, dim=1))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        z = self.embeddings(batch)
        index = negatives = None
        if self.config.negatives == "bank":
            if EXAMPLE_INDEX not in batch:
                raise ValueError(f"CMC with a memory bank needs batch[{EXAMPLE_INDEX!r}], each example's index in "
                                 "the training set (the image views collate gives it)")
            index = batch[EXAMPLE_INDEX].long().to(z[0].device)
            negatives = self.sample_negatives(len(index), z[0].device)
        logits = self.pair_logits(z, index, negatives)
        loss = sum(F.cross_entropy(lg, t, reduction="sum") for lg, t in logits.values())
        with torch.no_grad():
            accuracy = torch.stack([(lg.argmax(-1) == t).float().mean() for lg, t in logits.values()]).mean()
        if self.config.negatives == "bank":
            self.update_bank([zv.detach() for zv in z], index)
            self.draws += 1
        return ObjectiveOutput(loss, num_targets=len(z[0]), metrics={"view_accuracy": accuracy})

    def encoder(self) -> ViewsEncoder:
        return ViewsEncoder(list(self.encoders), self.config.view_names or None)


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"cmc": dict(tiny=dict(out_dim=16, num_negatives=32), small=dict(out_dim=128, num_negatives=4096),
                     base=dict(out_dim=128, num_negatives=16384))}
PRESETS = {"cmc": dict(
    cpu={**CPU, "transform": "cmc", "objective": {"negatives": "batch", "temperature": 0.07}},  # in-batch negatives
    # (63 per anchor), T 0.07; lr 0.03 is also the paper's
    # the paper (sec. 4.2 / appendix, ImageNet): SGD 0.03, momentum 0.9, weight decay 1e-4, batch 256, 240 epochs (the
    # rate steps down at 120 / 160 / 200 there; cosine here), memory banks with K = 16384 negatives, T = 0.07, bank
    # momentum 0.5, the L and ab views of one crop; the paper's CIFAR-10 numbers are not given beside these, so its
    # ImageNet ones on lightly's CIFAR ResNet-18 (one per view)
    gpu={**LIGHTLY_CIFAR, "batch_size": 256, "epochs": 240, "learning_rate": 0.03, "weight_decay": 1e-4,
         "transform": "cmc", "objective": {"negatives": "bank", "num_negatives": 16384, "temperature": 0.07,
                                           "bank_momentum": 0.5}},
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
              "epochs": 240, "warmup_epochs": 0, "transform": "cmc",
              "objective": {"negatives": "bank", "num_negatives": 16384, "temperature": 0.07, "bank_momentum": 0.5}},
)}


__all__ = ["CMC", "CMCConfig", "ViewsEncoder", "bank_scores"]
