"""CLIP and SigLIP objectives, one backward pass per case, for tests/test_clip_distributed.py: N processes = one.

    torchrun --standalone --nproc_per_node N tests/clip_worker.py OUT_FILE

Every process builds the same tiny float64 objective (ViT image tower, Transformer text tower; a ResNet tower for
one case) and the same global batch of 8 image-caption pairs; process r takes its slice (2 processes: rows 0..2
and 3..7, deliberately unequal). Each case computes the objective's loss, backpropagates, and the parameter
gradients are all-reduced and divided by the world size (what DDP does). Rank 0 writes every rank's loss, the
gradients and the world size to OUT_FILE (safetensors); the test calls ``run_all()`` in its own process (world
size 1, the whole batch) and compares.

``control_no_gather`` is wrong on purpose: each process's CLIP loss over its own rows only (no negatives from the
other process, open_clip without ``gather_with_grad``), which must differ from the one-process run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.torchrun_worker import mine, serve
from torch import Tensor

from selfsup.distributed import gather_with_grad, world_size
from selfsup.recipes.builders.image_text import clip

GLOBAL_BATCH, LENGTH, VOCAB = 8, 64, 50
CASES = {"clip_full": ("clip", "vit", False), "clip_local": ("clip", "vit", True),
         "siglip_full": ("siglip", "vit", False), "siglip_local": ("siglip", "vit", True),
         "clip_resnet_local": ("clip", "resnet_tiny", True), "control_no_gather": ("clip", "vit", False)}



def global_batch(loss: str) -> dict[str, Tensor]:
    """8 pairs: noise images, captions of random ids and lengths ending in end-of-text (id 1), padded with it;
    SigLIP's padded to the context length without a mask."""
    g = torch.Generator().manual_seed(1)
    length = LENGTH if loss == "siglip" else 9
    ids = torch.ones(GLOBAL_BATCH, length, dtype=torch.long)
    mask = torch.zeros(GLOBAL_BATCH, length, dtype=torch.long)
    for row in range(GLOBAL_BATCH):
        n = int(torch.randint(3, 9, (1,), generator=g))
        ids[row, 0], ids[row, 1:n - 1] = 0, torch.randint(2, VOCAB, (n - 2,), generator=g)
        mask[row, :n] = 1
    batch = {"pixel_values": torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g, dtype=torch.float64), "input_ids": ids}
    if loss == "clip":
        batch["attention_mask"] = mask
    return batch


def build(loss: str, backbone: str, local: bool):
    with torch.random.fork_rng():   # leave the caller's generator alone (the test runs this in-process)
        torch.manual_seed(0)
        return clip("tiny", loss, backbone, vocab_size=VOCAB, local_loss=local).double().train()


def control_loss(objective, batch: dict[str, Tensor]) -> Tensor:
    image, text = objective.embed(batch)
    logits = objective.scale() * image @ text.T
    labels = torch.arange(len(image))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def run_all() -> dict[str, Tensor]:
    """Every case on this process's rows: {case/loss (one per rank), case/<parameter> gradients}."""
    n = world_size()
    out = {}
    for name, (loss_kind, backbone, local) in CASES.items():
        objective = build(loss_kind, backbone, local)
        batch = {k: mine(v) for k, v in global_batch(loss_kind).items()}
        loss = control_loss(objective, batch) if name.startswith("control_") else objective(batch).loss
        loss.backward()
        for p in objective.parameters():   # DDP: all-reduce the gradients and divide by the world size
            if p.grad is None:
                continue
            if n > 1:
                torch.distributed.all_reduce(p.grad)
            p.grad /= n
        with torch.no_grad():
            out[f"{name}/loss"] = gather_with_grad(loss.detach().reshape(1))
        out.update({f"{name}/{k}": p.grad.detach().clone() for k, p in objective.named_parameters()
                    if p.grad is not None})
    return out


if __name__ == "__main__":
    serve(run_all)
