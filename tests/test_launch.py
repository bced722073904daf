"""The tests' multi-process launches (``tests/launch.py``) need nothing on ``PATH``: workers start with the
interpreter running the tests, so a venv that is not activated runs every distributed test instead of skipping it."""
import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.launch import torchrun_command, worker_tensors


def test_the_command_starts_with_this_interpreter():
    cmd = torchrun_command(2, "worker.py", "OUT")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--standalone", "--nproc_per_node=2", "worker.py", "OUT"]


@pytest.mark.long
def test_two_workers_start_with_an_empty_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    result = worker_tensors(2, ROOT / "tests" / "gather_worker.py", tmp_path / "out.safetensors")
    assert int(result["__world_size"]) == 2


def test_no_test_looks_a_launcher_up_on_path_or_launches_elsewhere():
    """Every process a test starts is ``sys.executable`` (``tests/launch.py`` for several processes): no
    ``shutil.which``, no bare ``torchrun`` / ``accelerate`` executable, no subprocess outside launch.py that starts
    workers itself."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "which":
                found.append(f"{path.name}:{node.lineno}: shutil.which")
            if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant) \
                    and node.elts[0].value in ("torchrun", "accelerate"):
                found.append(f"{path.name}:{node.lineno}: runs {node.elts[0].value} from PATH")
            if isinstance(node, ast.Constant) and node.value == "torch.distributed.run" and path.name not in ("launch.py", Path(__file__).name):
                found.append(f"{path.name}:{node.lineno}: a launch of its own; use tests/launch.py")
    assert found == []
