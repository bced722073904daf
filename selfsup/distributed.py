"""Sums over processes for the few losses that are not sums over examples (wav2vec 2.0's codebook diversity and
feature penalty are functions of batch averages). Outside a multi-process training run these are identities."""
from __future__ import annotations

from torch import Tensor


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_sum(x: Tensor, differentiable: bool = True) -> Tensor:
    """``x`` summed over all processes. ``differentiable``: the backward pass sums the gradients over the
    processes too, so each process's inputs receive the gradient of the global quantity (every process must
    call this, in the same order)."""
    if world_size() == 1:
        return x
    import torch.distributed as dist

    if differentiable and x.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(x, op=dist.ReduceOp.SUM)
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


__all__ = ["world_size", "all_sum"]
