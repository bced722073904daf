"""Worker for Deep InfoMax's two-process test: both estimators on a tiny ResNet, two SGD steps on fixed global
batches of 10 images split unequally over the processes (``tests/torchrun_worker.py``); the loss is a sum over
the images divided by the global count, as the engine divides it, so DDP's gradient sum is the one-process
gradient. Saves, per estimator, every step's loss and the last step's gradients. Run as ``torchrun
--nproc_per_node N tests/dim_worker.py OUT`` (or plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.recipes.builders.two_view import two_view
from tests.torchrun_worker import mine, serve, sgd_steps

ESTIMATORS = ("jsd", "infonce")
GLOBAL_BATCH, STEPS = 10, 2


def global_batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64)


def run(estimator: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    obj = two_view("deep_infomax", "resnet_tiny", size="tiny", image_size=16, estimator=estimator).double().train()
    out = sgd_steps(obj, lambda step: {"views": [{"pixel_values": mine(global_batch(step))}]}, STEPS, f"{estimator}/",
                    each_step=False)
    return out


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for estimator in ESTIMATORS:
        out.update(run(estimator))
    return out


if __name__ == "__main__":
    serve(run_all)
