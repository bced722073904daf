"""Shared fixtures: offline Hub, the real-data folder (tests that need it skip without it), tiny runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# pytest-xdist (-n auto): the workers share the cores, so each runs torch on its share of them (a test's own
# worker processes, started by torch.distributed.run, take one thread each already)
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# the default run stays a few minutes: its tests that take this long belong in the long tier (-m long)
LONG_SECONDS = 8.0
_unmarked_long: list[tuple[float, str]] = []


def pytest_runtest_logreport(report) -> None:
    """A test's set-up (where a module's fixture may start processes) or its call taking ``LONG_SECONDS``."""
    if report.when in ("setup", "call") and report.duration >= LONG_SECONDS \
            and not {"long", "slow"} & set(report.keywords):
        _unmarked_long.append((report.duration, f"{report.nodeid} ({report.when})"))


def pytest_terminal_summary(terminalreporter) -> None:
    if _unmarked_long:
        terminalreporter.write_sep("-", f"tests outside the long tier that took {LONG_SECONDS:.0f} s or more: "
                                        "mark them @pytest.mark.long")
        for seconds, nodeid in sorted(_unmarked_long, reverse=True):
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


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


def speech_argv(output_dir: Path, *extra: str, steps: int = 3) -> list[str]:
    """Flags for a speech recipe run of a few seconds on the built-in synthetic corpus."""
    return ["--output_dir", str(output_dir), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "4", "--synthetic_utterances", "40", "--max_duration", "1.0", *extra]


def straight_and_resumed(main, argv, root: Path, steps: int = 6, at: int = 3) -> tuple[dict, dict, dict]:
    """Model states of a straight run at ``steps``, of a run resumed from its checkpoint at ``at`` (same steps),
    and of the straight run at ``at``."""
    from safetensors.torch import load_file

    straight, resumed = root / "straight", root / "resumed"
    main(argv(straight, "--checkpointing_steps", str(at), "--checkpoints_total_limit", "0", steps=steps))
    main(argv(resumed, "--resume_from_checkpoint", str(straight / f"checkpoint-{at}"), "--checkpointing_steps",
              str(steps), steps=steps))
    return tuple(load_file(d / f"checkpoint-{n}" / "model.safetensors")
                 for d, n in ((straight, steps), (resumed, steps), (straight, at)))
