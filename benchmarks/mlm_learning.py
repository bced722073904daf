"""Does MLM pretraining learn something? SST-2 linear probe after pretraining vs a random-init encoder.

Pretrains ``recipes/bert_mlm.py`` on SST-2's own training sentences (labels stripped) for a few minutes on CPU,
then fits a logistic regression on frozen mean-pooled features of SST-2 train and scores SST-2 test, for the
pretrained encoder and for a randomly initialised one of the same size (the recipe computes both). Two views:
the last layer, and every layer's mean-pooled output concatenated ("all layers").

    python benchmarks/mlm_learning.py            # BERT-tiny shape (128 wide, 2 layers), 1,500 steps
    python benchmarks/mlm_learning.py --quick    # 30 steps, under a minute: a smoke run, not a result
    python benchmarks/mlm_learning.py --objective data2vec   # data2vec text, tiny (64 wide), 3,000 steps

The last line is the JSON of DESIGN.md: ``ours`` = all-layers probe accuracy after pretraining, ``reference`` =
the same probe on the random-init encoder; the last-layer figures are beside them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from selfsup.recipes import bert_mlm, data2vec
from selfsup.train import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]


def strip_labels(src: Path, dst: Path) -> int:
    """SST-2 ``label sentence`` lines -> one unlabelled sentence per line."""
    sentences = [line.partition(" ")[2] for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    dst.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return len(sentences)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=str(ROOT.parent / "shared" / "data" / "text" / "sst2"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max_steps", type=int, default=None)
    p.add_argument("--model_size", default="tiny")
    p.add_argument("--hidden_size", default="128")
    p.add_argument("--num_layers", default="2")
    p.add_argument("--learning_rate", default=None, help="default: 2e-3 for mlm, 5e-4 for data2vec")
    p.add_argument("--vocab_size", default="4000")
    p.add_argument("--mixed_precision", default=None, help="default: bf16 where the CPU/GPU runs it natively, else no")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--objective", default="mlm", choices=["mlm", "data2vec"],
                   help="mlm: recipes/bert_mlm.py; data2vec: recipes/data2vec.py --modality text (--model_size's "
                        "own width and depth: the size flags are BERT's)")
    args = p.parse_args(argv)
    data = Path(args.data_dir)
    if not (data / "train.txt").is_file():
        sys.exit(f"error: {data}: SST-2 not found (expected train.txt and test.txt)")
    if args.mixed_precision is None:
        args.mixed_precision = "bf16" if torch.cuda.is_available() or cpu_has_native_bf16() else "no"
    steps = args.max_steps or (30 if args.quick else 1500 if args.objective == "mlm" else 3000)
    if args.learning_rate is None:
        args.learning_rate = "2e-3" if args.objective == "mlm" else "5e-4"
    size = f"{args.model_size} ({args.hidden_size} wide, {args.num_layers} layers)"
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="mlm_learning_"))
    corpus = out / "sst2_sentences.txt"
    out.mkdir(parents=True, exist_ok=True)
    n = strip_labels(data / "train.txt", corpus)
    print(f"pretraining a {size} model for {steps} steps on {n} unlabelled SST-2 training sentences")
    shape = ["--hidden_size", args.hidden_size, "--num_layers", args.num_layers] if args.objective == "mlm" \
        else ["--modality", "text"]
    recipe = bert_mlm if args.objective == "mlm" else data2vec
    metrics = recipe.main([
        "--train_file", str(corpus), "--output_dir", str(out / "run"), "--model_size", args.model_size, *shape,
        "--max_steps", str(steps), "--max_seq_length", "64", "--per_device_train_batch_size", "64",
        "--learning_rate", str(args.learning_rate), "--mixed_precision", args.mixed_precision, "--report_to", "none",
        "--vocab_size", args.vocab_size, "--eval_train_file", str(data / "train.txt"),
        "--eval_test_file", str(data / "test.txt"),
    ])
    result = {
        "name": f"{args.objective}_sst2_probe", "ours": metrics["probe/all_layers/accuracy"],
        "reference": metrics["probe/all_layers/random_init_accuracy"], "unit": "accuracy",
        "ratio": metrics["probe/all_layers/accuracy"] / metrics["probe/all_layers/random_init_accuracy"],
        "last_layer": metrics["probe/accuracy"], "last_layer_random_init": metrics["probe/random_init_accuracy"],
        "knn": metrics["knn/accuracy"], "knn_random_init": metrics["knn/random_init_accuracy"],
        "eval_mlm_accuracy": metrics.get("eval/mlm_accuracy"), "eval_loss": metrics.get("eval/loss"),
        "steps": steps, "model_size": size if args.objective == "mlm" else args.model_size,
        "samples_per_second": metrics["samples_per_second"], "mixed_precision": args.mixed_precision,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
