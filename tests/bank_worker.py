"""Worker for the memory-bank methods' two-process tests: each method (and loss) on a tiny ResNet, three SGD steps
on fixed global batches of 10 images with their example indices, split unequally over the processes
(``tests/torchrun_worker.py``); the loss is a sum over rows divided by the global count, as the engine divides
it, so DDP's gradient sum is the one-process gradient. Saves, per method, every step's loss, the last step's
gradients and the buffers after it (the banks, NCE's normaliser). Run as ``torchrun --nproc_per_node N
tests/bank_worker.py OUT`` (or plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.distributed import global_count, world_size
from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.torchrun_worker import mine, serve

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
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    out: dict[str, torch.Tensor] = {}
    for step in range(1, STEPS + 1):
        b = global_batch(step)
        local = {"views": [{"pixel_values": mine(b["views"][0]["pixel_values"])}], EXAMPLE_INDEX: mine(b[EXAMPLE_INDEX])}
        opt.zero_grad(set_to_none=True)
        result = obj(local)
        loss = result.loss / global_count(result.loss, result.num_targets)
        loss.backward()
        if world_size() > 1:
            for p in obj.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
            torch.distributed.all_reduce(summed := loss.detach().clone())
            loss = summed
        out[f"{name}/loss{step}"] = loss.detach().reshape(1).double()
        if step == STEPS:
            out.update({f"{name}/grad/{n}": p.grad.detach().clone() for n, p in obj.named_parameters()
                        if p.grad is not None})
        opt.step()
        obj.on_step_end(step)
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
