"""Evaluation of frozen encoders, shared by every modality: linear probe and kNN on pooled features.

Each figure is also computed for a randomly initialised encoder of the same size, so that what pretraining
adds is visible (``probe/accuracy`` next to ``probe/random_init_accuracy``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from selfsup.data import to_device
from selfsup.errors import SelfsupError
from selfsup.types import Batch, Encoder


@torch.no_grad()
def extract_views(encoder: Encoder, batches: Iterable[Batch], device: torch.device | str = "cpu",
                  views: Sequence[str] = ("last",)) -> dict[str, np.ndarray]:
    """Frozen pooled features per view (see :meth:`Encoder.pooled_views`), float32 (num_examples, D')."""
    was_training = encoder.training
    encoder.eval()
    parts: dict[str, list] = {v: [] for v in views}
    for b in batches:
        for v, f in encoder.pooled_views(to_device(b, torch.device(device)), views).items():
            parts[v].append(f.float().cpu())
    encoder.train(was_training)
    return {v: torch.cat(f).numpy() for v, f in parts.items()}


def extract_features(encoder: Encoder, batches: Iterable[Batch], device: torch.device | str = "cpu") -> np.ndarray:
    """(num_examples, D) float32 mean-pooled last hidden states of a frozen encoder."""
    return extract_views(encoder, batches, device)["last"]


# the probe's inverse regularisation strengths searched by ``linear_probe(c=PROBE_C_GRID)``
PROBE_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def choose_probe_c(train_x: np.ndarray, train_y: Sequence[int], grid: Sequence[float] = PROBE_C_GRID,
                   folds: int = 3, max_iter: int = 2000, seed: int = 0) -> float:
    """The ``C`` of ``grid`` whose logistic regression on the standardised features scores best in a stratified
    ``folds``-fold cross-validation on the training features alone (the smallest ``C`` among equals;
    ``folds`` lowered to the rarest class's count); 1, the fixed probe's C, when a class has fewer than 2 examples (no
    fold could hold it out)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(train_y)
    folds = min(folds, int(np.unique(y, return_counts=True)[1].min()) if len(y) else 0)
    if len(grid) == 1:
        return float(grid[0])
    if folds < 2:
        return 1.0
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(train_x, y))
    scores = []
    for c in grid:
        fits = [make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter)).fit(train_x[a], y[a])
                for a, _ in splits]
        scores.append(np.mean([f.score(train_x[b], y[b]) for f, (_, b) in zip(fits, splits)]))
    return float(grid[int(np.argmax(scores))])


def probe_predictions(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray,
                      c: float | Sequence[float] = 1.0, max_iter: int = 2000, folds: int = 3) -> np.ndarray:
    """The test predictions of a logistic regression on standardised frozen features. ``c``: its inverse
    regularisation strength, or a grid of them to choose from by a ``folds``-fold cross-validation on the training
    features (:func:`choose_probe_c`; e.g. :data:`PROBE_C_GRID`). Features that are not finite (an encoder that
    diverged) stop with a one-line error."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    for name, x in (("training", train_x), ("test", test_x)):
        if not np.isfinite(x).all():
            raise SelfsupError(f"the frozen {name} features hold {int((~np.isfinite(x)).sum())} NaN or inf values: "
                               "the encoder's outputs are not finite (a diverged run?), so no probe can be fitted")
    if not isinstance(c, (int, float)):
        c = choose_probe_c(train_x, train_y, c, folds=folds, max_iter=max_iter)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(train_x, np.asarray(train_y))
    return clf.predict(test_x)


def no_examples(test_y: Sequence[int], what: str) -> None:
    """Stop with a clear error when there is no test example to score (an accuracy over none is undefined)."""
    if len(np.asarray(test_y)) == 0:
        raise SelfsupError(f"the {what} has no test examples to score: give a non-empty test set")


def linear_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int],
                 c: float | Sequence[float] = 1.0, max_iter: int = 2000, folds: int = 3) -> float:
    """Test accuracy of a logistic regression on standardised frozen features (:func:`probe_predictions`)."""
    no_examples(test_y, "linear probe")
    return float(np.mean(probe_predictions(train_x, train_y, test_x, c, max_iter, folds) == np.asarray(test_y)))


def knn_predictions(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, k: int = 20,
                    temperature: float = 0.07) -> np.ndarray:
    """The test predictions of a cosine-similarity kNN with exp(sim / T) weighted votes (Wu et al., 2018)."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    test = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    num_classes = int(labels.max()) + 1
    k = min(k, len(train))
    out = []
    with torch.autocast("cpu", enabled=False):   # an evaluation under bf16 autocast still ranks in float32
        for chunk in test.split(1024):
            sim, idx = (chunk @ train.T).topk(k, dim=1)
            votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
            out.append(votes.argmax(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def knn_accuracy(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int],
                 k: int = 20, temperature: float = 0.07) -> float:
    """Test accuracy of a cosine-similarity kNN with exp(sim / T) weighted votes (:func:`knn_predictions`)."""
    no_examples(test_y, "kNN")
    return float(np.mean(knn_predictions(train_x, train_y, test_x, k, temperature) == np.asarray(test_y)))


def paired_gain(correct: np.ndarray, reference: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """How much one classifier's accuracy exceeds another's on the same test examples, and the half-width of its
    normal-approximation confidence interval (``z`` 1.96: 95 %) from the per-example differences: ``correct`` and
    ``reference`` are (N,) per-example scores in [0, 1] (1 right, 0 wrong; a mean over several reference runs may
    lie between). The examples both get right or both get wrong add nothing to its variance, so the interval is
    narrower than that of two independent accuracies' difference, the more so the more the two agree; it covers the
    choice of test examples only, not the seed of the runs."""
    correct, reference = np.asarray(correct, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if correct.ndim != 1 or correct.shape != reference.shape:
        raise ValueError(f"a paired gain needs one score per test example on both sides, got shapes "
                         f"{correct.shape} and {reference.shape}")
    d = correct - reference
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0, float("nan")
    return float(d.mean()), float(z * d.std(ddof=1) / np.sqrt(len(d)))


def probe_encoders(encoders: dict[str, Encoder | Sequence[Encoder]], make_batches: Callable[[str], Iterable[Batch]],
                   train_y: Sequence[int], test_y: Sequence[int], device: torch.device | str = "cpu",
                   knn_k: int = 20, all_layers: bool = False, knn_temperature: float = 0.07,
                   linear: bool = True, probe_c: float | Sequence[float] = 1.0) -> dict[str, float]:
    """Linear probe and kNN for each encoder; ``make_batches("train"|"test")`` yields the labelled inputs.

    encoders: ``{"": pretrained, "random_init_": fresh}`` gives ``probe/accuracy``,
    ``probe/random_init_accuracy``, ``knn/accuracy`` and ``knn/random_init_accuracy`` on the mean-pooled last
    hidden state; ``all_layers`` adds ``probe/all_layers/accuracy`` and ``knn/all_layers/accuracy`` (and
    ``.../random_init_accuracy``, ``.../gain``): the probe and the kNN on every layer's mean-pooled output
    concatenated, which shows what pretraining put in the lower layers too.
    A list of encoders under one key (random inits from several seeds) gives the mean of their figures. With both
    keys, ``knn/gain`` and ``probe/gain`` (and ``.../gain_ci95``) are the pretrained encoder's accuracy less random
    init's on the same test examples and the half-width of its 95 % interval (:func:`paired_gain`).
    ``knn_k`` / ``knn_temperature``: the kNN's neighbours and vote temperature (lightly's image benchmarks use
    200 and 0.1); ``linear=False`` skips the probe (a kNN monitor during training); ``probe_c``: the probe's ``C``,
    or a grid to choose it from by cross-validation on the fit split, for each encoder alike (:func:`linear_probe`).
    """
    views = ("last", "all_layers") if all_layers else ("last",)
    truth = np.asarray(test_y)
    out: dict[str, float] = {}
    correct: dict[str, dict[str, np.ndarray]] = {}        # prefix -> figure -> per-example score (mean over runs)
    for prefix, group in encoders.items():
        runs = []
        for enc in ([group] if isinstance(group, nn.Module) else group):
            tr = extract_views(enc, make_batches("train"), device, views)
            te = extract_views(enc, make_batches("test"), device, views)
            run = {"knn/": knn_predictions(tr["last"], train_y, te["last"], k=knn_k, temperature=knn_temperature)}
            if linear:
                run["probe/"] = probe_predictions(tr["last"], train_y, te["last"], c=probe_c)
            if all_layers:
                run["knn/all_layers/"] = knn_predictions(tr["all_layers"], train_y, te["all_layers"], k=knn_k,
                                                         temperature=knn_temperature)
                if linear:
                    run["probe/all_layers/"] = probe_predictions(tr["all_layers"], train_y, te["all_layers"], c=probe_c)
            runs.append({k: (v == truth).astype(np.float64) for k, v in run.items()})
        correct[prefix] = {k: np.mean([r[k] for r in runs], axis=0) for k in runs[0]}
        out.update({f"{k}{prefix}accuracy": float(v.mean()) for k, v in correct[prefix].items()})
    if "" in correct and "random_init_" in correct:     # the pretrained encoder against random init, paired
        for k, v in correct[""].items():
            out[f"{k}gain"], out[f"{k}gain_ci95"] = paired_gain(v, correct["random_init_"][k])
    return out


# -- zero-shot classification (CLIP-style): frozen features of the inputs against features of the class names ------
@torch.no_grad()
def class_embeddings(encode: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """(C, D) one L2-normalised vector per class: the mean of the normalised embeddings of its prompts (every
    template filled with the class name), normalised again (Radford et al. 2021, sec. 3.1.4; CLIP's
    ``zeroshot_classifier``). ``encode(list of strings) -> (n, D)`` embeds prompts with any model."""
    rows = []
    for name in class_names:
        e = torch.nn.functional.normalize(encode([t.format(name) for t in templates]).float(), dim=-1)
        rows.append(torch.nn.functional.normalize(e.mean(dim=0), dim=-1))
    return torch.stack(rows)


def zero_shot_scores(features: np.ndarray | torch.Tensor, labels: Sequence[int], classes: torch.Tensor,
                     k: int = 5) -> dict[str, object]:
    """Zero-shot classification of (N, D) input features against (C, D) class embeddings by cosine similarity:
    ``accuracy`` (top-1), ``top5_accuracy`` (top-``k``), ``predictions`` (N,) and ``confusion`` (C, C) counts
    (rows: true class, columns: predicted)."""
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with torch.autocast("cpu", enabled=False):
        sims = x @ classes.float().T
    top = sims.topk(min(k, classes.shape[0]), dim=1).indices
    predictions = top[:, 0]
    confusion = torch.zeros(classes.shape[0], classes.shape[0], dtype=torch.long)
    confusion.index_put_((y, predictions), torch.ones_like(y), accumulate=True)
    return {"accuracy": float((predictions == y).float().mean()),
            "top5_accuracy": float((top == y[:, None]).any(dim=1).float().mean()),
            "predictions": predictions.numpy(), "confusion": confusion.numpy()}


def confusion_png(confusion: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> str:
    """A confusion matrix as a PNG (rows: true class, columns: predicted, counts in the cells), drawn with
    scikit-learn's ``ConfusionMatrixDisplay`` on matplotlib's Agg canvas (``selfsup.plots``). Returns the path."""
    from selfsup.plots import confusion_figure, save_png

    return save_png(confusion_figure(confusion, class_names,
                                     title or "zero-shot confusion (rows: true, columns: predicted)"), path)
