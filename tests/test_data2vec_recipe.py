"""recipes/data2vec.py end to end: export, and a resume that restores the EMA teacher and its momentum."""
import json

import pytest
import torch
from safetensors.torch import load_file

d2v = pytest.importorskip("recipes.data2vec")


def argv(out, *extra, steps=3):
    return ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "4", "--synthetic_utterances", "40", "--max_duration", "1.0",
            "--ema_decay", "0.9", "--ema_end_decay", "0.99", *extra]


def test_default_run_exports_a_data2vec_audio_model(tmp_path):
    from transformers import AutoModel, Data2VecAudioModel

    metrics = d2v.main(argv(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == 3
    for key in ("eval/loss", "probe/accuracy", "probe/random_init_accuracy", "export/max_abs_hidden_diff"):
        assert key in saved, key
    assert isinstance(AutoModel.from_pretrained(tmp_path / "export"), Data2VecAudioModel)


def test_resume_restores_the_teacher(tmp_path):
    straight = tmp_path / "a"
    d2v.main(argv(straight, "--checkpointing_steps", "3", "--checkpoints_total_limit", "0", steps=6))
    resumed = tmp_path / "b"
    d2v.main(argv(resumed, "--resume_from_checkpoint", str(straight / "checkpoint-3"), "--checkpointing_steps", "6",
                  steps=6))
    a = load_file(straight / "checkpoint-6" / "model.safetensors")
    b = load_file(resumed / "checkpoint-6" / "model.safetensors")
    mid = load_file(straight / "checkpoint-3" / "model.safetensors")
    teacher = [k for k in a if k.startswith("teacher")]
    assert teacher, "the teacher is part of the checkpoint"
    for k in a:  # to 1e-5: CPU convolution backward is not bit-reproducible (see tests/test_wav2vec2_recipe.py)
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    assert any(not torch.equal(a[k], mid[k]) for k in teacher), "the teacher moved between steps 3 and 6"
