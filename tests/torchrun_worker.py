"""The ``main`` of the tests' torchrun workers: ``torchrun --standalone --nproc_per_node N tests/X_worker.py OUT``
runs ``run_all()`` in every process under gloo, and rank 0 writes its tensors and the world size to OUT
(safetensors). The tests launch with ``PYTHONPATH`` at the repository root, so ``tests.`` imports resolve."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from selfsup.distributed import rank, world_size


def split(total: int, n: int) -> list[int]:
    """Rows per process: all of them for one process, deliberately unequal for two."""
    if n == 1:
        return [total]
    if n == 2:
        return [total // 2 - 1, total - (total // 2 - 1)]
    raise ValueError(f"run with 1 or 2 processes, not {n}")


def mine(t: torch.Tensor) -> torch.Tensor:
    """This process's rows of a global batch ``t`` (:func:`split`)."""
    sizes = split(t.shape[0], world_size())
    start = sum(sizes[: rank()])
    return t[start:start + sizes[rank()]]


def serve(run_all: Callable[[], dict[str, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    parser = argparse.ArgumentParser()
    parser.add_argument("out_file")
    args = parser.parse_args()
    torch.distributed.init_process_group("gloo")
    out = run_all()
    if rank() == 0:
        out["__world_size"] = torch.tensor([world_size()])
        save_file({k: v.contiguous() for k, v in out.items()}, args.out_file)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
