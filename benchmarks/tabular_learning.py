"""Self-supervised pretraining of a table encoder on UCI Adult, through ``recipes/tabular.py``, and what it buys.

1. **Frozen embeddings, every label.** The recipe pretrains on the 32,561 training rows (labels unused; 5,000 steps
   of 256 rows, about 39 epochs, ``--pretrain_steps``) and fits a logistic regression on the frozen embeddings of all
   of them, scored on the 16,281 test rows, beside the same probe on a randomly initialised encoder and on the one-hot
   raw features; beside those, scikit-learn's ``HistGradientBoostingClassifier`` on the raw columns (categories
   native, default settings, not tuned) and the published test accuracies of tuned models (Gorishniy et al., NeurIPS
   2021, table 2 -- XGBoost 0.872, MLP 0.852; FT-Transformer 0.860).
2. **Few labels.** With 1 % and 10 % of the training labels (a random subset per seed, the same for both models;
   ``--val_share`` 20 % of it held out), the pretrained encoder + a linear head is fine-tuned, and the same model from
   a random initialisation is trained on the same labels with the same protocol (:class:`Protocol`): LP-FT -- the head
   first fitted as a logistic regression on the frozen embeddings (``--no_lp``: a random head) --, then
   ``--finetune_steps`` (300) of AdamW at each head rate of ``--finetune_lrs`` (1e-4, 3e-4, 1e-3) times each encoder
   rate of ``--encoder_lr_scales`` (1, 0.1) times it; each model keeps the step (step 0, the linear probe alone,
   included) and the rates best on its own validation rows (``--select accuracy``: ties to the lower log loss);
   ``--anchor A`` adds L2-SP, A / 2 times the squared distance of the encoder's weights from where fine-tuning starts;
   ``--folds K`` chooses the rates and the step by K-fold cross-validation over every labelled row instead of one
   held-out share, then trains on all of them.
   Mean +- std of the test accuracy over the seeds (the pretrained encoder is the same for every seed, so its spread
   is the labels' and the head's), the validation accuracy of the kept models, and the per-seed paired difference.
   The line says whether the pretrained mean beats the scratch mean by more than the larger std. Before it, for the
   same labelled rows, the frozen encoders: a logistic regression (C by 5-fold cross-validation on those rows) on the
   pretrained encoder, on the scratch model's random init and on the one-hot raw features.

    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py                       # masked features, then few labels
    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py --method scarf --pretrain_dir runs/scarf5000
    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py --method scarf --backbone mlp    # SCARF's MLP encoder
    OMP_NUM_THREADS=1 python benchmarks/tabular_learning.py --method scarf --backbone mlp --pretrain_steps 1000 \
        --temperature 0.2 --folds 5 --fractions 0.01      # cross-validated fine-tuning (docs/recipes/tabular.md)
    python benchmarks/tabular_learning.py --quick                                 # under a minute: a smoke run

``--pretrain_dir`` keeps the pretraining run and reuses it when it holds one made with the same recipe flags (the
recipe is deterministic; the line says ``pretrain_reused`` and gives the minutes of the kept run). Prints one JSON
line per figure (``name``, ``ours``, ``reference``, ``unit``, ``ratio`` = ours / reference, the machine and the
minutes).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from selfsup.benchmarking import machine
from selfsup.config import settings_from
from selfsup.recipes import tabular
from selfsup.evaluate import PROBE_C_GRID, linear_probe
from selfsup.recipes._tabular import (TabularRun, batches, build_objective, embeddings, load_tables, one_hot_features,
                                      pooled_encoder)

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
            "--method", args.method, *(["--backbone", args.backbone] if args.backbone != "transformer" else []),
            "--model_size", args.model_size, "--max_steps", str(args.pretrain_steps),
            "--per_device_train_batch_size", "256", "--learning_rate", "1e-3", "--report_to", "none",
            "--checkpointing_steps", str(args.pretrain_steps), "--probe_max_train", "0", "--seed", str(args.seed),
            "--output_dir", str(out), "--random_init_seeds", "1", "--mask_ratio", str(args.mask_ratio),
            *(["--temperature", str(args.temperature)] if args.temperature is not None else [])]


def kept_run(out: Path, argv: list[str]):
    """(metrics, pretraining minutes) of a run kept in ``out`` by an earlier ``--pretrain_dir`` with the same recipe
    flags (the recipe is deterministic: the same weights), else (None, None)."""
    record = out / "benchmark_run.json"
    if not (record.is_file() and (out / "metrics.json").is_file()):
        return None, None
    kept = json.loads(record.read_text())
    if kept["recipe_argv"] != argv:
        raise SystemExit(f"{out}: kept by a run with other recipe flags ({kept['recipe_argv']}); give another "
                         f"--pretrain_dir")
    return {**json.loads((out / "metrics.json").read_text()), "reused": True}, kept["minutes"]


def pretrain(argv: list[str], out: Path, keep: bool):
    """(the recipe's metrics, its minutes): run now, or the run kept in ``out`` (``keep``) with the same flags."""
    metrics, minutes = kept_run(out, argv) if keep else (None, None)
    if metrics is None:
        t0 = time.perf_counter()
        metrics = tabular.main(argv)
        minutes = (time.perf_counter() - t0) / 60
        if keep:
            (out / "benchmark_run.json").write_text(json.dumps({"recipe_argv": argv, "minutes": minutes}))
    return metrics, minutes


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


@dataclass
class Protocol:
    """How a model is fine-tuned on few labels (the same for the pretrained and the scratch model): ``steps`` of
    AdamW on batches of up to 128 rows at each head rate of ``lrs`` and each encoder rate of ``encoder_lr_scales``
    times it,
    after ``lp`` (the head first fitted as a logistic regression on the frozen embeddings: LP-FT) or not; every
    ``eval_every`` steps (and at step 0) the model is scored on the validation rows (``val_share`` of the labelled
    subset) and the step and rate best on them (``select``: accuracy, ties to the lower log loss; or the log loss)
    are kept; with ``folds`` K > 0, K-fold cross-validation over every labelled row chooses them instead and the
    model is then trained on all the rows (:func:`cross_validated_fine_tune`). ``anchor`` > 0 adds L2-SP (Li et al.,
    ICML 2018): ``anchor / 2`` times the squared distance of the encoder's weights from those fine-tuning starts
    from (the pretrained weights, or the scratch model's random initialisation) to the loss."""

    steps: int = 300
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    encoder_lr_scales: tuple[float, ...] = (1.0, 0.1)
    lp: bool = True
    weight_decay: float = 1e-5
    val_share: float = 0.2
    select: str = "accuracy"
    eval_every: int = 25
    anchor: float = 0.0
    folds: int = 0


def anchor_penalty(encoder, start: list[torch.Tensor], weight: float) -> torch.Tensor:
    """L2-SP: ``weight / 2 * sum ||w - w0||^2`` over the encoder's parameters, ``start`` their values w0 where
    fine-tuning began."""
    return 0.5 * weight * sum(((p - p0) ** 2).sum() for p, p0 in zip(encoder.parameters(), start))


@torch.no_grad()
def scores(encoder, head, arrays) -> tuple[float, float]:
    """(accuracy, mean log loss) on ``arrays`` (eval mode)."""
    encoder.eval()
    correct, loss = 0, 0.0
    for b, i in zip(batches(arrays, 2048), range(0, len(arrays), 2048)):
        logits = head(encoder.features(b))
        labels = torch.from_numpy(arrays.labels[i:i + len(logits)])
        correct += int((logits.argmax(-1) == labels).sum())
        loss += float(F.cross_entropy(logits, labels, reduction="sum"))
    return correct / len(arrays), loss / len(arrays)


def accuracy(encoder, head, arrays) -> float:
    return scores(encoder, head, arrays)[0]


def fine_tune(encoder, arrays, test, protocol: Protocol, seed: int) -> tuple[float, float]:
    """Encoder + a linear head fine-tuned on the labelled rows ``arrays`` at each pair of rates of the protocol, the
    step and the rates chosen on rows the model was not trained on; returns (the chosen model's validation accuracy,
    its test accuracy). ``protocol.folds`` 0: the rows minus a held-out ``val_share``, the model kept at the step
    best on the held-out rows; ``folds`` K: K-fold cross-validation over every labelled row picks the rates and the
    step (by the pooled out-of-fold scores), then the model is trained on all the rows for that many steps."""
    if protocol.folds:
        return cross_validated_fine_tune(encoder, arrays, test, protocol, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(arrays))
    cut = max(1, int(round(len(arrays) * protocol.val_share)))
    val, train = arrays.subset(np.sort(order[:cut])), arrays.subset(np.sort(order[cut:]))
    runs = [train_head_and_encoder(encoder, train, val, protocol, lr, scale, seed)
            for scale in protocol.encoder_lr_scales for lr in protocol.lrs]
    best = max(range(len(runs)), key=lambda k: runs[k][0])    # the first pair on a tie
    return runs[best][1], accuracy(*runs[best][2], test)


def selection_key(acc: float, nll: float, select: str) -> tuple[float, ...]:
    """What picks the step and rates (larger is better); a step whose log loss is not finite (a diverged
    fine-tune) ranks below every finite one."""
    if not math.isfinite(nll):
        return (-math.inf,) * (2 if select == "accuracy" else 1)
    return (acc, -nll) if select == "accuracy" else (-nll,)


def cross_validated_fine_tune(encoder, arrays, test, protocol: Protocol, seed: int) -> tuple[float, float]:
    """:func:`fine_tune` with ``protocol.folds`` folds: for each pair of rates and each fold, the model trains on the
    other folds and is scored on the fold every ``eval_every`` steps; the out-of-fold correct counts and log losses
    are summed over the folds, and the (rates, step) best on them is trained again on every labelled row."""
    from sklearn.model_selection import StratifiedKFold

    rarest = int(np.bincount(arrays.labels).min()) if len(arrays) else 0
    if rarest < protocol.folds:
        raise SystemExit(f"--folds {protocol.folds}: {len(arrays)} labelled rows, the rarest class has {rarest}; each "
                         f"fold needs one of every class (fewer folds, or more labels)")
    folds = StratifiedKFold(protocol.folds, shuffle=True, random_state=seed).split(arrays.labels, arrays.labels)
    folds = [(arrays.subset(np.sort(a)), arrays.subset(np.sort(b))) for a, b in folds]
    classes = int(arrays.labels.max()) + 1
    best = None
    for scale in protocol.encoder_lr_scales:
        for lr in protocol.lrs:
            pooled: dict[int, list[float]] = {}
            for train, val in folds:
                def record(step, enc, head, val=val):
                    acc, nll = scores(enc, head, val)
                    total = pooled.setdefault(step, [0.0, 0.0])
                    total[0] += acc * len(val)
                    total[1] += nll * len(val)
                train_steps(encoder, train, protocol, lr, scale, seed, on_eval=record, num_classes=classes)
            for step, (correct, nll) in sorted(pooled.items()):
                key = selection_key(correct / len(arrays), nll / len(arrays), protocol.select)
                if best is None or key > best[0]:          # the first pair and the earliest step on a tie
                    best = (key, correct / len(arrays), lr, scale, step)
    _, val_acc, lr, scale, step = best
    model = train_steps(encoder, arrays, protocol, lr, scale, seed, steps=step, num_classes=classes)
    return val_acc, accuracy(*model, test)


def logistic_head(encoder, train, num_classes: int) -> torch.nn.Linear:
    """A linear head fitted as a logistic regression (scikit-learn, C = 1) on the frozen embeddings of ``train``."""
    from sklearn.linear_model import LogisticRegression

    encoder.eval()
    with torch.no_grad():
        x = torch.cat([encoder.features(b) for b in batches(train, 2048)]).numpy()
    clf = LogisticRegression(max_iter=2000).fit(x, train.labels)
    head = torch.nn.Linear(encoder.feature_size, num_classes)
    with torch.no_grad():
        w, b = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
        if num_classes == 2:     # scikit-learn's binary model is one logit: split it over the two classes
            w, b = torch.cat([-w / 2, w / 2]), torch.cat([-b / 2, b / 2])
        head.weight.copy_(w)
        head.bias.copy_(b)
    return head


def train_steps(encoder, train, protocol: Protocol, lr: float, scale: float, seed: int, steps: int | None = None,
                on_eval=None, num_classes: int | None = None):
    """A copy of ``encoder`` and a linear head (fitted as a logistic regression on the frozen embeddings first,
    ``protocol.lp``, else random) trained ``steps`` (default ``protocol.steps``) AdamW steps on batches of up to
    128 rows of ``train``; ``on_eval(step, encoder, head)`` is called every ``protocol.eval_every`` steps, at the
    last and, with LP-FT, at step 0. Returns (encoder, head)."""
    steps = protocol.steps if steps is None else steps
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    encoder = copy.deepcopy(encoder)
    num_classes = int(train.labels.max()) + 1 if num_classes is None else num_classes
    head = (logistic_head(encoder, train, num_classes) if protocol.lp
            else torch.nn.Linear(encoder.feature_size, num_classes))
    start = [p.detach().clone() for p in encoder.parameters()]
    opt = torch.optim.AdamW([{"params": list(encoder.parameters()), "lr": lr * scale},
                             {"params": list(head.parameters()), "lr": lr}], lr=lr,
                            weight_decay=protocol.weight_decay)
    batch = min(128, len(train))
    for step in range(0, steps + 1):
        if step:
            encoder.train()
            idx = rng.choice(len(train), batch, replace=False)
            b = {"numeric": torch.from_numpy(train.numeric[idx]),
                 "categorical": torch.from_numpy(train.categorical[idx])}
            loss = F.cross_entropy(head(encoder.features(b)), torch.from_numpy(train.labels[idx]))
            if protocol.anchor:
                loss = loss + anchor_penalty(encoder, start, protocol.anchor)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if on_eval is not None and (step or protocol.lp) and (step % protocol.eval_every == 0 or step == steps):
            on_eval(step, encoder, head)
    encoder.eval()
    return encoder, head


def train_head_and_encoder(encoder, train, val, protocol: Protocol, lr: float, scale: float, seed: int):
    """(selection key, validation accuracy, (encoder, head) at the step best on ``val``, step 0 included with
    LP-FT)."""
    kept = {}

    def keep_best(step, enc, head):
        acc, nll = scores(enc, head, val)
        key = selection_key(acc, nll, protocol.select)
        if "key" not in kept or key > kept["key"]:
            kept.update(key=key, acc=acc, state=copy.deepcopy((enc.state_dict(), head.state_dict())))

    encoder, head = train_steps(encoder, train, protocol, lr, scale, seed, on_eval=keep_best,
                                num_classes=int(max(train.labels.max(), val.labels.max())) + 1)
    encoder.load_state_dict(kept["state"][0])
    head.load_state_dict(kept["state"][1])
    return kept["key"], kept["acc"], (encoder, head)


def protocol_of(args) -> Protocol:
    return Protocol(steps=args.finetune_steps, lrs=tuple(args.finetune_lrs),
                    encoder_lr_scales=tuple(args.encoder_lr_scales), lp=not args.no_lp,
                    weight_decay=args.finetune_weight_decay, val_share=args.val_share,
                    select=args.select, eval_every=args.eval_every, anchor=args.anchor, folds=args.folds)


def labelled_subset(data, fraction: float, seed: int):
    """The seed's labelled rows: the same for the pretrained and the scratch model."""
    n = int(round(fraction * len(data.train)))
    return data.train.subset(np.sort(np.random.default_rng(1000 + seed).permutation(len(data.train))[:n]))


def fresh_encoder(run, data, seed: int):
    torch.manual_seed(seed + 1)
    return pooled_encoder(build_objective(run, data.schema, 1).encoder())


def few_label_probes(args, run, data, encoder, fraction: float) -> dict:
    """The frozen encoders at few labels: per seed, a logistic regression (standardised, C from
    :data:`~selfsup.evaluate.PROBE_C_GRID` by 5-fold cross-validation on the labelled rows alone) on the seed's
    labelled rows, scored on the test rows, for the pretrained encoder, the scratch model's random init (the
    encoder fine-tuning starts from) and the one-hot raw features."""
    t0 = time.perf_counter()
    cpu = torch.device("cpu")
    test_x = {"ours": embeddings(encoder, data.test, cpu), "raw": one_hot_features(data.schema, data.test)}
    figures = {"ours": [], "random_init": [], "raw": []}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        subset = labelled_subset(data, fraction, seed)
        fresh = fresh_encoder(run, data, seed)
        for name, train_x, x_test in (
                ("ours", embeddings(encoder, subset, cpu), test_x["ours"]),
                ("random_init", embeddings(fresh, subset, cpu), embeddings(fresh, data.test, cpu)),
                ("raw", one_hot_features(data.schema, subset), test_x["raw"])):
            figures[name].append(linear_probe(train_x, subset.labels, x_test, data.test.labels, c=PROBE_C_GRID,
                                              folds=5))
    o, r, raw = (np.array(figures[k]) for k in ("ours", "random_init", "raw"))
    diff = o - r
    return {"name": f"adult/few_labels_{fraction:.0%}/frozen_probe_vs_random_init", "ours": float(o.mean()),
            "ours_std": float(o.std()), "reference": float(r.mean()), "reference_std": float(r.std()),
            "raw_one_hot": float(raw.mean()), "raw_one_hot_std": float(raw.std()), "unit": "test accuracy",
            "ratio": float(o.mean() / r.mean()), "paired_difference": float(diff.mean()),
            "paired_difference_std": float(diff.std()), "labels": int(round(fraction * len(data.train))),
            "per_seed_ours": [round(float(x), 4) for x in o], "per_seed_random_init": [round(float(x), 4) for x in r],
            "per_seed_raw_one_hot": [round(float(x), 4) for x in raw], "seeds": args.seeds,
            "first_seed": args.first_seed, "method": args.method, "machine": machine(),
            "minutes": (time.perf_counter() - t0) / 60}


def few_labels(args, run, data, encoder, fraction: float) -> dict:
    t0 = time.perf_counter()
    protocol = protocol_of(args)
    ours, scratch, ours_val, scratch_val = [], [], [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        subset = labelled_subset(data, fraction, seed)
        for model, val, test in ((encoder, ours_val, ours), (fresh_encoder(run, data, seed), scratch_val, scratch)):
            v, t = fine_tune(model, subset, data.test, protocol, seed)
            val.append(v)
            test.append(t)
    o, s = np.array(ours), np.array(scratch)
    spread, diff = float(max(o.std(), s.std())), o - s
    return {"name": f"adult/few_labels_{fraction:.0%}/fine_tuned_vs_scratch", "ours": float(o.mean()),
            "ours_std": float(o.std()), "reference": float(s.mean()), "reference_std": float(s.std()),
            "unit": "test accuracy", "ratio": float(o.mean() / s.mean()), "margin": float(o.mean() - s.mean()),
            "beats_by_more_than_spread": bool(o.mean() - s.mean() > spread),
            "paired_difference": float(diff.mean()), "paired_difference_std": float(diff.std()),
            "labels": int(round(fraction * len(data.train))),
            "per_seed_ours": [round(float(x), 4) for x in o], "per_seed_scratch": [round(float(x), 4) for x in s],
            "validation_ours": float(np.mean(ours_val)), "validation_scratch": float(np.mean(scratch_val)),
            "seeds": args.seeds, "first_seed": args.first_seed, "protocol": asdict(protocol), "method": args.method,
            "machine": machine(), "minutes": (time.perf_counter() - t0) / 60}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ADULT)
    p.add_argument("--method", default="masked_features", choices=["masked_features", "scarf", "data2vec"])
    p.add_argument("--model_size", default="small")
    p.add_argument("--backbone", default="transformer", choices=["transformer", "mlp"],
                   help="the recipe's --backbone (mlp: SCARF's encoder, with --method scarf)")
    p.add_argument("--pretrain_steps", type=int, default=5000)
    p.add_argument("--pretrain_dir", type=Path, default=None,
                   help="keep the pretraining run here, and reuse it when it holds one with the same recipe flags")
    p.add_argument("--mask_ratio", type=float, default=0.3)
    p.add_argument("--temperature", type=float, default=None,
                   help="the recipe's --temperature (two-view methods; default: the method's own, SCARF's 1.0)")
    p.add_argument("--finetune_steps", type=int, default=300)
    p.add_argument("--finetune_lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                   help="fine-tuning learning rates; each model keeps the one best on its validation rows")
    p.add_argument("--encoder_lr_scales", type=float, nargs="+", default=[1.0, 0.1],
                   help="the encoder's fine-tuning rate as multiples of the head's; each model keeps the best on its "
                        "validation rows")
    p.add_argument("--no_lp", action="store_true",
                   help="a random head, not one first fitted as a logistic regression on the frozen embeddings "
                        "(LP-FT, whose step 0, the linear probe alone, is a candidate of the selection)")
    p.add_argument("--finetune_weight_decay", type=float, default=1e-5)
    p.add_argument("--anchor", type=float, default=0.0,
                   help="L2-SP: this / 2 times the squared distance of the encoder's weights from where fine-tuning "
                        "starts (pretrained, or the scratch model's random init), added to the loss")
    p.add_argument("--val_share", type=float, default=0.2, help="share of the labelled subset held out to select on")
    p.add_argument("--folds", type=int, default=0,
                   help="choose the rates and the step by K-fold cross-validation over every labelled row, then "
                        "train on all of them (0: one held-out --val_share)")
    p.add_argument("--select", default="accuracy", choices=["accuracy", "loss"],
                   help="what picks the step and rate on the validation rows (accuracy: ties to the lower loss)")
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first_seed", type=int, default=0,
                   help="the few-label seeds are first_seed, ..., first_seed + seeds - 1 (fresh ones: 5)")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model, a few steps, 2 seeds: a smoke run, not a result")
    args = p.parse_args(argv)
    if args.anchor < 0:
        p.error(f"--anchor {args.anchor}: a penalty weight is 0 or more")
    if args.folds == 1 or args.folds < 0:
        p.error(f"--folds {args.folds}: 0 (a held-out share) or 2 or more folds")
    if args.quick:
        args.model_size, args.pretrain_steps, args.finetune_steps, args.seeds, args.eval_every = "tiny", 20, 20, 2, 10
    if not (args.data / "train.csv").is_file():
        raise SystemExit(f"{args.data}: UCI Adult not found (see ../shared/data/README.md)")
    torch.set_num_threads(1)
    lines: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.pretrain_dir or Path(tmp) / "run"
        argv = recipe_argv(args, out)
        metrics, minutes = pretrain(argv, out, keep=args.pretrain_dir is not None)
        base = {"method": args.method, "backbone": args.backbone,
                "model_size": args.model_size, "pretrain_steps": args.pretrain_steps,
                "seed": args.seed, "machine": machine(), "pretrain_reused": "reused" in metrics}
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
            for figure in (few_label_probes, few_labels):
                emit({**figure(args, run, data, encoder, fraction), "pretrain_steps": args.pretrain_steps,
                      "model_size": args.model_size, "backbone": args.backbone}, lines)
    return lines


if __name__ == "__main__":
    main()
