"""The one way the tests start several processes: ``python -m torch.distributed.run --standalone
--nproc_per_node N SCRIPT ARGS`` with the interpreter running the tests (``sys.executable``), so the launch needs no
``torchrun`` console script on ``PATH`` and works from a venv that is not activated.

(On a CPU-only machine ``accelerate launch --cpu --num_processes 2`` starts one process, so the tests launch with
torch's launcher and assert the world size each run really had: :func:`worker_tensors` checks the ``__world_size``
a worker wrote, recipe tests check ``num_processes`` in ``metrics.json``.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import ROOT


def torchrun_command(nproc: int, script: str | Path, *argv: str) -> list[str]:
    """The command line that starts ``nproc`` processes of ``script`` on this machine (gloo on CPU)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
            *argv]


def torchrun(nproc: int, script: str | Path, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``script`` in ``nproc`` processes from the repository root (``PYTHONPATH`` there, so ``tests.`` imports
    resolve; one intra-op thread each); an ``AssertionError`` showing the tail of stderr unless all exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for attempt in range(2):
        proc = subprocess.run(torchrun_command(nproc, script, *argv), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)
        # gloo's threads can abort a process as it exits on a loaded machine (std::terminate, SIGABRT) even after the
        # process group is destroyed: that launch alone is run once more, from scratch
        if proc.returncode == 0 or GLOO_EXIT_ABORT not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


GLOO_EXIT_ABORT = "terminate called without an active exception"


def worker_tensors(nproc: int, script: str | Path, out: str | Path, *argv: str,
                   timeout: int = 300) -> dict[str, torch.Tensor]:
    """Run a worker that writes its tensors to ``out`` (safetensors, ``tests/torchrun_worker.py``'s convention:
    ``SCRIPT OUT [ARGS]``) and return them, asserting the world size it recorded is ``nproc``."""
    from safetensors.torch import load_file

    torchrun(nproc, script, str(out), *argv, timeout=timeout)
    result = load_file(str(out))
    assert int(result["__world_size"]) == nproc, "the launcher did not start the processes asked for"
    return result
