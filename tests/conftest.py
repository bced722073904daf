"""Shared fixtures: offline Hub, the real-data folder (tests that need it skip without it), tiny runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def tiny_argv(output_dir: Path, *extra: str, steps: int = 4) -> list[str]:
    """Flags for a recipe run of a few seconds."""
    return ["--output_dir", str(output_dir), "--model_size", "tiny", "--max_steps", str(steps),
            "--per_device_train_batch_size", "8", "--report_to", "none", "--max_seq_length", "32",
            "--vocab_size", "600", "--max_eval_blocks", "16", *extra]
