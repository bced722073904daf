"""One backward pass of a contrastive loss over a batch gathered from every process, for tests/test_gather.py.

    torchrun --standalone --nproc_per_node N tests/gather_worker.py OUT_FILE [--naive]

Every process builds the same Linear 5->4 and the same global batch of 6 examples; process r embeds an uneven
slice of it (2 processes: rows 0..1 and 2..5), the embeddings are gathered, and every process computes the same
NT-Xent loss (example i's positive is i+3 mod 6) averaged over the global batch. The model is wrapped in DDP, which
averages the gradients over the processes. ``--naive``: a plain ``dist.all_gather`` in which only the own rows
carry a gradient. Rank 0 writes the loss, the gradients and the world size to OUT_FILE (safetensors).
"""
from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from selfsup.distributed import gather_with_grad, rank, world_size

GLOBAL_BATCH = 6
SLICES = {1: [6], 2: [2, 4], 3: [1, 2, 3]}   # rows per process: deliberately unequal
TEMPERATURE = 0.5


def nt_xent(z: torch.Tensor) -> torch.Tensor:
    """Mean over the (global) batch of cross-entropy of cosine similarities / temperature; i pairs with i+3."""
    z = F.normalize(z, dim=1)
    sim = z @ z.T / TEMPERATURE
    b = z.shape[0]
    sim = sim.masked_fill(torch.eye(b, dtype=torch.bool), float("-inf"))
    targets = (torch.arange(b) + b // 2) % b
    return F.cross_entropy(sim, targets)


def naive_gather(z: torch.Tensor) -> torch.Tensor:
    """dist.all_gather (no autograd) with the own rows put back: other processes' rows are constants."""
    n = world_size()
    size = torch.tensor([z.shape[0]])
    sizes = [torch.empty_like(size) for _ in range(n)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = z.new_zeros((max(sizes), *z.shape[1:]))
    padded[: z.shape[0]] = z.detach()
    parts = [torch.empty_like(padded) for _ in range(n)]
    dist.all_gather(parts, padded)
    parts = [p[:s] for p, s in zip(parts, sizes)]
    parts[rank()] = z
    return torch.cat(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_file")
    parser.add_argument("--naive", action="store_true")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    n, r = world_size(), rank()
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    x = torch.randn(GLOBAL_BATCH, 5, generator=torch.Generator().manual_seed(1))
    sizes = SLICES[n]
    start = sum(sizes[:r])
    ddp = DistributedDataParallel(model)
    z = ddp(x[start:start + sizes[r]])
    gathered = naive_gather(z) if args.naive else gather_with_grad(z)
    assert gathered.shape == (GLOBAL_BATCH, 4)
    loss = nt_xent(gathered)
    loss.backward()   # DDP all-reduces the parameter gradients and divides them by the world size
    if r == 0:
        out = {name: p.grad.detach().clone().contiguous() for name, p in model.named_parameters()}
        out["__loss"] = loss.detach().reshape(1).double()
        out["__world_size"] = torch.tensor([n])
        save_file(out, args.out_file)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
