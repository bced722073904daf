"""The test tiers: the default run leaves out the long tier, and names any other test that took as long."""
from __future__ import annotations

from types import SimpleNamespace

from tests import conftest
from tests.conftest import ROOT


def test_the_default_run_leaves_out_the_long_and_slow_tiers_and_ci_runs_the_long_one():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")      # tomllib is Python 3.11+
    assert "addopts = \"-m 'not slow and not long' " in pyproject and '\n    "long: ' in pyproject
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("python -m pytest", "python -m pytest -m long"):
        assert command in ci and f"\n{command}\n" in readme


def test_an_unmarked_test_that_takes_the_long_tiers_time_is_named(monkeypatch):
    found: list = []
    monkeypatch.setattr(conftest, "_unmarked_long", found)

    def report(when, seconds, *marks):
        return SimpleNamespace(when=when, duration=seconds, nodeid=f"t.py::{when}_{seconds}",
                               keywords={"t.py": 1, **{m: 1 for m in marks}})

    for r in (report("call", 9.0), report("setup", 20.0), report("call", 9.0, "long"), report("call", 30.0, "slow"),
              report("teardown", 12.0), report("call", conftest.LONG_SECONDS - 0.1)):
        conftest.pytest_runtest_logreport(r)
    assert sorted(n for _, n in found) == ["t.py::call_9.0 (call)", "t.py::setup_20.0 (setup)"]
    lines: list = []
    conftest.pytest_terminal_summary(SimpleNamespace(write_sep=lambda sep, text: lines.append(text),
                                                     write_line=lines.append))
    assert "mark them @pytest.mark.long" in lines[0] and lines[1].endswith("t.py::setup_20.0 (setup)")
