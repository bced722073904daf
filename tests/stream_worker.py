"""A tiny training run over a sharded stream, for ``tests/test_streaming.py``: started under
``python -m torch.distributed.run`` (``tests/launch.py``), every process logs, after each optimizer step, the ids
and per-example seeds of the examples that step trained on to ``OUT/ids_{rank}.jsonl`` (one line a step, written
and closed at once, so a SIGKILL loses no finished step).

    stream_worker.py OUT DATA_DIR --max_steps N [--checkpointing_steps K] [--resume_from_checkpoint latest|PATH]
    [--sleep SECONDS]

DATA_DIR holds ``*.jsonl`` shards of ``{"id": int, "x": [4 floats]}`` records.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from selfsup.data import example_seed, make_train_loader
from selfsup.streaming import ShardStream, record_index
from selfsup.train import Trainer, TrainingSettings, make_accelerator, seed_everything
from selfsup.types import Objective, ObjectiveOutput


def read_jsonl(path: str):
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


class Logged(Objective):
    """A linear model that writes, after each step, the ids of the examples the step used."""

    def __init__(self, log: Path, sleep: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.log, self.sleep, self.pending = log, sleep, []

    def forward(self, batch):
        self.pending += list(zip(batch["ids"].tolist(), batch["example_seeds"].tolist()))
        if self.sleep:
            time.sleep(self.sleep)   # slow enough for the test to kill the run between two checkpoints
        loss = self.linear(batch["x"]).square().sum()
        return ObjectiveOutput(loss=loss, num_targets=batch["x"].shape[0])

    def on_step_end(self, step: int) -> None:
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "ids": [i for i, _ in self.pending],
                                "seeds": [s for _, s in self.pending]}) + "\n")
        self.pending = []


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("data")
    p.add_argument("--max_steps", type=int, required=True)
    p.add_argument("--checkpointing_steps", type=int, default=0)
    p.add_argument("--resume_from_checkpoint", default=None)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--sleep", type=float, default=0.0)
    a = p.parse_args()
    settings = TrainingSettings(output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=a.batch_size,
                                checkpointing_steps=a.checkpointing_steps, checkpoints_total_limit=0,
                                resume_from_checkpoint=a.resume_from_checkpoint, report_to="none",
                                mixed_precision="no", learning_rate=0.01, warmup_steps=0, logging_steps=1)
    acc = make_accelerator(settings)
    seed_everything(0)
    shards = sorted(str(f) for f in Path(a.data).glob("*.jsonl"))

    def prepare(record, shard, position, epoch):
        return {"id": record["id"], "x": record["x"], "seed": example_seed(7, epoch, record_index(shard, position))}

    def collate(examples):
        return {"ids": torch.tensor([e["id"] for e in examples]), "x": torch.tensor([e["x"] for e in examples]),
                "example_seeds": torch.tensor([e["seed"] for e in examples])}

    stream = ShardStream(shards, read_jsonl, prepare, collate, a.batch_size, acc.num_processes, acc.process_index,
                         seed=7, shuffle_chunk=5, source=a.data)
    stream.warn_if_uneven(acc.print)
    loader = make_train_loader(stream, collate, a.batch_size, acc.num_processes, acc.process_index, seed=7)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    objective = Logged(Path(a.out) / f"ids_{acc.process_index}.jsonl", a.sleep)
    metrics = Trainer(objective, loader, settings, acc).train()
    if acc.is_main_process:
        (Path(a.out) / "metrics.json").write_text(json.dumps(metrics))
    acc.wait_for_everyone()
    acc.end_training()   # destroys the process group: exiting with it alive can abort in gloo's teardown


if __name__ == "__main__":
    main()
