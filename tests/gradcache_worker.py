"""One optimizer step's gradients of a tiny float64 CLIP through the Trainer with ``--contrastive_accumulation``,
for tests/test_gradcache.py: N processes x 2 micro-batches = one process's plain forward of the whole window.

    torchrun --standalone --nproc_per_node 2 tests/gradcache_worker.py OUT_FILE

Every process builds the same objective and the same 8 pairs; the engine's loader gives each process 2
micro-batches of 2 (DDP with ``no_sync`` for the first). Rank 0 writes the synchronised gradients, the loss and
the world size to OUT_FILE (safetensors); :func:`reference` is one process's plain forward of the 8 pairs.
"""
from __future__ import annotations

import sys
import tempfile

import torch
from safetensors.torch import save_file

from selfsup.data import make_train_loader
from selfsup.recipes.builders.image_text import clip
from selfsup.train import Trainer, TrainingSettings, make_accelerator

VOCAB, WINDOW, ACCUMULATION = 50, 8, 2


def pairs(loss: str, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """n image-caption pairs: noise images, captions of random ids and lengths ending in end-of-text (id 1) and
    padded with it (CLIP, with a mask), or padded to SigLIP's context length of 64 without one."""
    g = torch.Generator().manual_seed(seed)
    length = 64 if loss == "siglip" else 9
    ids = torch.ones(n, length, dtype=torch.long)
    mask = torch.zeros(n, length, dtype=torch.long)
    for row in range(n):
        k = int(torch.randint(3, 9, (1,), generator=g))
        ids[row, 0], ids[row, 1:k - 1] = 0, torch.randint(2, VOCAB, (k - 2,), generator=g)
        mask[row, :k] = 1
    batch = {"pixel_values": torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64), "input_ids": ids}
    if loss == "clip":
        batch["attention_mask"] = mask
    return batch


def examples(loss: str, n: int) -> list[dict[str, torch.Tensor]]:
    batch = pairs(loss, n)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def build():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return clip("tiny", "clip", vocab_size=VOCAB).double().train()


def reference() -> dict[str, torch.Tensor]:
    """One process, the whole window of 8 pairs through the plain forward."""
    objective = build()
    out = objective(collate(examples("clip", WINDOW)))
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in objective.named_parameters() if p.grad is not None}
    return {**grads, "__loss": out.loss.detach().reshape(1)}


def main(out_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(output_dir=tmp, report_to="none", mixed_precision="no", max_steps=1,
                        gradient_accumulation_steps=ACCUMULATION, contrastive_accumulation=True)
        acc = make_accelerator(TrainingSettings(**settings))
        per_device = WINDOW // (acc.num_processes * ACCUMULATION)
        loader = make_train_loader(examples("clip", WINDOW), collate, per_device, acc.num_processes,
                                   acc.process_index, seed=0)
        trainer = Trainer(build(), loader, TrainingSettings(**settings, per_device_train_batch_size=per_device), acc)
        data = trainer.batches()
        loss, _, _ = trainer.accumulate([next(data) for _ in range(ACCUMULATION)])
        if acc.is_main_process:
            out = {n: p.grad.detach().clone().contiguous() for n, p in trainer.objective.named_parameters()
                   if p.grad is not None}
            out["__loss"] = torch.tensor([loss], dtype=torch.float64)
            out["__world_size"] = torch.tensor([acc.num_processes])
            save_file(out, out_file)
        acc.wait_for_everyone()
        acc.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
