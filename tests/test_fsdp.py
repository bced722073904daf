"""FSDP2 through Accelerate (``--fsdp``, ``selfsup.sharding``): two sharded processes train every objective family
with state as one plain process on the same global batch, a run resumed from a sharded checkpoint equals a straight
run, EMA teachers stay sharded, and a recipe's export and gathered checkpoint from a sharded run are those of a
plain run. The workers (``tests/fsdp_worker.py``) train through the engine in float64 and record the world size they
had."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests import fsdp_worker as worker
from tests.conftest import ROOT, tiny_argv
from tests.launch import torchrun, worker_tensors

pytestmark = pytest.mark.long      # every test here starts several processes (a module fixture for most)

WORKER = ROOT / "tests" / "fsdp_worker.py"
FAMILIES = list(worker.families())
# Losses computed in float32 whatever the model's dtype (a cross-entropy or MSE on .float() logits / predictions,
# for bf16 safety): there the comparison is at float32 rounding; the others agree to float64 rounding.
FLOAT32_LOSS = {"mlm", "gpt", "mae", "data2vec", "hubert", "wav2vec2"}
TEACHERS = {"byol", "moco", "dino", "data2vec"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp")
    plain = worker_tensors(1, WORKER, folder / "one.safetensors", "sharded", timeout=600)
    sharded = worker_tensors(2, WORKER, folder / "two.safetensors", "sharded", timeout=600)
    return plain, sharded


def weights(result: dict, family: str, run: str) -> dict[str, torch.Tensor]:
    prefix = f"{family}/{run}/"
    return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix) and not k.endswith("__losses")}


@pytest.mark.parametrize("family", FAMILIES)
def test_two_fsdp_processes_train_as_one_plain_process(runs, family):
    plain, sharded = runs
    assert int(sharded[f"{family}/__sharded"]) == 1 and int(sharded[f"{family}/__units"]) >= 3
    assert int(plain[f"{family}/__sharded"]) == 0
    a, b = weights(plain, family, "straight"), weights(sharded, family, "straight")
    assert set(a) == set(b) and len(a) > 20
    atol = 2e-6 if family in FLOAT32_LOSS else 1e-9
    la, lb = plain[f"{family}/straight/__losses"], sharded[f"{family}/straight/__losses"]
    assert len(la) == worker.STEPS and torch.allclose(la, lb, atol=atol, rtol=0), (la, lb)
    moved = 0
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), \
            (k, float((a[k].double() - b[k].double()).abs().max()))
        moved += int(a[k].is_floating_point() and a[k].numel() > 0)
    assert moved > 10


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_from_a_sharded_checkpoint_equals_the_straight_run(runs, family):
    _, sharded = runs
    straight, resumed = weights(sharded, family, "straight"), weights(sharded, family, "resumed")
    assert set(straight) == set(resumed)
    for k in straight:
        assert torch.allclose(straight[k].double(), resumed[k].double(), atol=1e-12, rtol=0), k
    assert torch.allclose(sharded[f"{family}/straight/__losses"], sharded[f"{family}/resumed/__losses"], atol=1e-12)


@pytest.mark.parametrize("family", sorted(TEACHERS))
def test_ema_teachers_are_kept_and_updated_as_shards(runs, family):
    _, sharded = runs
    assert int(sharded[f"{family}/__teacher_sharded"]) == 1
    teacher = {k: v for k, v in weights(sharded, family, "straight").items() if k.startswith("teacher")}
    assert teacher


def test_gathered_checkpoints_resume_as_a_straight_run(tmp_path):
    """The ``full`` layout: weights and optimizer state gathered into the files a plain run writes."""
    two = worker_tensors(2, WORKER, tmp_path / "full.safetensors", "full", "clip", "byol", "mlm", timeout=600)
    for family in ("clip", "byol", "mlm"):
        straight, resumed = weights(two, family, "straight"), weights(two, family, "resumed")
        assert int(two[f"{family}/__sharded"]) == 1 and set(straight) == set(resumed)
        for k in straight:
            assert torch.allclose(straight[k].double(), resumed[k].double(), atol=1e-12, rtol=0), (family, k)


BERT = ("--dropout", "0", "--checkpointing_steps", "2", "--max_eval_blocks", "16")


def bert_run(tmp_path, name: str, nproc: int, *extra: str) -> dict:
    out = tmp_path / name
    argv = tiny_argv(out, *BERT, *extra, steps=4)
    argv[argv.index("--per_device_train_batch_size") + 1] = str(8 // nproc)
    torchrun(nproc, ROOT / "recipes" / "bert_mlm.py", *argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == nproc and metrics["global_batch_size"] == 8
    return metrics


def test_a_sharded_recipe_run_exports_the_plain_runs_model_and_its_gathered_checkpoint_resumes_unsharded(tmp_path):
    """bert_mlm with --fsdp on two processes: the export (BertForMaskedLM, reloaded by the recipe's own check) equals
    a plain one-process run's; its step-2 checkpoint resumes in one plain process to the same model, gathered
    (--fsdp_checkpoint full) or in pieces (the default, joined on loading)."""
    bert_run(tmp_path, "plain", 1)
    metrics = bert_run(tmp_path, "fsdp", 2, "--fsdp", "--fsdp_checkpoint", "full")
    assert metrics["export/max_abs_logit_diff"] < 1e-4
    ckpt = tmp_path / "fsdp" / "checkpoint-2"
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("model-*-of-*"))
    bert_run(tmp_path, "resumed", 1, "--resume_from_checkpoint", str(ckpt))
    plain = load_file(tmp_path / "plain" / "export" / "model.safetensors")
    for name in ("fsdp", "resumed"):
        other = load_file(tmp_path / name / "export" / "model.safetensors")
        assert set(other) == set(plain) and len(plain) > 20
        for k in plain:
            assert torch.allclose(plain[k], other[k], atol=2e-6, rtol=0), (name, k)

    bert_run(tmp_path, "sharded", 2, "--fsdp")
    pieces = tmp_path / "sharded" / "checkpoint-2"
    assert sorted(p.name for p in pieces.glob("model-*")) == ["model-00000-of-00002.safetensors",
                                                              "model-00001-of-00002.safetensors"]
    bert_run(tmp_path, "joined", 1, "--resume_from_checkpoint", str(pieces))   # the pieces joined, unsharded
    joined = load_file(tmp_path / "joined" / "export" / "model.safetensors")
    for k in plain:
        assert torch.allclose(plain[k], joined[k], atol=2e-6, rtol=0), k


def test_the_accelerate_fsdp_config_shards_a_recipe_on_cpu(tmp_path):
    """``accelerate launch --config_file configs/accelerate/fsdp.yaml`` (no --fsdp flag): two processes, sharded
    checkpoint pieces, on a machine with no GPU (where Accelerate alone would have built DDP)."""
    import os
    import subprocess
    import sys

    from tests.test_multinode import free_port

    out = tmp_path / "run"
    argv = tiny_argv(out, "--checkpointing_steps", "2", "--max_eval_blocks", "16", steps=2)
    argv[argv.index("--per_device_train_batch_size") + 1] = "4"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--main_process_port", str(free_port()),
           str(ROOT / "recipes" / "bert_mlm.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 2
    assert sorted(p.name for p in (out / "checkpoint-2").glob("model-*")) == [
        "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors"]
