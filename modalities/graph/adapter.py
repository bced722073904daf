"""The graph adapter: a packed graph batch (package docstring) -> padded node tokens (B, N_max, D).

Content (``embed``): each node's token is the sum of what it has --

* continuous ``node_features`` (T, F) through a linear map to D (``node_encoder="linear"``), or unchanged
  (``node_encoder="none"``: D = F; GraphMAE feeds its one-hot features straight into the GIN's first layer);
* categorical ``node_labels`` (T,) or (T, k): one embedding table per column (``node_label_sizes``);
* nothing at all (no features, no labels): one learned token for every node (``node_token``), so that a GNN
  sees the structure alone -- the data pipeline's one-hot degree features (GraphMAE's rule) are the usual
  alternative.

Categorical ``edge_labels`` (E,) / (E, k) are embedded to D as ``structure["edge_attr"]`` (E, D) for backbones
that read edge features (the GIN and GAT here do not). Positions (``add_positions``): a linear projection of the
structural encoding ``node_pe`` (T, K) -- random-walk (Dwivedi et al., ICLR 2022) or Laplacian eigenvector
encodings, computed in the data pipeline -- which ``embed`` puts in ``structure["node_pe"]``; without one the
tokens are returned as they are (a graph's nodes have no order).

Targets: ``"features"`` the raw node features padded (B, N, F) (what GraphMAE reconstructs), ``"labels"`` the
first node-label column padded with -100 (B, N). Structure: ``edge_index`` (2, E) over the packed real nodes
(the order of ``x[~padding_mask]``), ``num_nodes`` (B,), ``node_index`` (T,) the flat padded position of each
packed node, and ``node_pe`` / ``edge_attr`` when present.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import torch
from torch import Tensor, nn

from selfsup.graphs import node_index, padding_mask_for, unpack
from selfsup.modalities.graph.batch import (ADAPTER_KEYS, EDGE_INDEX, EDGE_LABELS, NODE_FEATURES, NODE_LABELS,
                                            NODE_PE, NUM_NODES, join_batches, signature)
from selfsup.types import Adapter, Batch, Tokens

NODE_ENCODERS = ("linear", "none")
IGNORE = -100   # label of padding positions (cross-entropy's ignore index)


@dataclass
class GraphConfig:
    """num_features: F, the width of ``node_features`` (0: the data has none); node_encoder: ``"linear"`` or
    ``"none"`` (D = F); node_label_sizes / edge_label_sizes: classes per column of ``node_labels`` /
    ``edge_labels`` (empty: not embedded); pe_size: K, the width of ``node_pe`` (0: no structural encoding)."""

    num_features: int = 0
    node_encoder: str = "linear"
    node_label_sizes: tuple[int, ...] = field(default_factory=tuple)
    edge_label_sizes: tuple[int, ...] = field(default_factory=tuple)
    pe_size: int = 0

    def __post_init__(self) -> None:
        self.node_label_sizes = tuple(int(s) for s in self.node_label_sizes)
        self.edge_label_sizes = tuple(int(s) for s in self.edge_label_sizes)
        if self.node_encoder not in NODE_ENCODERS:
            raise ValueError(f"unknown node_encoder {self.node_encoder!r}; choose from {list(NODE_ENCODERS)}")
        if self.node_encoder == "none" and self.num_features <= 0:
            raise ValueError("node_encoder='none' passes the node features through, so it needs num_features > 0")

    def to_dict(self) -> dict:
        return asdict(self)


class GraphAdapter(Adapter):
    """Packed graph batch -> padded node tokens; see the module docstring. ``hidden_size`` is D (F when
    ``node_encoder="none"``)."""

    batch_keys = ADAPTER_KEYS

    def __init__(self, config: GraphConfig, hidden_size: int | None = None) -> None:
        super().__init__()
        c = self.config = config
        if c.node_encoder == "none":
            if hidden_size not in (None, c.num_features):
                raise ValueError(f"node_encoder='none' gives tokens of the feature width {c.num_features}, "
                                 f"not hidden_size {hidden_size}")
            hidden_size = c.num_features
        if not hidden_size:
            raise ValueError("GraphAdapter needs a hidden_size (or node_encoder='none')")
        self.hidden_size = d = hidden_size
        linear = c.node_encoder == "linear" and c.num_features > 0
        self.feature_proj = nn.Linear(c.num_features, d) if linear else None
        self.label_embeddings = nn.ModuleList(nn.Embedding(n, d) for n in c.node_label_sizes)
        self.edge_embeddings = nn.ModuleList(nn.Embedding(n, d) for n in c.edge_label_sizes)
        self.node_token = nn.Parameter(torch.zeros(1, d)) if c.num_features == 0 and not c.node_label_sizes else None
        self.pe_proj = nn.Linear(c.pe_size, d) if c.pe_size else None
        for table in [*self.label_embeddings, *self.edge_embeddings]:
            nn.init.xavier_uniform_(table.weight)
        if self.node_token is not None:
            nn.init.normal_(self.node_token, std=0.02)

    def content_prefixes(self) -> tuple[str, ...]:
        return ("feature_proj.", "label_embeddings.", "edge_embeddings.", "node_token")

    def position_prefixes(self) -> tuple[str, ...]:
        return ("pe_proj.",)

    # -- the stages -------------------------------------------------------------------------------------------
    def check(self, batch: Batch) -> int:
        """The number of packed nodes T, after checking the batch's shapes against the config (one-line errors)."""
        counts, feats = batch[NUM_NODES], batch.get(NODE_FEATURES)
        total = int(counts.sum())
        f = self.config.num_features
        if f and (feats is None or feats.dim() != 2 or feats.shape[1] != f):
            got = None if feats is None else tuple(feats.shape)
            raise ValueError(f"expected node_features of shape (T, {f}), got {got}")
        for key in (NODE_FEATURES, NODE_LABELS, NODE_PE):
            if key in batch and len(batch[key]) != total:
                raise ValueError(f"{key} has {len(batch[key])} rows for {total} nodes (num_nodes sums to {total})")
        if self.config.pe_size and (NODE_PE not in batch or batch[NODE_PE].shape[-1] != self.config.pe_size):
            raise ValueError(f"expected node_pe of shape (T, {self.config.pe_size}) (a structural encoding)")
        edges = batch[EDGE_INDEX]
        if edges.dim() != 2 or edges.shape[0] != 2:
            raise ValueError(f"expected edge_index of shape (2, E), got {tuple(edges.shape)}")
        if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= total):
            raise ValueError(f"edge_index refers to node {int(edges.max())} of a batch of {total} nodes")
        return total

    def node_content(self, batch: Batch, total: int) -> Tensor:
        """(T, D) each packed node's content embedding (module docstring)."""
        parts = []
        feats = batch.get(NODE_FEATURES)
        if self.feature_proj is not None:
            parts.append(self.feature_proj(feats.to(self.feature_proj.weight.dtype)))
        elif self.config.node_encoder == "none":
            parts.append(feats.float())
        if self.label_embeddings:
            labels = batch[NODE_LABELS].reshape(total, -1)
            parts += [table(labels[:, c]) for c, table in enumerate(self.label_embeddings)]
        if self.node_token is not None:
            parts.append(self.node_token.expand(total, -1))
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out

    def embed(self, batch: Batch) -> Tokens:
        total = self.check(batch)
        counts = batch[NUM_NODES]
        padding_mask = padding_mask_for(counts)
        index = node_index(padding_mask)
        x = unpack(self.node_content(batch, total), padding_mask, index)
        targets = {}
        if self.config.num_features:
            targets["features"] = unpack(batch[NODE_FEATURES].float(), padding_mask, index)
        if NODE_LABELS in batch:
            first = batch[NODE_LABELS].reshape(total, -1)[:, 0]
            targets["labels"] = unpack(first.long(), padding_mask, index, fill=IGNORE)
        structure: dict[str, Any] = {EDGE_INDEX: batch[EDGE_INDEX], NUM_NODES: counts, "node_index": index}
        if NODE_PE in batch:
            structure[NODE_PE] = batch[NODE_PE]
        if self.edge_embeddings:
            labels = batch[EDGE_LABELS].reshape(batch[EDGE_INDEX].shape[1], -1)
            structure["edge_attr"] = sum(table(labels[:, c]) for c, table in enumerate(self.edge_embeddings))
        return Tokens(x=x, padding_mask=padding_mask, targets=targets, structure=structure)

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None,
                      structure: Mapping[str, Any] | None = None) -> Tensor:
        """x (B, N, D) + the projected structural encoding ``structure["node_pe"]`` (T, K), padded; x itself
        when the adapter has no encoding."""
        if self.pe_proj is None:
            return x
        if structure is None or NODE_PE not in structure:
            raise ValueError("this graph adapter adds a structural encoding: pass structure with 'node_pe' (T, K)")
        pe = self.pe_proj(structure[NODE_PE].to(self.pe_proj.weight.dtype)).to(x.dtype)
        if padding_mask is None:
            return x + pe.view(x.shape)
        return x + unpack(pe, padding_mask, structure.get("node_index"))

    # -- what objectives may ask ------------------------------------------------------------------------------
    def target_size(self, name: str) -> int:
        if name == "features" and self.config.num_features:
            return self.config.num_features
        if name == "labels" and self.config.node_label_sizes:
            return self.config.node_label_sizes[0]
        return super().target_size(name)

    def batch_signature(self, batch: Batch) -> Hashable:
        """Any two graph batches with the same fields and widths join, whatever their graph sizes."""
        return signature(batch)

    def concat_batches(self, batches: Sequence[Batch]) -> dict[str, Any]:
        """Graph batches joined: ``edge_index`` offset, node tensors and ``num_nodes`` concatenated."""
        return join_batches(batches)


__all__ = ["GraphConfig", "GraphAdapter", "NODE_ENCODERS", "IGNORE"]
