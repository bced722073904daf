"""Message-passing backbones on ``torch_geometric``: GIN and GAT as GraphMAE builds them (Hou et al., KDD 2022).

Behind the backbone contract: ``forward(x, padding_mask, output_hidden_states, *, structure)`` takes padded node
tokens (B, N, D_in) and ``structure["edge_index"]`` (2, E) over the packed real nodes (row-major, the order of
``x[~padding_mask]``), packs the real rows once (:func:`selfsup.graphs.pack`), runs every layer on the packed
graph and unpacks to (B, N, D_out); ``hidden_states`` = (input, every layer's output), padded. Batch norm
therefore sees only real nodes, as in GraphMAE. ``forward_packed`` is the same on (T, D_in) rows.

* **GIN** (Xu et al., ICLR 2019; GraphMAE's ``models/gin.py``): each layer is dropout(p) on its input, then
  ``GINConv`` with eps 0 (sum aggregation) whose function is MLP(Linear -> norm -> act -> Linear), then norm ->
  act (GraphMAE's ``ApplyNodeFunc``), then an optional residual (identity, or a bias-free linear map when the
  widths differ). An encoder's last layer (``encoding=True``) keeps norm -> act -- and, as in GraphMAE, drops
  both when ``norm="none"``; a decoder's has neither, and its MLP ends at ``output_size``. The sum runs as one
  sparse CSR product shared by all layers (:class:`selfsup.graphs.Adjacency`, cached in ``structure``), with the
  self term fused in (``torch.sparse.addmm``); the parameters are plain ``torch_geometric.nn.GINConv`` ones
  (``layers.{i}.conv.nn.{0..3}``), and ``GINConv(edge_index)`` computes the same (``tests/test_graph_gnn.py``).
* **GAT** (Veličković et al., ICLR 2018; GraphMAE's ``models/gat.py``, its Cora encoder and decoder):
  ``GATConv`` per layer (``add_self_loops=False``: the data carries them), dropout on the layer's input,
  attention dropout, leaky-ReLU slope 0.2, heads concatenated, bias, then residual, norm and activation; hidden
  layers have the activation, an encoder's last layer too (a one-layer encoder has none, as GraphMAE), a
  decoder's last layer neither activation nor norm nor residual. Initialisation is GraphMAE's (DGL's): xavier
  normal with ReLU gain on the projection, both attention vectors and a residual map, zero bias (PyG's default
  is glorot uniform).

Activations are separate modules per place (a PReLU each, as GraphMAE). ``hidden_size`` is the output width;
``config.num_layers`` the depth. GraphMAE's settings: MUTAG GIN 5 x 32, PROTEINS GIN 3 x 512 (batch norm,
PReLU, input dropout 0.2), Cora GAT 2 layers of 4 x 128 heads (512), input dropout 0.2, attention dropout 0.1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, MutableMapping

from torch import Tensor, nn

from selfsup.backbones.gnn_layers import ACTIVATIONS, NORMS, GATLayer, GINLayer
from selfsup.graphs import Adjacency, adjacency, node_index, pack, unpack
from selfsup.types import BackboneOutput

KINDS = ("gin", "gat")


@dataclass
class GNNConfig:
    """Sizes and wiring of :class:`GNNBackbone`.

    kind: ``"gin"`` or ``"gat"``; input_size: width of the tokens it is given; hidden_size: width of the hidden
    layers (GAT: all heads together); output_size: the last layer's width (None: hidden_size; a decoder's target
    width); encoding: an encoder's last layer (norm + activation) rather than a decoder's plain one; dropout: on
    every layer's input (GAT's ``feat_drop``); heads / output_heads: GAT heads of the hidden / last layers
    (output_heads None: heads); attention_dropout, negative_slope: GAT's.
    """

    kind: str = "gin"
    input_size: int = 32
    hidden_size: int = 32
    num_layers: int = 2
    output_size: int | None = None
    encoding: bool = True
    dropout: float = 0.0
    norm: str = "batchnorm"
    activation: str = "prelu"
    residual: bool = False
    heads: int = 1
    output_heads: int | None = None
    attention_dropout: float = 0.0
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        checks = ((self.kind in KINDS, f"kind {self.kind!r}; choose from {list(KINDS)}"),
                  (self.norm in NORMS, f"norm {self.norm!r}; choose from {list(NORMS)}"),
                  (self.activation in ACTIVATIONS, f"activation {self.activation!r}; choose from {list(ACTIVATIONS)}"),
                  (self.num_layers >= 1, f"num_layers {self.num_layers}; at least 1"),
                  (0.0 <= self.dropout <= 1.0 and 0.0 <= self.attention_dropout <= 1.0, "dropout outside [0, 1]"),
                  (self.kind != "gat" or self.hidden_size % self.heads == 0, f"hidden_size {self.hidden_size} not divisible by "
                                                       f"{self.heads} heads"),
                  (self.kind != "gat" or self.out_size % self.last_heads == 0, f"output size {self.out_size} not divisible by "
                                                         f"{self.last_heads} heads"))
        for ok, problem in checks:
            if not ok:
                raise ValueError(f"GNNConfig: {problem}")

    @property
    def out_size(self) -> int:
        return self.hidden_size if self.output_size is None else self.output_size

    @property
    def last_heads(self) -> int:
        return self.heads if self.output_heads is None else self.output_heads

    def widths(self) -> list[tuple[int, int]]:
        """(input, output) width of every layer."""
        sizes = [self.input_size] + [self.hidden_size] * (self.num_layers - 1) + [self.out_size]
        return list(zip(sizes[:-1], sizes[1:]))

    def to_dict(self) -> dict:
        return asdict(self)


SIZES = {"tiny": dict(hidden_size=16, num_layers=2), "small": dict(hidden_size=128, num_layers=3),
         "base": dict(hidden_size=512, num_layers=3)}


def gnn_config(size: str, input_size: int, kind: str = "gin", **overrides: Any) -> GNNConfig:
    """A named size (``tiny`` / ``small`` / ``base``) of a GIN or GAT encoder on ``input_size`` inputs."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {list(SIZES)}")
    defaults = dict(heads=4, norm="none", dropout=0.2, attention_dropout=0.1) if kind == "gat" else {}
    return GNNConfig(kind=kind, input_size=input_size, **{**SIZES[size], **defaults, **overrides})


def decoder_config(encoder: GNNConfig, output_size: int, **overrides: Any) -> GNNConfig:
    """GraphMAE's decoder for ``encoder``: one layer of the same kind from its width to ``output_size`` (GAT:
    one head), no norm or activation after it."""
    return replace(encoder, input_size=encoder.out_size, output_size=output_size, num_layers=1, encoding=False,
                   output_heads=1 if encoder.kind == "gat" else None, **overrides)


def gin_layer(cfg: GNNConfig, in_size: int, out_size: int, last: bool) -> GINLayer:
    """GraphMAE's GIN layer: norm + act after the MLP except on a decoder's last layer, and (GraphMAE's quirk)
    on an encoder's last layer without a norm; residual except on a decoder's last layer."""
    after = not last or (cfg.encoding and cfg.norm != "none")
    residual = cfg.residual and (not last or cfg.encoding)
    return GINLayer(in_size, cfg.hidden_size, out_size, cfg.norm, cfg.activation, after, residual, cfg.dropout)


def gat_layer(cfg: GNNConfig, in_size: int, out_size: int, last: bool) -> GATLayer:
    """GraphMAE's GAT layer: a decoder's last layer has no norm, activation or residual; an encoder's last has
    them, except the activation of a one-layer encoder."""
    plain = last and not cfg.encoding
    activation = "none" if last and (plain or cfg.num_layers == 1) else cfg.activation
    return GATLayer(in_size, out_size, cfg.last_heads if last else cfg.heads, "none" if plain else cfg.norm,
                    activation, cfg.residual and not plain, cfg.dropout, cfg.attention_dropout, cfg.negative_slope)


class GNNBackbone(nn.Module):
    """A stack of :class:`GINLayer` or :class:`GATLayer` behind the backbone contract (module docstring)."""

    def __init__(self, config: GNNConfig) -> None:
        super().__init__()
        self.config, self.hidden_size, self.input_size = config, config.out_size, config.input_size
        widths = config.widths()
        build = gin_layer if config.kind == "gin" else gat_layer
        self.layers = nn.ModuleList(build(config, i, o, k == len(widths) - 1) for k, (i, o) in enumerate(widths))

    def graph(self, structure: MutableMapping[str, Any], num_nodes: int) -> Adjacency | Tensor:
        """What the layers take: GIN the cached :class:`Adjacency`, GAT the edge_index."""
        if "edge_index" not in structure:
            raise ValueError("a GNN backbone needs structure['edge_index'] (2, E) over the packed nodes")
        return adjacency(structure, num_nodes) if self.config.kind == "gin" else structure["edge_index"]

    def forward_packed(self, h: Tensor, structure: MutableMapping[str, Any],
                       output_hidden_states: bool = False) -> tuple[Tensor, list[Tensor]]:
        """(T, D_in) packed nodes -> ((T, D_out), [input, every layer's output] when asked for, else [])."""
        graph = self.graph(structure, len(h))
        states = [h] if output_hidden_states else []
        for layer in self.layers:
            h = layer(h, graph)
            if output_hidden_states:
                states.append(h)
        return h, states

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, output_hidden_states: bool = False, *,
                structure: MutableMapping[str, Any] | None = None) -> BackboneOutput:
        """x: (B, N, D_in) padded node tokens; padding_mask: (B, N) True at padding; structure: ``edge_index``
        (2, E) over the packed real nodes. Returns (B, N, D_out) states, zero at padding."""
        if structure is None:
            raise ValueError("a GNN backbone needs structure={'edge_index': ...} (Tokens.structure)")
        b, n = x.shape[:2]
        index = None if padding_mask is None else node_index(padding_mask)
        last, states = self.forward_packed(pack(x, padding_mask, index), structure, output_hidden_states)

        def padded(rows: Tensor) -> Tensor:
            return rows.view(b, n, -1) if padding_mask is None else unpack(rows, padding_mask, index)

        hidden = (x, *map(padded, states[1:])) if output_hidden_states else None
        return BackboneOutput(last_hidden_state=padded(last), hidden_states=hidden)


def gin(input_size: int, hidden_size: int = 32, num_layers: int = 2, **kw: Any) -> GNNBackbone:
    """A GIN encoder (GraphMAE's defaults: batch norm, PReLU)."""
    return GNNBackbone(GNNConfig(kind="gin", input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                                 **kw))


def gat(input_size: int, hidden_size: int = 512, num_layers: int = 2, heads: int = 4, **kw: Any) -> GNNBackbone:
    """A GAT encoder (GraphMAE's Cora defaults: no norm, PReLU, dropout 0.2, attention dropout 0.1)."""
    kw = {"norm": "none", "dropout": 0.2, "attention_dropout": 0.1, **kw}
    return GNNBackbone(GNNConfig(kind="gat", input_size=input_size, hidden_size=hidden_size, num_layers=num_layers,
                                 heads=heads, **kw))


__all__ = ["GNNConfig", "GNNBackbone", "SIZES", "KINDS", "gnn_config", "decoder_config", "gin", "gat", "gin_layer",
           "gat_layer"]
