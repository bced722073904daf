"""Two "machines" on one host, each with a disk of its own: ``accelerate launch --multi_gpu --num_machines 2
--machine_rank R --num_processes 2 --main_process_ip 127.0.0.1`` once per machine, each with its own output folder.
They train a tiny bert_mlm exactly as one process on the same global batch; each machine's checkpoints hold what its
process needs to resume (the whole files, written by its local main process, and its own random state); only the
global main process writes the export and the metrics; both machines resume from their own disks to the same
model."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, tiny_argv
from tests.launch import torchrun

FLAGS = ("--dropout", "0", "--checkpointing_steps", "2", "--max_eval_blocks", "16")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_machines(disks: list[Path], *extra: str) -> list[str]:
    """bert_mlm on two single-process machines, machine r writing to ``disks[r]``; their standard outputs."""
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    for r, disk in enumerate(disks):
        argv = tiny_argv(disk, *FLAGS, *extra, steps=4)
        argv[argv.index("--per_device_train_batch_size") + 1] = "4"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(r), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", port, str(ROOT / "recipes" / "bert_mlm.py"), *argv]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def assert_same(a: dict, b: dict, atol: float = 2e-6) -> None:
    assert set(a) == set(b) and len(a) > 20
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), (k, float((a[k] - b[k]).abs().max()))


@pytest.mark.long
def test_two_machines_with_their_own_disks_train_resume_and_export_as_one_process(tmp_path):
    one = tmp_path / "one"
    torchrun(1, ROOT / "recipes" / "bert_mlm.py", *tiny_argv(one, *FLAGS, steps=4))
    disks = [tmp_path / "machine0", tmp_path / "machine1"]
    two_machines(disks)

    metrics = json.loads((disks[0] / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["global_batch_size"] == 8
    assert not (disks[1] / "metrics.json").exists() and not (disks[1] / "export").exists()
    plain = load_file(one / "export" / "model.safetensors")
    assert_same(plain, load_file(disks[0] / "export" / "model.safetensors"))
    for r, disk in enumerate(disks):                      # each disk: what its process needs to resume
        ckpt = disk / "checkpoint-2"
        assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "optimizer.pt", "scheduler.pt",
                                                    "trainer_state.json", f"rng_state_{r}.pt"}
        assert (disk / "tokenizer" / "tokenizer.json").is_file()
        assert not list(disk.glob(".selfsup-disk-*"))
    assert_same(load_file(disks[0] / "checkpoint-2" / "model.safetensors"),
                load_file(disks[1] / "checkpoint-2" / "model.safetensors"), atol=0)

    straight = load_file(disks[0] / "export" / "model.safetensors")
    for disk in disks:                                     # back to step 2, on both disks
        shutil.rmtree(disk / "checkpoint-4")
        shutil.rmtree(disk / "export", ignore_errors=True)
    outs = two_machines(disks, "--resume_from_checkpoint", "latest")
    assert f"resumed from {disks[0] / 'checkpoint-2'} at step 2" in outs[0]
    assert_same(straight, load_file(disks[0] / "export" / "model.safetensors"), atol=0)
