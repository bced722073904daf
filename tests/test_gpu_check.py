"""benchmarks/gpu_check.py on a CPU: the one line and exit code 0 without a GPU, and the same code as on a GPU with
tiny batches (``--device cpu --tiny``): the table's rows and columns, MFU = achieved FLOP/s over the peak with the
FLOPs that ``count_flops`` gives for the same reference step, a recipe run, the budget, the JSON round trip."""
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import gpu_check, mae_speed
from selfsup.benchmarking import StepPair, count_flops
from tests.conftest import ROOT


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [gpu_check.NO_GPU]


def test_a_row_is_the_medians_their_ratio_and_mfu_over_the_peak():
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(8, 16)
    pair = StepPair(lambda: None, lambda: None, 8, lambda: lin(x).sum().backward())
    flops = pair.flops_per_sample()
    assert flops == 2 * (2 * 16 * 4)                       # forward and the weight's gradient, per sample
    row = gpu_check.family_row("toy", pair, {"ours": 300.0, "reference": 200.0}, flops, 1e6, 5, 3, 1.5, flops / 2)
    assert list(row) == list(gpu_check.FAMILY_COLUMNS)
    assert row["ratio"] == pytest.approx(1.5)
    assert row["mfu_ours"] == pytest.approx(flops * 300 / 1e6) and row["mfu_reference"] == pytest.approx(flops * 200 / 1e6)
    assert row["mfu_ours_executed"] == pytest.approx(row["mfu_ours"] / 2)
    assert row["ours_compiled"] is None and row["error"] is None


@pytest.mark.long
def test_tiny_cpu_run_gives_the_table_the_mfu_of_the_counted_flops_and_its_json(tmp_path, capsys):
    out = tmp_path / "check.json"
    result = gpu_check.main(["--device", "cpu", "--tiny", "--precision", "fp32", "--families", "mae",
                             "--recipes", "mae", "--recipe_steps", "2", "--compile", "eager", "--out", str(out)])
    printed = capsys.readouterr().out
    (row,) = result["families"]
    assert row["family"] == "mae" and row["error"] is None, row["error"]
    assert row["batch"] == gpu_check.TINY_BATCH["mae"] and row["steps"] == 1 and row["rounds"] == 1
    assert row["ours"] > 0 and row["reference"] > 0 and row["ours_compiled"] > 0
    assert row["ratio"] == pytest.approx(row["ours"] / row["reference"])
    assert row["ratio_compiled"] == pytest.approx(row["ours_compiled"] / row["reference"])
    assert row["compile_s"] > 0
    # the FLOPs: count_flops of the same reference step, built here from the benchmark's own pieces
    _, ref = mae_speed.build_models()
    batch = mae_speed.make_batch(batch_size=gpu_check.TINY_BATCH["mae"])
    expected = count_flops(lambda: mae_speed.reference_loss(ref, batch).backward()) / len(batch[0])
    assert row["gflop_per_sample"] * 1e9 == pytest.approx(expected, rel=1e-12)
    peak = result["matmul_peak_tflops"] * 1e12
    assert row["mfu_ours"] == pytest.approx(expected * row["ours"] / peak)
    assert row["mfu_reference"] == pytest.approx(expected * row["reference"] / peak)
    assert 0 < row["mfu_ours_executed"] < row["mfu_ours"]      # ours runs fewer FLOPs than the reference's
    (recipe,) = result["recipes"]
    assert recipe == {**recipe, "recipe": "mae", "steps": 2, "error": None} and recipe["samples_per_second"] > 0
    # the printed table: a header of the columns, one line per row
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("family "))
    assert lines[header].split() == list(gpu_check.FAMILY_COLUMNS)        # --compile: the compiled columns too
    cells = lines[header + 1].split()
    assert cells[0] == "mae" and cells[5] == f"{row['ratio']:.2f}x" and cells[10] == f"{row['mfu_ours']:.1%}"
    assert any(line.split()[:2] == ["mae", "2"] for line in lines[header + 2:])
    assert json.loads(out.read_text()) == result


def test_nothing_starts_after_the_budget(capsys):
    # fp32: the peak matmul it measures first is emulated in bf16 on a CPU without native bf16 (a minute there)
    result = gpu_check.main(["--device", "cpu", "--tiny", "--precision", "fp32", "--families", "mlm", "gpt",
                             "--recipes", "graph", "--budget_seconds", "0"])
    assert [r["error"] for r in result["families"] + result["recipes"]] == ["skipped: over the budget"] * 3
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("family "))
    assert "compile_s" not in lines[header]                # no compiled columns without --compile
    assert [line.split()[0] for line in lines[header + 1:header + 3]] == ["mlm", "gpt"]
