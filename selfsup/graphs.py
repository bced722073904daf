"""Pure tensor helpers for graphs held as padded tokens, shared by the graph adapter and the GNN backbones.

A batch of B graphs travels between an adapter and a backbone as padded tokens (B, N_max, D), graph b's node i
at [b, i], with a (B, N_max) padding mask True at padding; a GNN works on the *packed* real nodes (T, D) in
row-major order (graph 0's nodes, then graph 1's, ...), which is the order of ``x[~padding_mask]`` and of the
``edge_index`` (2, E) in :class:`selfsup.types.Tokens` ``structure`` (PyG's layout). :func:`pack` and
:func:`unpack` go between the two with one ``index_select`` / ``index_copy`` on a flat index (:func:`node_index`)
computed once, no boolean indexing.

:class:`Adjacency` is the sum aggregation ``out_i = sum over edges (j -> i) of x_j`` (GIN's, Xu et al., 2019) as
one sparse CSR matrix product, built once per batch and shared by every layer (and by an encoder and a decoder
over the same graph): the backward multiplies by the stored transpose, so neither direction scatters.
"""
from __future__ import annotations

import warnings
from typing import Any, MutableMapping

import torch
from torch import Tensor


def padding_mask_for(num_nodes: Tensor, max_nodes: int | None = None) -> Tensor:
    """(B,) nodes per graph -> (B, N_max) bool, True at padding (N_max = the largest graph, or ``max_nodes``)."""
    width = int(num_nodes.max()) if max_nodes is None and len(num_nodes) else int(max_nodes or 0)
    return torch.arange(width, device=num_nodes.device)[None, :] >= num_nodes[:, None]


def node_index(padding_mask: Tensor) -> Tensor:
    """(T,) long: the flat positions in (B * N) of the real (not padded) tokens, row-major."""
    return (~padding_mask).reshape(-1).nonzero().squeeze(1)


def pack(x: Tensor, padding_mask: Tensor | None, index: Tensor | None = None) -> Tensor:
    """(B, N, ...) padded tokens -> (T, ...) the real ones in row-major order (``x[~padding_mask]``)."""
    flat = x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    if padding_mask is None:
        return flat
    return flat.index_select(0, node_index(padding_mask) if index is None else index)


def unpack(rows: Tensor, padding_mask: Tensor | None, index: Tensor | None = None, fill: float = 0) -> Tensor:
    """(T, ...) packed rows -> (B, N, ...) padded tokens, ``fill`` at padding; the inverse of :func:`pack`."""
    if padding_mask is None:
        raise ValueError("unpack needs the (B, N) padding mask to know the batch shape")
    b, n = padding_mask.shape
    index = node_index(padding_mask) if index is None else index
    if len(index) != len(rows):
        raise ValueError(f"{len(rows)} rows for {len(index)} real positions of the padding mask")
    out = rows.new_full((b * n, *rows.shape[1:]), fill)   # in place: ``index_copy`` would copy all B * N rows
    return out.index_copy_(0, index, rows).view(b, n, *rows.shape[1:])


def graph_index(num_nodes: Tensor) -> Tensor:
    """(B,) nodes per graph -> (T,) long, the graph of every packed node (PyG's ``batch`` vector)."""
    return torch.repeat_interleave(torch.arange(len(num_nodes), device=num_nodes.device), num_nodes)


def node_offsets(num_nodes: Tensor) -> Tensor:
    """(B,) nodes per graph -> (B,) the packed row of every graph's first node."""
    return torch.cumsum(num_nodes, 0) - num_nodes


SPARSE_DTYPES = (torch.float32, torch.float64)   # the CPU sparse kernels (MKL) have no 16-bit version


def _sparse_mm(matrix: Tensor, x: Tensor, self_weight: float) -> Tensor:
    """``matrix @ x + self_weight * x`` for a CSR ``matrix`` (one kernel: ``torch.sparse.addmm``); 16-bit ``x``
    (bf16 autocast) is multiplied in float32."""
    wide = (x if x.dtype in SPARSE_DTYPES else x.float()).contiguous()
    with torch.autocast(x.device.type, enabled=False):    # autocast would cast addmm's inputs back to 16 bits
        out = torch.sparse.addmm(wide, matrix, wide, beta=self_weight) if self_weight else torch.sparse.mm(matrix, wide)
    return out.to(x.dtype)


class _SparseSum(torch.autograd.Function):
    """y = A x + w x with A sparse CSR; the gradient is Aᵀ g + w g through the stored transpose."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, adjacency: "Adjacency", self_weight: float) -> Tensor:
        ctx.adjacency, ctx.self_weight = adjacency, self_weight
        return _sparse_mm(adjacency.matrix(x.dtype), x, self_weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        matrix = ctx.adjacency.matrix(grad.dtype, transpose=True)
        return _sparse_mm(matrix, grad, ctx.self_weight), None, None


def _csr(rows: Tensor, cols: Tensor, n: int) -> Tensor:
    """The (n, n) CSR matrix with a 1 for every (row, col) pair (repeated pairs add up)."""
    order = torch.argsort(rows * n + cols)
    crow = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    values = torch.ones(len(rows), device=rows.device)
    with warnings.catch_warnings():   # torch's "beta" and "invariant checks" notices, once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols[order], values, (n, n), check_invariants=False)


class Adjacency:
    """A graph's sum aggregation over ``edge_index`` (2, E) (row 0 sources, row 1 targets) on ``num_nodes``
    packed nodes: :meth:`aggregate` (T, D) -> (T, D), ``out_i = Σ_{(j -> i)} x_j``, as PyG's ``aggr="add"``.
    The CSR matrices (and their copies in other dtypes) are made once and reused."""

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        self.edge_index, self.num_nodes = edge_index, num_nodes
        src, dst = edge_index[0], edge_index[1]
        self._matrices = {(torch.float32, False): _csr(dst, src, num_nodes),
                          (torch.float32, True): _csr(src, dst, num_nodes)}

    def matrix(self, dtype: torch.dtype, transpose: bool = False) -> Tensor:
        """The (T, T) CSR matrix (``transpose``: its transpose) with values in ``dtype``."""
        key = (dtype if dtype in SPARSE_DTYPES else torch.float32, transpose)
        if key not in self._matrices:
            base = self._matrices[(torch.float32, transpose)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._matrices[key] = torch.sparse_csr_tensor(base.crow_indices(), base.col_indices(),
                                                              base.values().to(key[0]), base.shape)
        return self._matrices[key]

    def aggregate(self, x: Tensor, self_weight: float = 0.0) -> Tensor:
        """(T, D) -> (T, D) the sum over each node's incoming edges, plus ``self_weight`` times the node's own
        row (GIN's ``(1 + eps) x_i``) in the same kernel."""
        if len(x) != self.num_nodes:
            raise ValueError(f"{len(x)} node rows for an adjacency of {self.num_nodes} nodes")
        return _SparseSum.apply(x, self, float(self_weight))


def adjacency(structure: MutableMapping[str, Any], num_nodes: int) -> Adjacency:
    """The :class:`Adjacency` of ``structure["edge_index"]``, cached in ``structure["adjacency"]`` for as long
    as the edge_index object is the same, so every layer and a decoder after the encoder reuse it."""
    edge_index = structure["edge_index"]
    cached = structure.get("adjacency")
    if isinstance(cached, Adjacency) and cached.edge_index is edge_index and cached.num_nodes == num_nodes:
        return cached
    made = Adjacency(edge_index, num_nodes)
    structure["adjacency"] = made
    return made


__all__ = ["padding_mask_for", "node_index", "pack", "unpack", "graph_index", "node_offsets", "Adjacency",
           "adjacency"]
