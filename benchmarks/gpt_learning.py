"""Does the GPT recipe learn as nanoGPT does? Character-level Shakespeare, nanoGPT's CPU configuration.

nanoGPT's README trains a small character-level GPT on a CPU ("I only have a macbook"):
``python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`` and reports a validation loss of 1.88. This runs ``recipes/gpt.py`` with the same shape and
nearly the same optimisation (``NANOGPT_SHAKESPEARE_CHAR`` in ``objectives/autoregressive/sizes.py``): 4 layers, 4 heads, 128
wide, context 64, batch 12, 2,000 steps, no dropout, AdamW (beta2 0.99, weight decay 0.1 on matrices and
embeddings), 100 warmup steps then cosine to a tenth of the peak, clipping at 1.0; the first 90 % of the
characters train, the last 10 % validate (nanoGPT's split). The peak learning rate is 4e-3 where nanoGPT's is 1e-3
(``--learning_rate 1e-3 --min_learning_rate 1e-4`` runs nanoGPT's): it was chosen with ``--tune``, which scores on
the last 10 % of the training text and never reads the validation text. Every non-overlapping validation block is
scored (nanoGPT estimates on 20 random batches of 12 windows, a noisier figure: see docs/recipes/gpt.md).

What differs: our layers keep biases (GPT-2's layout, so the export is a GPT2LMHeadModel; nanoGPT's config has
``bias=False``) and use GPT-2's tanh GELU (nanoGPT: exact GELU); the vocabulary is the training text's characters
plus ``<|endoftext|>``; training blocks are shuffled non-overlapping windows, where nanoGPT draws windows at random
offsets (``--block_stride 1`` starts a block at every character: about a million windows, drawn without
replacement).

    python benchmarks/gpt_learning.py            # 2,000 steps, a few minutes on 2 CPU cores
    python benchmarks/gpt_learning.py --quick    # 100 steps, a smoke run, not a result
    python benchmarks/gpt_learning.py --tune --learning_rate 3e-3 --min_learning_rate 3e-4   # compare settings

The last line is the JSON of DESIGN.md: ``ours`` = our validation loss (nats per character, lower is better),
``reference`` = nanoGPT's 1.88, ``ratio`` = reference / ours (above 1: ours is lower).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from selfsup.objectives.autoregressive.sizes import NANOGPT_SHAKESPEARE_CHAR as NANO
from selfsup.recipes import gpt

ROOT = Path(__file__).resolve().parents[1]


def split_corpus(src: Path, out: Path, validation_fraction: float, tune: bool = False) -> tuple[Path, Path, int, int]:
    """The first (1 - fraction) of the characters to train.txt, the rest to val.txt (nanoGPT's prepare.py).

    ``tune``: the validation characters are dropped and the same fraction of what is left becomes val.txt, a
    tuning split, so optimisation settings can be compared without looking at the validation text."""
    text = src.read_text(encoding="utf-8")
    if tune:
        text = text[:int(len(text) * (1 - validation_fraction))]
    cut = int(len(text) * (1 - validation_fraction))
    train, val = out / "train.txt", out / "val.txt"
    train.write_text(text[:cut], encoding="utf-8")
    val.write_text(text[cut:], encoding="utf-8")
    return train, val, cut, len(text) - cut


OPTIMISATION = ("learning_rate", "min_learning_rate", "warmup_steps", "adam_beta1", "adam_beta2", "adam_epsilon",
                "weight_decay", "max_grad_norm", "lr_scheduler_type")


def recipe_flags(train: Path, val: Path, out: Path, steps: int, eval_steps: int, stride: int | None,
                 seed: int = 42, settings: dict | None = None) -> list[str]:
    b = NANO["backbone"]
    o = {k: NANO[k] for k in OPTIMISATION} | (settings or {})
    return [*(["--block_stride", str(stride)] if stride else []), "--seed", str(seed),
        "--train_file", str(train), "--validation_file", str(val), "--sample_by", "document", "--tokenizer", "char",
        "--output_dir", str(out), "--model_size", "tiny", "--hidden_size", str(b["hidden_size"]),
        "--num_layers", str(b["num_layers"]), "--num_heads", str(b["num_heads"]), "--dropout", str(b["dropout"]),
        "--max_seq_length", str(NANO["context"]), "--per_device_train_batch_size", str(NANO["batch_size"]),
        "--max_steps", str(steps), *(x for k in OPTIMISATION for x in (f"--{k}", str(o[k]))),
        "--max_eval_blocks", "1000000", "--per_device_eval_batch_size", "256", "--eval_steps", str(eval_steps),
        "--mixed_precision", "no", "--report_to", "none", "--logging_steps", "100",
        "--prompt", "ROMEO:", "--max_new_tokens", "120", "--num_samples", "1",
    ]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--output_dir", default=None)
    p.add_argument("--block_stride", type=int, default=None, help="1: a training window at every character")
    p.add_argument("--seed", type=int, default=42, help="the recipe's seed (initialisation and data order)")
    p.add_argument("--tune", action="store_true",
                   help="score on the last 10 %% of the training text instead (the validation text is not read)")
    for k in OPTIMISATION:
        p.add_argument(f"--{k}", type=str if k == "lr_scheduler_type" else float, default=None,
                       help=f"default {NANO[k]}")
    args = p.parse_args(argv)
    settings = {k: getattr(args, k) for k in OPTIMISATION if getattr(args, k) is not None}
    if "warmup_steps" in settings:
        settings["warmup_steps"] = int(settings["warmup_steps"])
    data = Path(args.data)
    if not data.is_file():
        sys.exit(f"error: {data}: tinyshakespeare.txt not found")
    steps = args.max_steps or (100 if args.quick else NANO["max_steps"])
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="gpt_learning_"))
    out.mkdir(parents=True, exist_ok=True)
    train, val, n_train, n_val = split_corpus(data, out, NANO["validation_fraction"], args.tune)
    import datasets

    datasets.config.HF_DATASETS_CACHE = out / "datasets_cache"  # the packed blocks' cache stays in out/
    held_out = "tuning (the end of the training text)" if args.tune else "validation"
    print(f"{data.name}: {n_train:,} training and {n_val:,} {held_out} characters; {steps} steps")
    metrics = gpt.main(recipe_flags(train, val, out / "run", steps, max(steps // 4, 1), args.block_stride, args.seed,
                                    settings))
    result = {
        "name": "gpt_shakespeare_char_val_loss", "ours": round(metrics["eval/loss"], 4),
        "reference": NANO["reference_val_loss"], "unit": "validation loss (nats/char, lower is better)",
        "ratio": round(NANO["reference_val_loss"] / metrics["eval/loss"], 4),
        "train_loss": round(metrics["train_loss"], 4), "eval_accuracy": round(metrics["eval/accuracy"], 4),
        "steps": metrics["steps"], "block_stride": args.block_stride or NANO["context"], "seed": args.seed,
        "held_out": "tuning" if args.tune else "validation", **settings,
        "samples_per_second": round(metrics["samples_per_second"], 1),
        "train_seconds": round(metrics["steps"] * metrics["global_batch_size"] / metrics["samples_per_second"], 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
