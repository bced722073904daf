"""The benchmarks' shared timing: every side runs its warmup and its steps, the order flips every round."""
from selfsup.benchmarking import interleaved, interleaved_medians


def test_sides_alternate_and_every_step_runs(capsys):
    calls: list[str] = []
    sides = {name: (lambda name=name: calls.append(name)) for name in ("ours", "reference", "third")}
    medians = interleaved_medians(sides, steps=2, rounds=3, warmup=1, per_step=4, tag="t", unit="items/s")
    assert set(medians) == set(sides) and all(v > 0 for v in medians.values())
    timed = calls[3:]   # after one warmup call per side
    assert calls[:3] == ["ours", "reference", "third"]
    assert timed == (["ours"] * 2 + ["reference"] * 2 + ["third"] * 2 + ["third"] * 2 + ["reference"] * 2
                     + ["ours"] * 2 + ["ours"] * 2 + ["reference"] * 2 + ["third"] * 2)
    assert capsys.readouterr().out.count("items/s") == 3
    ours, ref = interleaved({k: sides[k] for k in ("ours", "reference")}, 1, 2, 0, 8, "t")
    assert ours > 0 and ref > 0


def test_no_module_of_the_project_edits_sys_path():
    """Everything imports through the installed package (``selfsup.``) or, for benchmarks and tests, from the
    repository root: no ``sys.path.insert`` / ``append`` / assignment anywhere."""
    import ast

    from tests.conftest import ROOT

    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("build", "dist") or rel.parts[0].startswith(".") or "egg-info" in rel.parts[0]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign) else []
            for t in ([target] if target is not None else []) + targets:
                if isinstance(t, ast.Attribute) and t.attr == "path" and isinstance(t.value, ast.Name) \
                        and t.value.id == "sys":
                    found.append(f"{rel}:{node.lineno}")
    assert found == []


def test_every_benchmark_imports_as_a_module_of_the_benchmarks_package():
    """A benchmark that needs another one's pieces gets them from the package, so it imports from anywhere (as
    ``benchmarks.X`` here, as a script from its folder), not only when its own folder is on ``sys.path``."""
    import importlib

    from tests.conftest import ROOT

    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name != "__init__.py":
            importlib.import_module(f"benchmarks.{path.stem}")


def test_the_sampling_benchmark_times_the_training_benchmarks_configs():
    from benchmarks import gpt_generate_speed, gpt_speed

    assert gpt_generate_speed.CONFIGS is gpt_speed.CONFIGS
    assert set(gpt_speed.CONFIGS) == {"small", "nanogpt"}
    assert gpt_speed.CONFIGS["small"]["backbone"]["hidden_size"] == 256
