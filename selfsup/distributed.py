"""Sums over processes for the few losses that are not sums over examples (wav2vec 2.0's codebook diversity and
feature penalty are functions of batch averages), and a differentiable all-gather for losses that compare every
example with every other one (contrastive losses: SimCLR, CLIP, MoCo). Outside a multi-process training run these
are identities."""
from __future__ import annotations

import torch
from torch import Tensor


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index in the process group; 0 outside a multi-process run."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_sum(x: Tensor, differentiable: bool = True) -> Tensor:
    """``x`` summed over all processes. ``differentiable``: the backward pass sums the gradients over the
    processes too, so each process's inputs receive the gradient of the global quantity (every process must
    call this, in the same order)."""
    if world_size() == 1:
        return x
    import torch.distributed as dist

    if differentiable and x.requires_grad:
        return _AllSum.apply(x)
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class _AllSum(torch.autograd.Function):
    """All-reduce SUM whose backward all-reduces the gradient too (each process's input receives the gradient
    of the global sum from every process). Our own rather than ``torch.distributed.nn``: importing that module
    makes a gloo process abort at exit about one run in four ("terminate called without an active exception")."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist

        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class _GatherWithGrad(torch.autograd.Function):
    """Forward: all-gather along dim 0 with per-process sizes (padded to the largest, then trimmed).
    Backward: all-reduce SUM of the gradient of the gathered tensor, then this process's rows."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        import torch.distributed as dist

        n = world_size()
        shape = torch.tensor(x.shape, dtype=torch.long, device=x.device)
        shapes = [torch.empty_like(shape) for _ in range(n)]
        dist.all_gather(shapes, shape)
        if any(not torch.equal(s[1:], shape[1:]) for s in shapes):
            raise ValueError(f"gather_with_grad: every process must give the same trailing shape, got "
                             f"{[tuple(s.tolist()) for s in shapes]}")
        sizes = [int(s[0]) for s in shapes]
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(parts, padded)
        r = rank()
        ctx.rows = (sum(sizes[:r]), sum(sizes[: r + 1]))
        return torch.cat([p[:size] for p, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)   # never reduce autograd's buffer in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.rows
        return grad[start:stop]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` along dim 0, in rank order, with a backward pass through every process's rows.

    ``x``: (B_r, ...) on process r; the B_r may differ between processes (the sizes are gathered first and the
    rows padded for the collective), the trailing dims must agree. Returns (B_0 + ... + B_{N-1}, ...), the same
    tensor on every process; rows ``sum(B_<r) : sum(B_<=r)`` are process r's ``x``. Outside a multi-process run
    (``world_size() == 1``) returns ``x`` itself. Every process must call it, in the same order.

    Convention: every process computes the *same* global loss L over the whole gathered batch (e.g. the mean of
    an NT-Xent/InfoNCE loss over all B = sum B_r examples), and the engine's DDP then *averages* the parameter
    gradients over the N processes. The backward pass sums the incoming gradient over the processes and keeps
    this process's rows, so process r's ``x`` receives N * dL/dx_r (each of the N processes holds the whole
    dL/dgathered, and each contributes dL/dx_r); after backpropagating into the local parameters and DDP's mean
    over processes, (1/N) * sum_r N * (dL/dx_r)(dx_r/dθ) = dL/dθ: exactly the gradient of one process
    computing L on the whole global batch (tests/test_gather.py checks this). A plain ``dist.all_gather`` with
    only the own rows differentiable (or a backward that just slices without the sum, lightly's bug #1977/#1920)
    gives (1/N) * dL/dθ instead. If a loss is instead divided by the per-process batch, or only one process
    computes it, this guarantee does not hold.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def global_count(x: Tensor, n: int) -> Tensor:
    """``n`` summed over the processes, as a float of x's dtype or float32 if x is narrower (bf16 cannot hold most
    counts exactly), no gradient: the number of rows, anchors or pairs of the global batch."""
    local = torch.tensor(float(n), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    return all_sum(local, differentiable=False)


def global_rows(x: Tensor) -> Tensor:
    """The rows of ``x`` summed over the processes (see :func:`global_count`)."""
    return global_count(x, x.shape[0])


def global_mean(values: Tensor) -> Tensor:
    """Mean of ``values``' elements over every process's elements: the same scalar on each process, with the
    gradient of the global mean (``all_sum`` is differentiable)."""
    return all_sum(values.sum()) / global_count(values, values.numel())


def row_offset(rows: int, device: torch.device | str = "cpu") -> int:
    """Index of this process's first row in a gathered batch (the rows of the lower ranks); 0 on one process."""
    if world_size() == 1:
        return 0
    with torch.no_grad():
        sizes = gather_with_grad(torch.tensor([rows], device=device))
    return int(sizes[: rank()].sum())


def shares_main_disk(folder) -> bool:
    """Whether this process sees the files the main process writes in ``folder`` (one disk for every machine, or
    a machine of its own). Every process must call it: the main process leaves a marker there, named by a fresh
    token, and each process looks for it. True outside a multi-process run."""
    if world_size() == 1:
        return True
    import secrets
    from pathlib import Path

    import torch.distributed as dist

    token = [secrets.token_hex(8) if rank() == 0 else None]
    dist.broadcast_object_list(token, src=0)
    marker = Path(folder) / f".selfsup-disk-{token[0]}"
    if rank() == 0:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("the main process writes here\n")
    dist.barrier()
    shared = marker.is_file()
    dist.barrier()
    if rank() == 0:
        marker.unlink(missing_ok=True)
    return shared


def writes_node_files(accelerator, folder) -> bool:
    """True on the process that writes, in ``folder``, what every process of its machine reads back (checkpoints,
    a trained tokenizer): the main process, and the local main process of each machine with a disk of its own.
    Every process must call it (see :func:`shares_main_disk`)."""
    shared = shares_main_disk(folder)
    return accelerator.is_main_process or (accelerator.is_local_main_process and not shared)


__all__ = ["world_size", "rank", "all_sum", "shares_main_disk", "writes_node_files", "gather_with_grad", "global_count", "global_rows", "global_mean",
           "row_offset"]
