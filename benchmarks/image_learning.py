"""Do MAE and the two-view methods learn on CIFAR-10 in a CPU budget? kNN on frozen features vs random init.

Pretrains each method on CIFAR-10's 50,000 training images (labels unused) through its recipe
(``recipes/mae.py`` / ``recipes/two_view.py``), then scores a kNN (cosine, k = 200, T = 0.1, as lightly's
benchmarks) fitted on 5,000 training images and scored on 1,000 test images (seeded samples), for the pretrained
encoder and a randomly initialised one of the same shape, and a linear probe (logistic regression on the
standardised frozen features, the same images, its C chosen for each encoder by a 3-fold cross-validation on the
5,000: ``--probe_c``; ``--no_linear_probe`` skips it). Runs are by steps, so the figures do not depend on the
machine's speed; the wall time of each run is reported beside them.

    python benchmarks/image_learning.py                          # every method, the CPU preset
    python benchmarks/image_learning.py --methods simclr byol    # some of them
    python benchmarks/image_learning.py --quick                  # 5 steps each: a smoke run, not a result
    python benchmarks/image_learning.py --methods rotation --rotations 8   # flags of the recipe pass through
    python benchmarks/image_learning.py --output_dir runs --rescore       # the probes again on the kept exports

Writes one JSON line per method (``ours`` = kNN accuracy after pretraining, ``reference`` = the random-init
encoder's; ``probe`` / ``probe_reference`` the linear probe's) and, with ``--table FILE``, a markdown table beside
lightly's 200-epoch ResNet-18 kNN figures; ``knn_gain_ci95`` / ``probe_gain_ci95``: the 95 % half-width of the
gain over random init, paired over the same test images (``--eval_test_samples 10000``: CIFAR-10's whole test
split, a third of the default's interval). ``--probe_layers all`` (a recipe flag) adds ``knn_all_layers`` /
``probe_all_layers`` (and ``..._reference``, ``..._gain_ci95``): both on the stem's and every stage's output
(a ViT: every layer's), each pooled as the last is and concatenated.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfsup.benchmarking import machine
from selfsup.recipes import mae, two_view
from selfsup.train import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]

# lightly's CIFAR-10 benchmark, ResNet-18, 200 epochs, batch 512 (its docs): kNN accuracy
LIGHTLY_200_EPOCHS = {"simclr": 0.847, "moco_v2": 0.838, "byol": 0.869, "dino": 0.840, "simsiam": 0.819,
                      "swav": 0.812, "barlow_twins": 0.842}
METHODS = ["mae", "simclr", "moco_v1", "moco_v2", "moco_v3", "byol", "simsiam", "swav", "dino", "vicreg",
           "barlow_twins", "rotation", "jigsaw", "relative_position", "instance_discrimination", "deepcluster",
           "deep_infomax", "cmc", "colorization", "inpainting", "cpc"]
# steps and learning rate per method (the CPU preset's otherwise): what trains in about 15 minutes on 2 cores
STEPS = {"mae": 1500}
EXTRA = {"mae": ["--model_size", "small", "--learning_rate", "1.5e-3", "--warmup_ratio", "0.05"],
         # a memory bank learns from a row's second visit: 300 x 64 images are 0.4 epoch of 50,000, 3.8 of 5,000
         "instance_discrimination": ["--max_train_samples", "5000"],
         # DeepCluster re-clusters the whole training set each epoch: 3.8 epochs of 5,000 (k 100), 0.4 of 50,000
         "deepcluster": ["--max_train_samples", "5000"]}


def recipe_argv(method: str, data: Path, steps: int | None, out: Path, precision: str, extra: list[str],
                linear_probe: bool = True) -> list[str]:
    return ["--train_file", str(data / "train.parquet"), "--eval_dir", str(data), "--output_dir", str(out),
              "--eval_train_samples", "5000", "--eval_test_samples", "1000", "--report_to", "tensorboard",
              *([] if linear_probe else ["--no_linear_probe"]), "--random_init_seeds", "1",
              "--mixed_precision", precision, "--seed", "0",
              *(["--max_steps", str(steps)] if steps else []), *EXTRA.get(method, []), *extra]


def run(method: str, data: Path, steps: int | None, out: Path, precision: str, extra: list[str],
        linear_probe: bool = True) -> dict:
    common = recipe_argv(method, data, steps, out, precision, extra, linear_probe)
    out.mkdir(parents=True, exist_ok=True)
    (out / FLAGS_FILE).write_text(json.dumps(training_flags([method, *common])), encoding="utf-8")
    t0 = time.perf_counter()
    if method == "mae":
        metrics = mae.main(common)
    else:
        metrics = two_view.main(["--method", method, *common])
    return row(method, extra, metrics, time.perf_counter() - t0)


FLAGS_FILE = "image_learning_flags.json"     # a run's training flags, which --rescore checks against its own
EVAL_FLAGS = {"--probe_c": 1, "--no_linear_probe": 0, "--knn_k": 1, "--knn_temperature": 1,   # flag -> values
              "--eval_train_samples": 1, "--eval_test_samples": 1, "--probe_layers": 1, "--probe_readout": 1}


def training_flags(argv: list[str]) -> list[str]:
    """``[method, *recipe flags]`` without the evaluation's flags (:data:`EVAL_FLAGS`), which a rescore may change."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in EVAL_FLAGS:
            i += 1 + EVAL_FLAGS[argv[i]]
            continue
        out.append(argv[i])
        i += 1
    return out


def rescore(method: str, data: Path, steps: int | None, out: Path, precision: str, extra: list[str]) -> dict:
    """The probes of a kept run's export (``out/export``, written by this benchmark with the same flags) under the
    current evaluation: the encoder read back from the export, the random-init reference, the fit / score images
    and the probes built as ``recipes/two_view.py`` builds them after training. The kNN figures repeat the run's
    (an export is the trained encoder to the bit), so they check that the export is that run's."""
    from selfsup.config import parse_args, settings_from
    from selfsup.recipes._image import EvalImages, image_probe, labelled_images, load_training_images, patch_readout
    from selfsup.run import random_init_encoders, start_run
    from selfsup.train import TrainingSettings

    if method == "mae" or not (out / "export" / "config.json").is_file():
        raise SystemExit(f"error: {out / 'export'}: no single-encoder two-view export to rescore (MAE and CMC's "
                         "per-view exports are not read back: run them)")
    t0 = time.perf_counter()
    argv = ["--method", method, *recipe_argv(method, data, steps, out, precision, extra)]
    recorded = out / FLAGS_FILE
    if recorded.is_file():
        then, now = training_flags(json.loads(recorded.read_text(encoding="utf-8"))), training_flags(argv[1:])
        if then != now:
            raise SystemExit(f"error: {out}: trained with other flags than these: {' '.join(then)} (now: "
                             f"{' '.join(now)}); --rescore takes the run's flags (the probe's may differ)")
    else:
        print(f"{out}: no {FLAGS_FILE}; rescoring it as trained with these flags", flush=True)
    args = parse_args(two_view.build_parser(), argv)
    run_ = settings_from(two_view.TwoViewRun, args)
    accelerator = start_run(TrainingSettings.from_args(args), run_.seed)
    images, _ = load_training_images(run_, accelerator)
    settings = two_view.preset_training(TrainingSettings.from_args(args), run_, len(images), 1)
    fit, score, _ = labelled_images(run_, images)
    fresh = random_init_encoders(lambda: two_view.build_objective(run_, settings.max_steps, len(images)),
                                 run_.random_init_seeds, run_.seed, accelerator.device)
    encoder = two_view.imported_encoder(str(out / "export"))
    adapter = encoder.adapter          # a ViT's patches: the readout's patch is a whole number of them, as in training
    vit_patch = adapter.config.patch_size if hasattr(adapter, "patch_embed") else None
    readout = patch_readout(run_, two_view.pipeline_for(run_, vit_patch)) if run_.probe_readout != "image" else None
    metrics = image_probe({"": encoder, "random_init_": fresh},
                          EvalImages(fit, run_), EvalImages(score, run_), run_, accelerator.device, readout=readout)
    metrics.update(steps=settings.max_steps, global_batch_size=settings.per_device_train_batch_size)
    return row(method, extra, metrics, time.perf_counter() - t0)


def row(method: str, extra: list[str], metrics: dict, seconds: float) -> dict:
    if "--rotations" in extra:   # the rotation set, e.g. --rotations 8 (recipes/two_view.py)
        method = f"{method} ({extra[extra.index('--rotations') + 1]})"
    if "--probe_readout" in extra and extra[extra.index("--probe_readout") + 1] != "image":
        method = f"{method} (read through patches)"
    return {"method": method, "ours": metrics["knn/accuracy"], "reference": metrics["knn/random_init_accuracy"],
            "probe": metrics.get("probe/accuracy"), "probe_reference": metrics.get("probe/random_init_accuracy"),
            "knn_gain_ci95": metrics.get("knn/gain_ci95"), "probe_gain_ci95": metrics.get("probe/gain_ci95"),
            **{f"{kind}_all_layers{what}": metrics.get(f"{kind}/all_layers/{key}")      # with --probe_layers all
               for kind in ("knn", "probe") for what, key in (("", "accuracy"), ("_reference", "random_init_accuracy"),
                                                             ("_gain_ci95", "gain_ci95"))},
            "steps": metrics["steps"], "global_batch": metrics["global_batch_size"],
            "minutes": seconds / 60,
            "lightly_200_epochs": LIGHTLY_200_EPOCHS.get(method.split(" ")[0])}


def gain(r: dict, ours: str, reference: str, ci: str) -> str:
    """``+0.7 ± 0.9`` (points): the paired gain over random init and its 95 % interval, ``–`` without a probe."""
    if r.get(ours) is None or r.get(reference) is None:
        return "–"
    half = f" ± {r[ci] * 100:.1f}" if r.get(ci) is not None else ""
    return f"{(r[ours] - r[reference]) * 100:+.1f}{half}"


def table(rows: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}.", "",
             "| method | steps × batch | kNN after pretraining | kNN, random init | kNN gain (95 %) "
             "| probe after pretraining | probe, random init | probe gain (95 %) | minutes "
             "| lightly, 200 epochs (kNN) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = f"{r['lightly_200_epochs']:.1%}" if r["lightly_200_epochs"] else "–"
        probe = [f"{r[k]:.1%}" if r.get(k) is not None else "–" for k in ("probe", "probe_reference")]
        lines.append(f"| {r['method']} | {r['steps']} × {r['global_batch']} | {r['ours']:.1%} | {r['reference']:.1%} "
                     f"| {gain(r, 'ours', 'reference', 'knn_gain_ci95')} | {probe[0]} | {probe[1]} "
                     f"| {gain(r, 'probe', 'probe_reference', 'probe_gain_ci95')} | {r['minutes']:.1f} | {ref} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "images" / "cifar10"))
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--max_steps", type=int, default=None, help="default: the method's CPU budget")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no_linear_probe", action="store_true", help="the kNN only (the probe adds about a minute)")
    p.add_argument("--mixed_precision", default=None, help="default: bf16 where the CPU runs it natively, else no")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--table", default=None, help="append the markdown table to this file")
    p.add_argument("--rescore", action="store_true",
                   help="no training: re-run the probes on the exports a run of this benchmark left in --output_dir "
                        "(the same training flags, checked against the run's image_learning_flags.json; the "
                        "evaluation's may differ), e.g. after a change to the evaluation; the minutes are the probes'")
    args, extra = p.parse_known_args(argv)
    data = Path(args.data_dir)
    if not (data / "train.parquet").is_file():
        sys.exit(f"error: {data}: CIFAR-10 not found (expected train.parquet and test.parquet)")
    precision = args.mixed_precision or ("bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "no")
    if args.rescore and not args.output_dir:
        sys.exit("error: --rescore reads the runs of --output_dir")
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="image_learning_"))
    rows = []
    for method in args.methods:
        steps = 5 if args.quick else args.max_steps or STEPS.get(method)
        if args.rescore:
            line = rescore(method, data, steps, root / method, precision, extra)
        else:
            line = run(method, data, steps, root / method, precision, extra, linear_probe=not args.no_linear_probe)
        rows.append(line)
        print(json.dumps(line), flush=True)
    text = table(rows, f"{machine()}, {torch.get_num_threads()} threads, {precision}")
    print(text)
    if args.table:
        with open(args.table, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
