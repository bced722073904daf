"""recipes/data2vec.py --modality text: the data2vec objective on the text adapter, end to end."""
import json

import pytest
import torch

from selfsup.recipes import data2vec
from tests.conftest import ROOT, straight_and_resumed, tiny_argv


def text_argv(out, *extra, steps: int = 3):
    return ["--modality", "text", *tiny_argv(out, *extra, steps=steps)]


@pytest.mark.long
def test_text_run_trains_probes_and_exports_a_data2vec_text_model(tmp_path):
    sst2 = ROOT.parent / "shared" / "data" / "text" / "sst2"
    probe = ["--eval_train_file", str(sst2 / "train.txt"), "--eval_test_file", str(sst2 / "test.txt")] \
        if (sst2 / "test.txt").is_file() else []
    metrics = data2vec.main(text_argv(tmp_path / "run", "--random_init_seeds", "1", *probe, steps=2))
    assert metrics["steps"] == 2 and metrics["eval/loss"] > 0 and metrics["export/max_abs_hidden_diff"] < 1e-4
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert config["model_type"] == "data2vec-text" and config["selfsup_data2vec"]["span_length"] == 4
    assert (tmp_path / "run" / "export" / "tokenizer.json").is_file()
    if probe:
        assert "probe/accuracy" in metrics and "probe/random_init_accuracy" in metrics


def test_text_defaults_are_fairseqs():
    args = data2vec.build_parser("text").parse_args(["--modality", "text"])
    assert (args.mask_prob, args.mask_length, args.loss_beta) == (0.35, 4, 4.0)
    assert data2vec.modality_of(["--modality", "text"]) == "text" and data2vec.modality_of([]) == "audio"


@pytest.mark.long
def test_resume_restores_the_teacher(tmp_path):
    final, resumed, middle = straight_and_resumed(data2vec.main, text_argv, tmp_path)
    teacher = [k for k in final if k.startswith("teacher.")]
    assert teacher and "ema_decay" in final
    for k in final:
        assert torch.equal(final[k], resumed[k]), k
    assert any(not torch.equal(final[k], middle[k]) for k in teacher), "the teacher moved between the checkpoints"


def test_init_from_the_export_continues_pretraining(tmp_path):
    """--init_from a data2vec text export: the student starts as the export; with a zero learning rate it stays."""
    from safetensors.torch import load_file

    first = tmp_path / "first"
    data2vec.main(text_argv(first, steps=2))
    more = tmp_path / "more"
    metrics = data2vec.main(text_argv(more, "--init_from", str(first / "export"), "--learning_rate", "0",
                                      "--checkpointing_steps", "1", steps=1))
    assert metrics["steps"] == 1 and metrics["export/max_abs_hidden_diff"] < 1e-4
    exported = load_file(first / "export" / "model.safetensors")
    resumed = load_file(more / "checkpoint-1" / "model.safetensors")
    assert torch.equal(resumed["backbone.layers.0.fc1.weight"], exported["encoder.layer.0.intermediate.dense.weight"])
