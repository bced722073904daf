"""The ``main`` of the tests' torchrun workers: ``torchrun --standalone --nproc_per_node N tests/X_worker.py OUT``
runs ``run_all()`` in every process under gloo, and rank 0 writes its tensors and the world size to OUT
(safetensors). The tests launch with ``PYTHONPATH`` at the repository root, so ``tests.`` imports resolve."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from selfsup.distributed import rank, world_size


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
