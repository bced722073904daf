"""A killed run resumes with nothing lost: 20 steps straight == 10 steps + resume 10 (CPU, fp32)."""
import importlib
import json

import pytest
import torch
from safetensors.torch import load_file

from selfsup.checkpoint import list_checkpoints, resolve_checkpoint
from selfsup.errors import SelfsupError
from tests.conftest import tiny_argv

bert_mlm = importlib.import_module("selfsup.recipes.bert_mlm")


def state(folder):
    return load_file(folder / "model.safetensors")


def test_resume_reproduces_the_straight_run_exactly(tmp_path):
    straight = tmp_path / "straight"
    # dropout stays on: the restored RNG state must reproduce the same dropout masks and MLM masks
    bert_mlm.main(tiny_argv(straight, "--checkpointing_steps", "10", "--checkpoints_total_limit", "0",
                            "--per_device_train_batch_size", "4", "--max_train_samples", "20", steps=20))
    assert [p.name for p in list_checkpoints(straight)] == ["checkpoint-10", "checkpoint-20"]
    # a run killed after step 10 leaves exactly checkpoint-10; resume it elsewhere and finish
    resumed = tmp_path / "resumed"
    bert_mlm.main(tiny_argv(resumed, "--per_device_train_batch_size", "4", "--checkpointing_steps", "20",
                            "--tokenizer_name", str(straight / "tokenizer"), "--max_train_samples", "20",
                            "--resume_from_checkpoint", str(straight / "checkpoint-10"), steps=20))
    a, b = state(straight / "checkpoint-20"), state(resumed / "checkpoint-20")
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and they are not trivially equal to the state at step 10
    mid = state(straight / "checkpoint-10")
    assert not all(torch.equal(mid[k], a[k]) for k in a)
    oa = torch.load(straight / "checkpoint-20" / "optimizer.pt", weights_only=True)
    ob = torch.load(resumed / "checkpoint-20" / "optimizer.pt", weights_only=True)
    for k in oa["state"]:
        assert torch.equal(oa["state"][k]["exp_avg_sq"], ob["state"][k]["exp_avg_sq"])
    ma = json.loads((straight / "metrics.json").read_text())
    mb = json.loads((resumed / "metrics.json").read_text())
    assert ma["eval/mlm_loss"] == mb["eval/mlm_loss"]
    # data position: the straight run crossed an epoch boundary before step 20, and so did the resumed one
    ta = json.loads((straight / "checkpoint-20" / "trainer_state.json").read_text())
    tb = json.loads((resumed / "checkpoint-20" / "trainer_state.json").read_text())
    assert (ta["epoch"], ta["examples_in_epoch"]) == (tb["epoch"], tb["examples_in_epoch"])
    assert ta["epoch"] >= 1


def test_latest_picks_the_newest_complete_checkpoint(tmp_path):
    for name in ("checkpoint-5", "checkpoint-30", "checkpoint-100.tmp", "checkpoint-x"):
        (tmp_path / name).mkdir()
    assert resolve_checkpoint("latest", tmp_path).name == "checkpoint-30"
    assert resolve_checkpoint("latest", tmp_path / "empty") is None
    with pytest.raises(SelfsupError, match="not a checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "checkpoint-5"), tmp_path)


@pytest.mark.long
def test_keep_last_k_and_resume_latest_continues(tmp_path):
    out = tmp_path / "run"
    bert_mlm.main(tiny_argv(out, "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", steps=6))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    metrics = bert_mlm.main(tiny_argv(out, "--resume_from_checkpoint", "latest", steps=8))
    assert metrics["steps"] == 8
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["step"] == 6
