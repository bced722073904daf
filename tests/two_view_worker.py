"""Worker for tests/test_two_view.py's two-process test: every two-view method on a tiny ResNet (global batch
norm), two SGD steps on a fixed global batch of 8 images split over the processes, DDP's gradient mean emulated.
Saves, per method, both steps' losses, the second step's gradients and every buffer after it (queues, pointers,
centres, teachers, running statistics). Run as ``torchrun --nproc_per_node N tests/two_view_worker.py OUT`` (or
plainly for one process)."""
from __future__ import annotations

import torch

from selfsup.distributed import rank, world_size
from selfsup.recipes.builders.two_view import two_view
from tests.torchrun_worker import serve

METHODS = ["simclr", "moco_v2", "moco_v3", "byol", "simsiam", "swav", "dino", "vicreg", "barlow_twins"]
GLOBAL_BATCH = 8


def views(step: int, local: int = 0) -> list[torch.Tensor]:
    """The global batch of step ``step``: 2 global views of 16 x 16 (+ ``local`` views of 8 x 8)."""
    g = torch.Generator().manual_seed(100 + step)
    out = [torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    return out + [torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(local)]


def mine(x: torch.Tensor) -> torch.Tensor:
    """This process's rows of a global-batch tensor (processes hold consecutive slices, in rank order)."""
    n = GLOBAL_BATCH // world_size()
    return x[rank() * n:(rank() + 1) * n]


def run_method(method: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    obj = two_view(method, "resnet_tiny", size="tiny", image_size=16, max_steps=10).double()   # float64: the
    obj.train()                                                  # comparison is not lost in float32 rounding
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    local = 2 if method in ("swav", "dino") else 0
    out: dict[str, torch.Tensor] = {}
    for step in (1, 2):
        opt.zero_grad(set_to_none=True)
        loss = obj({"views": [{"pixel_values": mine(v)} for v in views(step, local)]}).loss
        loss.backward()
        if world_size() > 1:   # what DDP does: the mean of the processes' gradients
            for p in obj.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world_size()
        out[f"{method}/loss{step}"] = loss.detach().reshape(1).double()
        if step == 2:
            out.update({f"{method}/grad/{n}": p.grad.detach().clone() for n, p in obj.named_parameters()
                        if p.grad is not None})
        opt.step()
        obj.on_step_end(step)
    out.update({f"{method}/buffer/{n}": b.detach().clone().double() for n, b in obj.named_buffers()
                if b.dtype.is_floating_point or n.endswith("ptr")})
    out.update({f"{method}/teacher/{n}": p.detach().clone() for n, p in obj.named_parameters()
                if n.startswith("teacher.")})
    return out


def run_all() -> dict[str, torch.Tensor]:
    out = {}
    for method in METHODS:
        out.update(run_method(method))
    return out


if __name__ == "__main__":
    serve(run_all)
