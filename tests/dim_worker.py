"""Worker for Deep InfoMax's two-process test: both estimators on a tiny ResNet, two SGD steps on fixed global
batches of 10 images split unequally over the processes (``tests/torchrun_worker.py``); the loss is a sum over
the images divided by the global count, as the engine divides it, so DDP's gradient sum is the one-process
gradient. Saves, per estimator, every step's loss and the last step's gradients. Run as ``torchrun
--nproc_per_node N tests/dim_worker.py OUT`` (or plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.distributed import global_count, world_size
from selfsup.recipes.builders.two_view import two_view
from tests.torchrun_worker import mine, serve

ESTIMATORS = ("jsd", "infonce")
GLOBAL_BATCH, STEPS = 10, 2


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64)


def run(estimator: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    obj = two_view("deep_infomax", "resnet_tiny", size="tiny", image_size=16, estimator=estimator).double().train()
    opt = torch.optim.SGD(obj.parameters(), lr=0.05, momentum=0.9)
    out: dict[str, torch.Tensor] = {}
    for step in range(1, STEPS + 1):
        opt.zero_grad(set_to_none=True)
        result = obj({"views": [{"pixel_values": mine(global_batch(step))}]})
        loss = result.loss / global_count(result.loss, result.num_targets)
        loss.backward()
        if world_size() > 1:
            for p in obj.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
            torch.distributed.all_reduce(summed := loss.detach().clone())
            loss = summed
        out[f"{estimator}/loss{step}"] = loss.detach().reshape(1).double()
        if step == STEPS:
            out.update({f"{estimator}/grad/{n}": p.grad.detach().clone() for n, p in obj.named_parameters()
                        if p.grad is not None})
        opt.step()
    return out


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for estimator in ESTIMATORS:
        out.update(run(estimator))
    return out


if __name__ == "__main__":
    serve(run_all)
