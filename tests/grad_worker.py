"""One optimizer step's gradients through the engine, for tests/test_engine.py and test_distributed.py.

    torchrun --nproc_per_node 2 tests/grad_worker.py OUT_FILE GLOBAL_BATCH GRAD_ACCUM

Every process builds the same tiny MLM model and the same global batch with fixed masks whose number of
targets differs a lot between examples, so a per-process (instead of global) normalisation would show.
Rank 0 writes the synchronised gradients, the loss and the world size to OUT_FILE (safetensors).
"""
from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from selfsup.data import make_train_loader
from selfsup.recipes.builders.masked import bert_mlm
from selfsup.objectives.masked.mlm import IGNORE_INDEX
from selfsup.train import Trainer, TrainingSettings, make_accelerator


def fixed_examples(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(5, 300, (16,), generator=g)
        labels = torch.full_like(ids, IGNORE_INDEX)
        k = 16 if i % 8 == 7 else 1  # very uneven target counts between processes and micro-batches
        labels[:k] = ids[:k]
        inputs = ids.clone()
        inputs[:k] = 4
        out.append({"input_ids": inputs, "labels": labels})
    return out


def collate(examples: list[dict]) -> dict:
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def main(out_file: str, global_batch: int, grad_accum: int) -> None:
    settings = dict(output_dir="/tmp/unused", report_to="none", mixed_precision="no", learning_rate=1e-3,
                    weight_decay=0.0, warmup_steps=0, lr_scheduler_type="constant", max_steps=1, max_grad_norm=0.0,
                    gradient_accumulation_steps=grad_accum)
    acc = make_accelerator(TrainingSettings(**settings))
    per_device = global_batch // (acc.num_processes * grad_accum)
    args = TrainingSettings(**settings, per_device_train_batch_size=per_device)
    torch.manual_seed(0)
    obj = bert_mlm("tiny", 300, mask_token_id=4, dropout=0.0, attention_dropout=0.0)
    loader = make_train_loader(fixed_examples(global_batch), collate, per_device, acc.num_processes,
                               acc.process_index, seed=0)
    trainer = Trainer(obj, loader, args, acc)
    data = trainer.batches()
    loss, _, count = trainer.accumulate([next(data) for _ in range(grad_accum)])
    if acc.is_main_process:
        grads = {n: p.grad.detach().clone().contiguous() for n, p in trainer.objective.named_parameters()
                 if p.grad is not None}
        grads["__loss"] = torch.tensor([loss], dtype=torch.float64)
        grads["__world_size"] = torch.tensor([acc.num_processes])
        grads["__num_targets"] = torch.tensor([count])
        save_file(grads, out_file)
    acc.wait_for_everyone()
    acc.end_training()   # destroys the process group: exiting with it alive can abort in gloo's teardown


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
