"""Worker for the memory-bank methods' two-process tests: each method (and loss) on a tiny ResNet, three SGD steps
on fixed global batches of 10 images with their example indices, split unequally over the processes
(``tests/torchrun_worker.py``); the loss is a sum over rows divided by the global count, as the engine divides
it, so DDP's gradient sum is the one-process gradient. Saves, per method, every step's loss, the last step's
gradients and the buffers after it (the banks, NCE's normaliser). Run as ``torchrun --nproc_per_node N
tests/bank_worker.py OUT`` (or plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.torchrun_worker import local_views, serve, sgd_steps

# name -> (method, config overrides)
RUNS = {"instance_discrimination_softmax": ("instance_discrimination", {"loss": "softmax"}),
        "instance_discrimination_nce": ("instance_discrimination", {"loss": "nce", "num_negatives": 6})}
NUM_EXAMPLES, GLOBAL_BATCH, STEPS = 18, 10, 2


def global_batch(step: int) -> dict:
    g = torch.Generator().manual_seed(100 + step)
    images = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64)
    index = torch.randperm(NUM_EXAMPLES, generator=g)[:GLOBAL_BATCH]      # distinct: a row moves once a step
    return {"views": [{"pixel_values": images}], EXAMPLE_INDEX: index}


def run(name: str) -> dict[str, torch.Tensor]:
    method, overrides = RUNS[name]
    torch.manual_seed(0)
    obj = two_view(method, "resnet_tiny", size="tiny", image_size=16, num_examples=NUM_EXAMPLES,
                   **overrides).double().train()
    out = sgd_steps(obj, lambda step: local_views(global_batch(step)), STEPS, f"{name}/")
    out.update({f"{name}/buffer/{n}": b.detach().clone().double() for n, b in obj.named_buffers()
                if "bank" in n or n.endswith("z") or n.endswith("draws")})
    return out


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for name in RUNS:
        out.update(run(name))
    return out


if __name__ == "__main__":
    serve(run_all)
