"""Worker for CMC's two-process test: in-batch and memory-bank negatives on a tiny ResNet, two SGD steps on fixed
global batches of 10 examples (two views each, with their example indices), split unequally over the processes
(``tests/torchrun_worker.py``); the loss is a sum over rows divided by the global count, as the engine divides it,
so the gradients summed over the processes are the one-process gradient. Saves every step's loss, the last step's
gradients and the banks after it. Run as ``torchrun --nproc_per_node N tests/cmc_worker.py OUT`` (or plainly for
one process)."""
from __future__ import annotations

import torch

from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.torchrun_worker import local_views, serve, sgd_steps

RUNS = {"cmc_batch": {"negatives": "batch"}, "cmc_bank": {"negatives": "bank", "num_negatives": 6}}
NUM_EXAMPLES, GLOBAL_BATCH, STEPS = 18, 10, 2


def global_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    views = [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    index = torch.randperm(NUM_EXAMPLES, generator=g)[:GLOBAL_BATCH]      # distinct: a row moves once a step
    return {"views": [{"pixel_values": v} for v in views], EXAMPLE_INDEX: index}


def run(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    obj = two_view("cmc", "resnet_tiny", size="tiny", image_size=16, num_examples=NUM_EXAMPLES,
                   **RUNS[name]).double().train()
    out = sgd_steps(obj, lambda step: local_views(global_batch(step)), STEPS, f"{name}/")
    out.update({f"{name}/buffer/{n}": b.detach().clone().double() for n, b in obj.named_buffers()
                if n in ("bank", "draws")})
    return out


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for name in RUNS:
        out.update(run(name))
    return out


if __name__ == "__main__":
    serve(run_all)
