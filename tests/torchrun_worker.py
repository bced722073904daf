"""The ``main`` of the tests' torchrun workers: ``torchrun --standalone --nproc_per_node N tests/X_worker.py OUT``
runs ``run_all()`` in every process under gloo, and rank 0 writes its tensors and the world size to OUT
(safetensors). The tests launch with ``PYTHONPATH`` at the repository root, so ``tests.`` imports resolve."""
from __future__ import annotations

import argparse
from typing import Callable

import torch

from selfsup.distributed import global_count, rank, world_size
from selfsup.types import EXAMPLE_INDEX


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


def local_views(batch: dict) -> dict:
    """This process's rows of a global batch of views with their example indices."""
    return {"views": [{"pixel_values": mine(v["pixel_values"])} for v in batch["views"]],
            EXAMPLE_INDEX: mine(batch[EXAMPLE_INDEX])}


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


def sgd_steps(obj: torch.nn.Module, local_batch: Callable[[int], dict], steps: int, prefix: str = "",
              each_step: bool = True) -> dict[str, torch.Tensor]:
    """``steps`` SGD steps (lr 0.05, momentum 0.9) of ``obj`` on this process's ``local_batch(step)``, the loss a sum
    divided by the global count as the engine divides it, the gradients summed over the processes (DDP's sum, so
    N processes equal one). Returns every step's global loss (``{prefix}loss{step}``) and the last step's gradients
    (``{prefix}grad/{name}``); ``on_step_end`` runs after each step when ``each_step``."""
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    out: dict[str, torch.Tensor] = {}
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        result = obj(local_batch(step))
        loss = result.loss / global_count(result.loss, result.num_targets)
        loss.backward()
        if world_size() > 1:
            for p in obj.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
            torch.distributed.all_reduce(summed := loss.detach().clone())
            loss = summed
        out[f"{prefix}loss{step}"] = loss.detach().reshape(1).double()
        if step == steps:
            out.update({f"{prefix}grad/{n}": p.grad.detach().clone() for n, p in obj.named_parameters()
                        if p.grad is not None})
        opt.step()
        if each_step:
            obj.on_step_end(step)
    return out
