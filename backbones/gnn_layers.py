"""The layers of :mod:`selfsup.backbones.gnn`: GraphMAE's GIN and GAT layers on ``torch_geometric.nn`` modules, on
packed nodes (T, D), and a PReLU whose backward is cheap on a CPU.

Parameter names are those of plain modules (``conv`` a ``GINConv`` / ``GATConv``, ``norm``, ``act`` an
``nn.PReLU``-compatible module, ``res`` a bias-free ``nn.Linear``), so a state dict loads into the same layers
built from ``torch`` and ``torch_geometric`` alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv, GINConv

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.dropout import Dropout
from selfsup.graphs import Adjacency

NORMS = ("batchnorm", "layernorm", "none")


class _PReLU(torch.autograd.Function):
    """``F.prelu`` with a backward of a few vectorised passes (torch's CPU ``_prelu_kernel_backward`` took 3.8 ms
    for a (1215, 512) input on one core, this 1.3 ms); the same values, the slope's gradient summed as a dot."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, weight = ctx.saved_tensors
        negative = x.clamp(max=0)
        if weight.numel() == 1:
            grad_weight = torch.dot(grad.reshape(-1), negative.reshape(-1)).reshape(1)
        else:                                        # one slope per channel (dim 1)
            grad_weight = (grad * negative).transpose(0, 1).reshape(weight.numel(), -1).sum(1)
        shape = (1, -1) + (1,) * (x.dim() - 2) if weight.numel() > 1 else (1,)
        factor = torch.gt(x, 0, out=torch.empty_like(x))          # 1.0 where x > 0, else 0.0 (torch's rule)
        factor.mul_(1 - weight.view(shape)).add_(weight.view(shape))   # 1 where x > 0, the slope elsewhere
        return grad * factor, grad_weight


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same ``weight``, same values) with the cheap CPU backward of :class:`_PReLU`."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or (x.dim() < 2 and self.weight.numel() > 1):
            return super().forward(x)
        return _PReLU.apply(x, self.weight.to(x.dtype))


ACTIVATIONS = {"prelu": PReLU, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "none": nn.Identity}


def make_norm(name: str, width: int) -> nn.Module:
    """GraphMAE's ``create_norm``: batch norm, LayerNorm or nothing. The batch norm takes its statistics over the
    nodes of the global batch (:class:`GlobalBatchNorm`: every process's), so N processes train as one; on one
    process it is ``nn.BatchNorm1d`` (same parameters and buffers)."""
    if name == "batchnorm":
        return GlobalBatchNorm(width)
    return nn.LayerNorm(width) if name == "layernorm" else nn.Identity()


def make_activation(name: str) -> nn.Module:
    """A fresh activation module (PReLU: its own slope, as GraphMAE's ``create_activation``)."""
    return ACTIVATIONS[name]()


def residual_map(in_size: int, out_size: int) -> nn.Module:
    """GraphMAE's residual: identity when the widths agree, else a linear map without bias."""
    return nn.Identity() if in_size == out_size else nn.Linear(in_size, out_size, bias=False)


class GINLayer(nn.Module):
    """dropout -> ``GINConv`` (eps 0, MLP(Linear -> norm -> act -> Linear)) -> [norm -> act] -> [+ residual].

    in_size, hidden_size, out_size: the MLP's widths; after: norm and activation after the MLP (GraphMAE's
    ``ApplyNodeFunc``); residual: add the (dropped) input, through a bias-free map if the widths differ.
    """

    shard_unit = True   # one FSDP unit per layer (selfsup.sharding)

    def __init__(self, in_size: int, hidden_size: int, out_size: int, norm: str, activation: str, after: bool,
                 residual: bool, dropout: float) -> None:
        super().__init__()
        mlp = nn.Sequential(nn.Linear(in_size, hidden_size), make_norm(norm, hidden_size), make_activation(activation),
                            nn.Linear(hidden_size, out_size))
        self.dropout = Dropout(dropout)
        self.conv = GINConv(mlp, eps=0.0, train_eps=False)
        self.norm = make_norm(norm, out_size) if after else nn.Identity()
        self.act = make_activation(activation) if after else nn.Identity()
        self.res = residual_map(in_size, out_size) if residual else None

    def forward(self, x: Tensor, graph: Adjacency | Tensor) -> Tensor:
        """x: (T, in) packed nodes; graph: the batch's :class:`Adjacency`, or a (2, E) edge_index (then PyG's
        ``GINConv.forward`` runs). Returns (T, out)."""
        h = self.dropout(x)
        if isinstance(graph, Adjacency):   # sum over in-edges + (1 + eps) x_i, one sparse kernel
            out = self.conv.nn(graph.aggregate(h, self_weight=1.0 + self.conv.initial_eps))
        else:
            out = self.conv(h, graph)
        out = self.act(self.norm(out))
        return out if self.res is None else out + self.res(h)


class GATLayer(nn.Module):
    """dropout -> ``GATConv`` (heads concatenated, + bias) -> [+ residual] -> norm -> act.

    out_size: all heads together (``out_size / heads`` each); norm / activation: ``"none"`` for none;
    residual: add the (dropped) input, through a bias-free map if the widths differ.
    """

    shard_unit = True   # one FSDP unit per layer (selfsup.sharding)

    def __init__(self, in_size: int, out_size: int, heads: int, norm: str, activation: str, residual: bool,
                 dropout: float, attention_dropout: float, negative_slope: float) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        self.conv = GATConv(in_size, out_size // heads, heads=heads, concat=True, negative_slope=negative_slope,
                            dropout=attention_dropout, add_self_loops=False, bias=True)
        self.res = residual_map(in_size, out_size) if residual else None
        self.norm = make_norm(norm, out_size)
        self.act = make_activation(activation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GraphMAE's (DGL's) init: xavier normal with ReLU gain on the projection, both attention vectors and
        a residual map; zero bias (PyG's own: glorot uniform)."""
        gain = nn.init.calculate_gain("relu")
        for weight in (self.conv.lin.weight, self.conv.att_src, self.conv.att_dst):
            nn.init.xavier_normal_(weight, gain=gain)
        nn.init.zeros_(self.conv.bias)
        if isinstance(self.res, nn.Linear):
            nn.init.xavier_normal_(self.res.weight, gain=gain)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """x: (T, in) packed nodes; edge_index: (2, E) (self-loops included by the data). Returns (T, out)."""
        h = self.dropout(x)
        out = self.conv(h, edge_index)
        if self.res is not None:
            out = out + self.res(h)
        return self.act(self.norm(out))


__all__ = ["GINLayer", "GATLayer", "PReLU", "make_norm", "make_activation", "residual_map", "ACTIVATIONS", "NORMS"]
