"""Self-supervised pretraining of a table encoder on UCI Adult, through ``recipes/tabular.py``, and what it buys.

1. **Frozen embeddings, every label.** The recipe pretrains on the 32,561 training rows (labels unused) and fits a
   logistic regression on the frozen [CLS] embeddings of all of them, scored on the 16,281 test rows, beside the same
   probe on a randomly initialised encoder and on the one-hot raw features; beside those, scikit-learn's
   ``HistGradientBoostingClassifier`` on the raw columns (categories native, default settings, not tuned) and the
   published test accuracies of tuned models (Gorishniy et al., NeurIPS 2021, table 2 -- XGBoost 0.872, MLP 0.852;
   FT-Transformer 0.860).
2. **Few labels.** With 1 % and 10 % of the training labels (a random subset per seed; 20 % of it held out to pick
   the best step and learning rate), the pretrained encoder + a linear head is fine-tuned, and the same model from a
   random initialisation is trained on the same labels with the same steps, rates and selection; mean +- std of the
   test accuracy over the seeds (the pretrained encoder is the same for every seed, so its spread is the labels' and
   the head's). The line says whether the pretrained mean beats the scratch mean by more than the larger std.

    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py                       # masked features, then few labels
    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py --method scarf
    python benchmarks/tabular_learning.py --quick                                 # under a minute: a smoke run

Prints one JSON line per figure (``name``, ``ours``, ``reference``, ``unit``, ``ratio`` = ours / reference, the
machine and the minutes).
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from selfsup.benchmarking import machine
from selfsup.config import settings_from
from selfsup.recipes import tabular
from selfsup.recipes._tabular import TabularRun, batches, build_objective, load_tables, pooled_encoder

ROOT = Path(__file__).resolve().parents[1]
ADULT = ROOT.parent / "shared" / "data" / "tabular" / "adult"
COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
           "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
           "income"]
PUBLISHED = {"xgboost_tuned": 0.872, "mlp_tuned": 0.852, "ft_transformer": 0.860}   # Gorishniy et al. 2021, table 2


def emit(line: dict, lines: list[dict]) -> None:
    lines.append(line)
    print(json.dumps(line), flush=True)


def recipe_argv(args, out: Path) -> list[str]:
    return ["--train_file", str(args.data / "train.csv"), "--validation_file", str(args.data / "test.csv"),
            "--column_names", *COLUMNS, "--label_column", "income", "--strip_label_suffix", ".",
            "--method", args.method, "--model_size", args.model_size, "--max_steps", str(args.pretrain_steps),
            "--per_device_train_batch_size", "256", "--learning_rate", "1e-3", "--report_to", "none",
            "--checkpointing_steps", str(args.pretrain_steps), "--probe_max_train", "0", "--seed", str(args.seed),
            "--output_dir", str(out), "--random_init_seeds", "1", "--mask_ratio", str(args.mask_ratio)]


def pretrained(run: TabularRun, schema, out: Path, steps: int):
    """The recipe's objective at its last checkpoint (the whole objective, loaded strictly)."""
    objective = build_objective(run, schema, steps)
    state = load_file(str(out / f"checkpoint-{steps}" / "model.safetensors"))
    objective.load_state_dict(state, strict=True)
    return pooled_encoder(objective.encoder())


def hist_gradient_boosting(data, seed: int) -> float:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_train = np.concatenate([data.train.numeric, data.train.categorical.astype(np.float32)], axis=1)
    x_test = np.concatenate([data.test.numeric, data.test.categorical.astype(np.float32)], axis=1)
    cats = np.arange(data.train.numeric.shape[1], x_train.shape[1])
    model = HistGradientBoostingClassifier(categorical_features=cats, random_state=seed).fit(x_train, data.train.labels)
    return float(model.score(x_test, data.test.labels))


@torch.no_grad()
def accuracy(encoder, head, arrays) -> float:
    encoder.eval()
    correct = 0
    for b, i in zip(batches(arrays, 2048), range(0, len(arrays), 2048)):
        pred = head(encoder.features(b)).argmax(-1)
        correct += int((pred.numpy() == arrays.labels[i:i + len(pred)]).sum())
    return correct / len(arrays)


def fine_tune(encoder, arrays, test, steps: int, lrs: list[float], seed: int, eval_every: int) -> float:
    """Encoder + a linear head trained on ``arrays`` (80 %) at each learning rate of ``lrs``; the step and the rate
    with the best accuracy on the other 20 % are kept; returns that model's test accuracy."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(arrays))
    cut = max(1, len(arrays) // 5)
    val, train = arrays.subset(np.sort(order[:cut])), arrays.subset(np.sort(order[cut:]))
    runs = [train_head_and_encoder(encoder, train, val, steps, lr, seed, eval_every) for lr in lrs]
    best = max(range(len(runs)), key=lambda k: runs[k][0])    # the first rate on a tie
    return accuracy(*runs[best][1], test)


def train_head_and_encoder(encoder, train, val, steps: int, lr: float, seed: int, eval_every: int):
    """(best validation accuracy, (encoder, head) at that step)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    encoder = copy.deepcopy(encoder)
    head = torch.nn.Linear(encoder.feature_size, int(max(train.labels.max(), val.labels.max())) + 1)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-5)
    best, best_state = -1.0, None
    batch = min(128, len(train))
    for step in range(1, steps + 1):
        encoder.train()
        idx = rng.choice(len(train), batch, replace=False)
        b = {"numeric": torch.from_numpy(train.numeric[idx]), "categorical": torch.from_numpy(train.categorical[idx])}
        loss = F.cross_entropy(head(encoder.features(b)), torch.from_numpy(train.labels[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            score = accuracy(encoder, head, val)
            if score > best:
                best, best_state = score, copy.deepcopy((encoder.state_dict(), head.state_dict()))
    encoder.load_state_dict(best_state[0])
    head.load_state_dict(best_state[1])
    return best, (encoder, head)


def few_labels(args, run, data, encoder, fraction: float) -> dict:
    t0 = time.perf_counter()
    ours, scratch = [], []
    for seed in range(args.seeds):
        pick = np.sort(np.random.default_rng(1000 + seed).permutation(len(data.train))[:int(round(fraction * len(data.train)))])
        subset = data.train.subset(pick)
        torch.manual_seed(seed + 1)
        fresh = pooled_encoder(build_objective(run, data.schema, 1).encoder())
        kw = dict(steps=args.finetune_steps, lrs=args.finetune_lrs, seed=seed, eval_every=args.eval_every)
        ours.append(fine_tune(encoder, subset, data.test, **kw))
        scratch.append(fine_tune(fresh, subset, data.test, **kw))
    o, s = np.array(ours), np.array(scratch)
    spread = float(max(o.std(), s.std()))
    return {"name": f"adult/few_labels_{fraction:.0%}/fine_tuned_vs_scratch", "ours": float(o.mean()),
            "ours_std": float(o.std()), "reference": float(s.mean()), "reference_std": float(s.std()),
            "unit": "test accuracy", "ratio": float(o.mean() / s.mean()), "margin": float(o.mean() - s.mean()),
            "beats_by_more_than_spread": bool(o.mean() - s.mean() > spread), "labels": int(round(fraction * len(data.train))),
            "per_seed_ours": [round(float(x), 4) for x in o], "per_seed_scratch": [round(float(x), 4) for x in s],
            "seeds": args.seeds, "finetune_steps": args.finetune_steps, "finetune_lrs": args.finetune_lrs,
            "method": args.method,
            "machine": machine(), "minutes": (time.perf_counter() - t0) / 60}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ADULT)
    p.add_argument("--method", default="masked_features", choices=["masked_features", "scarf", "data2vec"])
    p.add_argument("--model_size", default="small")
    p.add_argument("--pretrain_steps", type=int, default=1500)
    p.add_argument("--mask_ratio", type=float, default=0.3)
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--finetune_lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                   help="fine-tuning learning rates; each model keeps the one best on its validation rows")
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps, 2 seeds: a smoke run, not a result")
    args = p.parse_args(argv)
    if args.quick:
        args.model_size, args.pretrain_steps, args.finetune_steps, args.seeds, args.eval_every = "tiny", 20, 20, 2, 10
    if not (args.data / "train.csv").is_file():
        raise SystemExit(f"{args.data}: UCI Adult not found (see ../shared/data/README.md)")
    torch.set_num_threads(1)
    lines: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.perf_counter()
        argv = recipe_argv(args, out)
        metrics = tabular.main(argv)
        minutes = (time.perf_counter() - t0) / 60
        base = {"method": args.method, "model_size": args.model_size, "pretrain_steps": args.pretrain_steps,
                "seed": args.seed, "machine": machine()}
        emit({"name": "adult/frozen_probe_vs_random_init", "ours": metrics["probe/accuracy"],
              "reference": metrics["probe/random_init_accuracy"], "unit": "test accuracy",
              "ratio": metrics["probe/accuracy"] / metrics["probe/random_init_accuracy"], **base, "minutes": minutes,
              "train_loss": metrics["train_loss"]}, lines)
        emit({"name": "adult/frozen_probe_vs_raw_one_hot", "ours": metrics["probe/accuracy"],
              "reference": metrics["probe/raw_features/accuracy"], "unit": "test accuracy",
              "ratio": metrics["probe/accuracy"] / metrics["probe/raw_features/accuracy"], **base}, lines)
        run = settings_from(TabularRun, tabular.parse_args(tabular.build_parser(), argv))
        data = load_tables(run)
        t1 = time.perf_counter()
        hgb = hist_gradient_boosting(data, args.seed)
        emit({"name": "adult/frozen_probe_vs_hist_gradient_boosting", "ours": metrics["probe/accuracy"],
              "reference": hgb, "unit": "test accuracy", "ratio": metrics["probe/accuracy"] / hgb,
              "published": PUBLISHED, **base, "minutes": (time.perf_counter() - t1) / 60}, lines)
        encoder = pretrained(run, data.schema, out, metrics["steps"])
        for fraction in args.fractions:
            emit({**few_labels(args, run, data, encoder, fraction), "pretrain_steps": args.pretrain_steps,
                  "model_size": args.model_size}, lines)
    return lines


if __name__ == "__main__":
    main()
