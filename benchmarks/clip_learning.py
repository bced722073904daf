"""Does CLIP learn on CIFAR-10 in a CPU budget? Zero-shot accuracy on the test set vs a random-init model.

Pretrains ``recipes/clip.py`` on CIFAR-10's 50,000 training images with captions made from the class names and
CLIP's 18 CIFAR prompt templates (one drawn per image and epoch), then classifies the 10,000 test images zero-shot
(class names x the same templates -> averaged text embeddings), for the pretrained model and a randomly initialised
one of the same shape. transformers' zero-shot-image-classification pipeline then runs on the export for the first
``--pipeline_images`` test images, under its default template "This is a photo of {}.", and must agree with our
predictions under that template on every one. Runs are by steps, so the figures do not depend on the machine's
speed; the wall time is reported beside them.

    OMP_NUM_THREADS=1 python benchmarks/clip_learning.py       # CLIP, a small ViT: minutes on a CPU
    python benchmarks/clip_learning.py --loss siglip           # the sigmoid loss
    python benchmarks/clip_learning.py --quick                 # 5 steps: a smoke run, not a result

On cores shared with other jobs, one intra-op thread was several times faster than two here (two threads
that wait for each other stall whenever either is preempted: 3.4 s against 0.6 s a step).

Prints one JSON line per run (``ours`` = zero-shot top-1 after pretraining, ``reference`` = the random-init model's)
and, with ``--table FILE``, appends a markdown table; ``--figure PNG`` copies the confusion matrix there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from selfsup.benchmarking import machine
from selfsup.recipes import clip

ROOT = Path(__file__).resolve().parents[1]

# 900 steps of 64 pairs: about 5 minutes on one core; the small ViT (4 x 128, 8 x 8 patches) and text tower
SETTINGS = dict(clip=["--max_steps", "900", "--learning_rate", "1e-3"],
                siglip=["--max_steps", "900", "--learning_rate", "1e-3"])
COMMON = ["--model_size", "small", "--per_device_train_batch_size", "64", "--warmup_steps", "100",
          "--weight_decay", "0.1", "--crop_scale", "0.6", "1.0", "--hflip", "--logging_steps", "10"]


def run(loss: str, data: Path, out: Path, precision: str, quick: bool, pipeline_images: int, extra: list[str]) -> dict:
    steps = ["--max_steps", "5"] if quick else []
    argv = ["--loss", loss, "--train_file", str(data / "train.parquet"), "--zero_shot_dir", str(data),
            "--zero_shot_samples", "10000", "--output_dir", str(out), "--report_to", "tensorboard",
            "--mixed_precision", precision, "--seed", "0", "--pipeline_check_images", str(pipeline_images),
            *COMMON, *SETTINGS[loss], *steps, *extra]
    t0 = time.perf_counter()
    m = clip.main(argv)
    return {"name": f"clip_learning_{loss}", "loss": loss, "ours": m["zero_shot/accuracy"],
            "reference": m["zero_shot/random_init_accuracy"], "unit": "zero-shot top-1 on CIFAR-10 test",
            "ratio": m["zero_shot/accuracy"] / max(m["zero_shot/random_init_accuracy"], 1e-9),
            "top5": m["zero_shot/top5_accuracy"], "random_init_top5": m["zero_shot/random_init_top5_accuracy"],
            "test_images": m["zero_shot/num_images"], "pipeline_agreement": m.get("export/pipeline_agreement"),
            "pipeline_images": m.get("export/pipeline_images"), "steps": m["steps"],
            "global_batch": m["global_batch_size"], "logit_scale": m["logit_scale"],
            "minutes": (time.perf_counter() - t0) / 60, "confusion_png": m["zero_shot/confusion_png"]}


def table(rows: list[dict], machine: str) -> str:
    lines = [f"Machine: {machine}.", "",
             "| loss | steps × batch | zero-shot top-1 | top-5 | random init top-1 / top-5 | pipeline agrees | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['steps']} × {r['global_batch']} | {r['ours']:.1%} | {r['top5']:.1%} | "
                     f"{r['reference']:.1%} / {r['random_init_top5']:.1%} | "
                     f"{r['pipeline_agreement']:.0%} of {r['pipeline_images']} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "images" / "cifar10"))
    p.add_argument("--loss", nargs="+", default=["clip"], choices=["clip", "siglip"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--mixed_precision", default="no",
                   help="fp32 by default: at these widths bf16 autocast was slower on 2 shared cores (1.75 s vs 1.0 s "
                        "a step of 128 pairs)")
    p.add_argument("--pipeline_images", type=int, default=200)
    p.add_argument("--output_dir", default=None)
    p.add_argument("--table", default=None, help="append the markdown table to this file")
    p.add_argument("--figure", default=None, help="copy the confusion matrix PNG here")
    args, extra = p.parse_known_args(argv)
    data = Path(args.data_dir)
    if not (data / "train.parquet").is_file():
        sys.exit(f"error: {data}: CIFAR-10 not found (expected train.parquet and test.parquet)")
    precision = args.mixed_precision
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="clip_learning_"))
    rows = []
    for loss in args.loss:
        row = run(loss, data, root / loss, precision, args.quick, args.pipeline_images, extra)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(rows[0]["confusion_png"], args.figure)
    text = table(rows, f"{machine()}, {torch.get_num_threads()} threads, {precision}")
    print(text)
    if args.table:
        with open(args.table, "a", encoding="utf-8") as f:
            f.write(text + "\n")
    return rows


if __name__ == "__main__":
    main()
