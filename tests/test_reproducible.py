"""The same command with the same seed, run twice in fresh processes (other hash seeds), trains the same model:
the same tokenizer and bitwise the same weights on CPU in fp32, for every recipe, even when the two runs
share the cores."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import ROOT

SPEECH = ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "4",
          "--synthetic_utterances", "24", "--max_duration", "1.0", "--mixed_precision", "no"]
TEXT = ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "8", "--max_seq_length", "32",
        "--vocab_size", "600", "--max_eval_blocks", "8", "--mixed_precision", "no"]
IMAGE = ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "8", "--mixed_precision", "no",
         "--eval_train_samples", "60", "--eval_test_samples", "20", "--no_linear_probe"]
RUNS = {
    "bert_mlm": ("bert_mlm", TEXT),
    "wav2vec2": ("wav2vec2", SPEECH),
    "hubert": ("hubert", [*SPEECH, "--num_clusters", "8"]),
    "data2vec_audio": ("data2vec", SPEECH),
    "data2vec_text": ("data2vec", ["--modality", "text", *TEXT]),
    "gpt": ("gpt", TEXT),
    "gpt_char": ("gpt", ["--tokenizer", "char", *TEXT]),
    "mae": ("mae", IMAGE),
    "two_view_moco_v2": ("two_view", ["--method", "moco_v2", "--backbone", "resnet_tiny", "--image_size", "16",
                                      *IMAGE]),
    "two_view_dino_vit": ("two_view", ["--method", "dino", "--backbone", "vit", "--image_size", "16",
                                       "--num_local_views", "2", *IMAGE]),
    "clip": ("clip", ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "8",
                      "--max_train_samples", "120", "--vocab_size", "700", "--zero_shot_samples", "24",
                      "--pipeline_check_images", "4", "--mixed_precision", "no"]),
}


def start(recipe: str, flags: list[str], out: Path, hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), "--output_dir", str(out), "--max_steps", "2",
           "--checkpointing_steps", "2", "--seed", "7", "--random_init_seeds", "1", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.long
@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_fresh_runs_train_the_same_model(tmp_path, name):
    recipe, flags = RUNS[name]
    a, b = tmp_path / "a", tmp_path / "b"
    # Both at once, on the same cores: thread timing then varies, and a backward that adds in a racy order
    # (see tests/graph_checks.py) shows up as weights that differ in their last bits.
    procs = [start(recipe, flags, a, "1"), start(recipe, flags, b, "2")]
    for proc in procs:
        finish(proc)
    wa, wb = (load_file(d / "checkpoint-2" / "model.safetensors") for d in (a, b))
    assert set(wa) == set(wb) and len(wa) > 10
    differ = [k for k in wa if not (wa[k].shape == wb[k].shape and bool((wa[k] == wb[k]).all()))]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    if (a / "tokenizer" / "tokenizer.json").is_file():
        assert digest(a / "tokenizer" / "tokenizer.json") == digest(b / "tokenizer" / "tokenizer.json")
