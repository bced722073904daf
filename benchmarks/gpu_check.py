"""GPU check: every family's training step against its reference in bf16 on one CUDA device, and a few optimizer
steps of every recipe there, in one command of under five minutes.

    python -m benchmarks.gpu_check --out gpu_check.json                 (from the repository root, on a GPU machine)
    python -m benchmarks.gpu_check --compile --budget_seconds 600       (ours compiled too: a third side per family)
    python -m benchmarks.gpu_check --device cpu --tiny --precision fp32 (the same code on a CPU with tiny batches)

**Step benchmarks.** Each family's ``benchmarks/<family>_speed.py`` builds its two sides on the device with
``step_pair(device, bf16, ...)`` (the same models, batches and optimizers as its CPU benchmark; the loss checks stay
in those benchmarks' CPU runs). Here each side runs ``--warmup`` untimed steps, then ``--rounds`` interleaved rounds
(order flipped every round, :func:`selfsup.benchmarking.interleaved_medians`), with the number of steps per round
chosen so that a round of the slower side lasts about ``--round_seconds`` (or ``--steps``). Every step ends with a
device synchronisation, as the engine's loop reads the loss every step. Reported per family: samples/s of ours and
of the reference (median round), their ratio, the model's FLOPs per sample (the reference's forward + backward,
:func:`selfsup.benchmarking.count_flops`) and each side's MFU: achieved FLOP/s over the device's matmul peak
measured in the same run in the same precision (:func:`selfsup.benchmarking.matmul_peak`). With ``--compile``
ours runs a third time with its backbone(s) compiled (``selfsup.compiling``), compilation in the warmup and timed
apart (``compile_s``).

**Recipes.** Each recipe's ``main(argv)`` with ``--model_size tiny`` (or the recipe's own tiny sizes), its built-in
data, ``--max_steps`` ``--recipe_steps`` and ``--mixed_precision`` bf16 on the device accelerate picks (the GPU),
reporting the steps run, the engine's samples/s and the wall time of the whole run (data, build, train, probe,
export), or the error's last line.

``--budget_seconds`` (default 280) bounds the whole run: a family or recipe not started by then is listed as
skipped. One table is printed; ``--out`` writes it as JSON (``families``, ``recipes``, the device, its peak). On a
machine with no CUDA device (and no ``--device cpu``) it prints one line saying so and exits 0.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from selfsup.benchmarking import StepPair, interleaved_medians, machine, matmul_peak, mfu

# family -> its step benchmark's module; the keyword giving a tiny batch (``--tiny``)
FAMILIES = {"mlm": "benchmarks.mlm_speed", "wav2vec2": "benchmarks.wav2vec2_speed", "mae": "benchmarks.mae_speed",
            "two_view": "benchmarks.two_view_speed", "gpt": "benchmarks.gpt_speed", "clip": "benchmarks.clip_speed",
            "graph": "benchmarks.graph_speed", "timeseries": "benchmarks.timeseries_speed"}
TINY_BATCH = {"mlm": 2, "wav2vec2": 3, "mae": 4, "two_view": 4, "gpt": 2, "clip": 4, "graph": 8, "timeseries": 4}

TEXT = ["--per_device_train_batch_size", "8", "--max_seq_length", "32", "--vocab_size", "600", "--max_eval_blocks",
        "16", "--random_init_seeds", "1"]
SPEECH = ["--per_device_train_batch_size", "4", "--synthetic_utterances", "24", "--max_duration", "1.0",
          "--random_init_seeds", "1"]
IMAGE = ["--per_device_train_batch_size", "16", "--eval_train_samples", "120", "--eval_test_samples", "40",
         "--random_init_seeds", "1"]
# recipe run name -> (module under selfsup.recipes, its flags besides --output_dir / --max_steps / precision)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "bert_mlm": ("bert_mlm", ["--model_size", "tiny", *TEXT]),
    "gpt": ("gpt", ["--model_size", "tiny", *TEXT, "--num_samples", "0", "--max_new_tokens", "4"]),
    "data2vec_text": ("data2vec", ["--model_size", "tiny", "--modality", "text", *TEXT]),
    "data2vec_audio": ("data2vec", ["--model_size", "tiny", *SPEECH]),
    "wav2vec2": ("wav2vec2", ["--model_size", "tiny", *SPEECH]),
    "hubert": ("hubert", ["--model_size", "tiny", *SPEECH, "--num_clusters", "8"]),
    "mae": ("mae", ["--model_size", "tiny", *IMAGE]),
    "simclr": ("two_view", ["--method", "simclr", "--model_size", "tiny", "--backbone", "resnet_tiny",
                            "--image_size", "16", *IMAGE]),
    "dino": ("two_view", ["--method", "dino", "--model_size", "tiny", "--backbone", "resnet_tiny", "--image_size",
                          "16", *IMAGE]),
    "clip": ("clip", ["--model_size", "tiny", "--per_device_train_batch_size", "8", "--max_train_samples", "120",
                      "--vocab_size", "700", "--zero_shot_samples", "24", "--pipeline_check_images", "4"]),
    "graph": ("graph", ["--model_size", "tiny", "--random_init_seeds", "1"]),
    "timeseries": ("timeseries", ["--hidden_size", "16", "--num_layers", "2", "--heads", "2",
                                  "--per_device_train_batch_size", "8"]),
    "tabular": ("tabular", ["--model_size", "tiny", "--per_device_train_batch_size", "16"]),
}

FAMILY_COLUMNS = ("family", "unit", "batch", "ours", "reference", "ratio", "ours_compiled", "ratio_compiled",
                  "compile_s", "gflop_per_sample", "mfu_ours", "mfu_reference", "mfu_ours_compiled",
                  "mfu_ours_executed", "steps", "rounds", "seconds", "error")
RECIPE_COLUMNS = ("recipe", "steps", "samples_per_second", "seconds", "error")
NO_GPU = "gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to check"


def synchronised(step: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``step`` followed by a device synchronisation (CUDA), so a timed step is a finished one."""
    if device.type != "cuda":
        return step

    def run() -> None:
        step()
        torch.cuda.synchronize(device)
    return run


def steps_per_round(sides: dict[str, Callable[[], None]], round_seconds: float, low: int = 2, high: int = 200) -> int:
    """Steps per round such that the slowest side's round lasts about ``round_seconds`` (one timed step each)."""
    slowest = 0.0
    for step in sides.values():
        start = time.perf_counter()
        step()
        slowest = max(slowest, time.perf_counter() - start)
    return max(low, min(high, int(round_seconds / max(slowest, 1e-9))))


def family_row(name: str, pair: StepPair, medians: dict[str, float], flops_per_sample: float, peak: float,
               steps: int, rounds: int, seconds: float, executed_flops_per_sample: float | None = None
               ) -> dict[str, Any]:
    """One family's row: the medians, their ratios, the FLOPs per sample and each side's MFU against ``peak``
    (``mfu_ours_executed``: ours on the FLOPs it runs itself, where it skips some of the reference's)."""
    ours, ref = medians["ours"], medians["reference"]
    compiled = medians.get("ours_compiled")
    row = {"family": name, "unit": pair.unit, "batch": pair.per_step, "ours": ours, "reference": ref,
           "ratio": ours / ref, "ours_compiled": compiled,
           "ratio_compiled": None if compiled is None else compiled / ref,
           "compile_s": pair.compile_seconds[0] if pair.compile_seconds else None,
           "gflop_per_sample": flops_per_sample / 1e9, "mfu_ours": mfu(flops_per_sample, ours, peak),
           "mfu_reference": mfu(flops_per_sample, ref, peak),
           "mfu_ours_compiled": None if compiled is None else mfu(flops_per_sample, compiled, peak),
           "mfu_ours_executed": (None if executed_flops_per_sample is None
                                 else mfu(executed_flops_per_sample, ours, peak)),
           "steps": steps, "rounds": rounds, "seconds": seconds, "error": None}
    assert set(row) == set(FAMILY_COLUMNS)
    return row


def run_family(name: str, device: torch.device, bf16: bool, peak: float, *, tiny: bool = False,
               compile_backend: str | None = None, warmup: int = 3, rounds: int = 3, steps: int | None = None,
               round_seconds: float = 1.0) -> dict[str, Any]:
    """Build ``name``'s step pair on ``device``, count its FLOPs, time it; a failure becomes the row's ``error``."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(FAMILIES[name])
        kwargs = {"batch_size": TINY_BATCH[name]} if tiny else {}
        pair = module.step_pair(device, bf16, True, compile_backend=compile_backend, **kwargs)
        flops, executed = pair.flops_per_sample(), pair.executed_flops_per_sample()
        sides = {k: synchronised(v, device) for k, v in pair.sides().items()}
        for step in sides.values():                         # compilation, if any, happens here (timed apart)
            for _ in range(warmup):
                step()
        n = steps or steps_per_round(sides, round_seconds)
        medians = interleaved_medians(sides, n, rounds, 0, pair.per_step, name, pair.unit)
        return family_row(name, pair, medians, flops, peak, n, rounds, time.perf_counter() - start, executed)
    except Exception as err:  # noqa: BLE001 - one family's failure is reported in its row, the check goes on
        traceback.print_exc()
        return {**dict.fromkeys(FAMILY_COLUMNS), "family": name, "seconds": time.perf_counter() - start,
                "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}


def run_recipe(name: str, steps: int, precision: str, root: Path) -> dict[str, Any]:
    """``selfsup.recipes.<recipe>.main`` for ``steps`` optimizer steps on the built-in data; its figures or error."""
    module, flags = RECIPES[name]
    argv = ["--output_dir", str(root / name), "--max_steps", str(steps), "--report_to", "none",
            "--mixed_precision", "bf16" if precision == "bf16" else "no", *flags]
    start = time.perf_counter()
    try:
        metrics = importlib.import_module(f"selfsup.recipes.{module}").main(argv)
        return {"recipe": name, "steps": metrics.get("steps"), "samples_per_second": metrics.get("samples_per_second"),
                "seconds": time.perf_counter() - start, "error": None}
    except BaseException as err:  # noqa: BLE001 - SystemExit from a recipe's one-line error included
        if isinstance(err, KeyboardInterrupt):
            raise
        traceback.print_exc()
        return {"recipe": name, "steps": None, "samples_per_second": None, "seconds": time.perf_counter() - start,
                "error": f"{type(err).__name__}: {err}".splitlines()[0][:200]}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as an aligned text table of ``columns`` (MFU as percentages; ``-`` where there is no value)."""
    cells = [list(columns)] + [[fmt_cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in cells)


def fmt_cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column.startswith("mfu"):
        return f"{value:.1%}"
    if column in ("ratio", "ratio_compiled"):
        return f"{value:.2f}x"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3g}"
    return str(value)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tiny check of this code)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--tiny", action="store_true", help="tiny batches (each family's TINY_BATCH), 1 step x 1 round")
    p.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES), metavar="FAMILY",
                   help=f"step benchmarks to run (default all: {', '.join(FAMILIES)}); none: give the flag alone")
    p.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE",
                   help=f"recipes to run (default all: {', '.join(RECIPES)}); none: give the flag alone")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, choices=("inductor", "aot_eager", "eager"),
                   metavar="BACKEND", help="also time ours with its backbone(s) compiled (default backend inductor)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 3; --tiny 1)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; --tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default: from --round_seconds; "
                                                           "--tiny 1)")
    p.add_argument("--round_seconds", type=float, default=1.0, help="about how long the slower side's round lasts")
    p.add_argument("--recipe_steps", type=int, default=5, help="optimizer steps per recipe run")
    p.add_argument("--budget_seconds", type=float, default=280.0,
                   help="nothing new starts after this many seconds; what is left is listed as skipped")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    for key, normal, tiny in (("warmup", 3, 1), ("rounds", 3, 1), ("steps", None, 1)):
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else normal)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return None
    start = time.perf_counter()
    bf16 = args.precision == "bf16"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    peak = statistics.median(matmul_peak(device, torch.bfloat16 if bf16 else torch.float32) for _ in range(3))
    print(f"gpu_check on {name} ({device}), {args.precision}, torch {torch.__version__}; measured {args.precision} "
          f"matmul peak {peak / 1e12:.3g} TFLOP/s", flush=True)
    families, recipes = [], []
    for fam in args.families:
        if time.perf_counter() - start > args.budget_seconds:
            families.append({**dict.fromkeys(FAMILY_COLUMNS), "family": fam, "error": "skipped: over the budget"})
            continue
        families.append(run_family(fam, device, bf16, peak, tiny=args.tiny, compile_backend=args.compile,
                                   warmup=args.warmup, rounds=args.rounds, steps=args.steps,
                                   round_seconds=args.round_seconds))
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for rec in args.recipes:
            if time.perf_counter() - start > args.budget_seconds:
                recipes.append({**dict.fromkeys(RECIPE_COLUMNS), "recipe": rec, "error": "skipped: over the budget"})
                continue
            recipes.append(run_recipe(rec, args.recipe_steps, args.precision, Path(tmp)))
    result = {"name": "gpu_check", "device": str(device), "device_name": name, "precision": args.precision,
              "torch": torch.__version__, "matmul_peak_tflops": peak / 1e12, "compile": args.compile,
              "tiny": args.tiny, "families": families, "recipes": recipes, "seconds": time.perf_counter() - start}
    print(f"\n== step benchmarks ({args.precision}, {name}; MFU over a measured {peak / 1e12:.3g} TFLOP/s matmul)")
    print(table(families, [c for c in FAMILY_COLUMNS if args.compile or "compile" not in c]))
    print(f"\n== recipes ({args.recipe_steps} steps each, --model_size tiny)")
    print(table(recipes, RECIPE_COLUMNS))
    print(f"\ntotal {result['seconds']:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"written: {args.out}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
