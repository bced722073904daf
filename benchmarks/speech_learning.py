"""Does speech pretraining learn something? FSDD linear probe after pretraining vs a random-init encoder.

Pretrains ``recipes/{wav2vec2,hubert,data2vec}.py`` on the FSDD training takes (5-49; the test takes 0-4 are
never seen) for a few minutes on CPU, then fits a logistic regression on frozen mean-pooled features for the
official split (train on takes 5-49, test on 0-4) and leave-one-speaker-out (6 folds; the held-out speaker's
training takes were seen, unlabelled, in pretraining), for the pretrained encoder and a random-init one of the
same size (the recipe computes both).

    python benchmarks/speech_learning.py                       # all three objectives, tiny models, ~4 min each
    python benchmarks/speech_learning.py --recipe hubert --max_steps 600
    python benchmarks/speech_learning.py --quick               # a smoke run, not a result
    python benchmarks/speech_learning.py --recipe hubert --hubert_iterations 2   # iteration 2 on iteration 1's model

One JSON line per objective (DESIGN.md's form): ``ours`` = official-split probe accuracy after pretraining,
``reference`` = the same probe on the random-init encoder, with the leave-one-speaker-out figures and the
log-spectrum baselines of ``../shared/data/README.md`` (93.3 % official, 57.2 % leave-one-speaker-out).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINES = {"official": 0.933, "loso": 0.572}   # log-spectrum mean+std features, ../shared/data/README.md
RECIPES = ("wav2vec2", "hubert", "data2vec")
# per objective: flags that suit a short CPU run on 2,700 short clips (the recipes' own defaults are for longer runs)
SETTINGS = {
    "wav2vec2": ["--gumbel_temperature_decay", "0.995", "--mask_prob", "0.5"],
    "hubert": ["--num_clusters", "50"],
    "data2vec": ["--ema_decay", "0.99", "--ema_end_decay", "0.999"],
}


def training_list(fsdd: Path, out: Path) -> int:
    """A file list of FSDD's training takes (5-49)."""
    clips = sorted(p for p in (fsdd / "recordings").glob("*.wav") if int(p.stem.split("_")[2]) >= 5)
    out.write_text("".join(f"{p.resolve()}\n" for p in clips), encoding="utf-8")
    return len(clips)


def run(recipe: str, args: argparse.Namespace, train_list: Path, out: Path, name: str | None = None,
        more: tuple[str, ...] = ()) -> dict:
    """One pretraining run of ``recipes/{recipe}.py`` (into OUT/{name}) and its probe figures."""
    name = name or recipe
    module = importlib.import_module(f"selfsup.recipes.{recipe}")
    start = time.time()
    metrics = module.main([
        "--train_file", str(train_list), "--output_dir", str(out / name), "--model_size", args.model_size,
        "--max_steps", str(args.max_steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--max_duration", "2.0", "--report_to", "none",
        "--eval_dir", str(args.fsdd), "--eval_split", "official,loso", "--mixed_precision", "no",
        *SETTINGS[recipe], *more, *args.extra,
    ])
    return {
        "name": f"{name}_fsdd_probe", "ours": metrics["probe/official/accuracy"],
        "reference": metrics["probe/official/random_init_accuracy"], "unit": "accuracy",
        "ratio": metrics["probe/official/accuracy"] / metrics["probe/official/random_init_accuracy"],
        "loso": metrics["probe/loso/accuracy"], "loso_random_init": metrics["probe/loso/random_init_accuracy"],
        "all_layers": metrics["probe/official/all_layers/accuracy"],
        "all_layers_random_init": metrics["probe/official/all_layers/random_init_accuracy"],
        "loso_all_layers": metrics["probe/loso/all_layers/accuracy"],
        "loso_all_layers_random_init": metrics["probe/loso/all_layers/random_init_accuracy"],
        "knn_official": metrics["knn/official/accuracy"],
        "knn_official_random_init": metrics["knn/official/random_init_accuracy"],
        "baseline_log_spectrum": BASELINES, "steps": metrics["steps"], "model_size": args.model_size,
        "minutes": round((time.time() - start) / 60, 1), "eval_loss": metrics.get("eval/loss"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="all", choices=[*RECIPES, "all"])
    p.add_argument("--fsdd", default=str(ROOT.parent / "shared" / "data" / "speech" / "fsdd"))
    p.add_argument("--model_size", default="tiny", help="tiny: 64 wide, 2 layers, 5-layer 32-channel conv encoder")
    p.add_argument("--max_steps", type=int, default=None, help="default: 2000 (--quick: 5)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--output_dir", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--hubert_iterations", type=int, default=1,
                   help="HuBERT iterations to run (2 and up cluster a layer of the previous iteration's model)")
    p.add_argument("extra", nargs="*", help="more recipe flags, after --")
    args = p.parse_args(argv)
    fsdd = Path(args.fsdd)
    if not (fsdd / "recordings").is_dir():
        sys.exit(f"error: {fsdd}: FSDD not found (expected recordings/*.wav)")
    args.max_steps = args.max_steps or (5 if args.quick else 2000)
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="speech_learning_"))
    out.mkdir(parents=True, exist_ok=True)
    n = training_list(fsdd, out / "train.txt")
    print(f"pretraining on {n} unlabelled FSDD training clips, {args.max_steps} steps of {args.batch_size}")
    results = []
    for recipe in RECIPES if args.recipe == "all" else (args.recipe,):
        results.append(run(recipe, args, out / "train.txt", out))
        print(json.dumps(results[-1]), flush=True)
        for i in range(2, args.hubert_iterations + 1) if recipe == "hubert" else ():
            previous = out / ("hubert" if i == 2 else f"hubert_iteration{i - 1}")
            results.append(run(recipe, args, out / "train.txt", out, f"hubert_iteration{i}",
                               ("--iteration", str(i), "--previous", str(previous))))
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    main()
