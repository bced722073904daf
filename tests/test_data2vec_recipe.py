"""recipes/data2vec.py end to end: export, and a resume that restores the EMA teacher and its momentum."""
import importlib
import json

import pytest
import torch

from tests.conftest import speech_argv, straight_and_resumed  # noqa: E402

d2v = importlib.import_module("selfsup.recipes.data2vec")


def argv(out, *extra, steps=3):
    return speech_argv(out, "--ema_decay", "0.9", "--ema_end_decay", "0.99", *extra, steps=steps)


def test_default_run_exports_a_data2vec_audio_model(tmp_path):
    from transformers import AutoModel, Data2VecAudioModel

    metrics = d2v.main(argv(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == 3
    for key in ("eval/loss", "probe/accuracy", "probe/random_init_accuracy", "export/max_abs_hidden_diff"):
        assert key in saved, key
    assert isinstance(AutoModel.from_pretrained(tmp_path / "export"), Data2VecAudioModel)


@pytest.mark.long
def test_resume_restores_the_teacher(tmp_path):
    a, b, mid = straight_and_resumed(d2v.main, argv, tmp_path)
    teacher = [k for k in a if k.startswith("teacher")]
    assert teacher, "the teacher is part of the checkpoint"
    for k in a:  # to 1e-5: CPU convolution backward is not bit-reproducible (see tests/test_wav2vec2_recipe.py)
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    assert any(not torch.equal(a[k], mid[k]) for k in teacher), "the teacher moved between steps 3 and 6"


def test_init_from_an_audio_export_starts_from_its_weights(tmp_path):
    from safetensors.torch import load_file

    d2v.main(argv(tmp_path / "first", steps=2))
    metrics = d2v.main(argv(tmp_path / "more", "--init_from", str(tmp_path / "first" / "export"),
                            "--learning_rate", "0", "--checkpointing_steps", "1", steps=1))
    assert metrics["steps"] == 1 and "probe/random_init_accuracy" not in metrics  # no random init to compare with
    exported = load_file(tmp_path / "first" / "export" / "model.safetensors")
    resumed = load_file(tmp_path / "more" / "checkpoint-1" / "model.safetensors")
    assert torch.equal(resumed["backbone.layers.0.fc1.weight"],
                       exported["encoder.layers.0.feed_forward.intermediate_dense.weight"])
