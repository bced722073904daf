"""Published evaluation protocols on frozen embeddings, as the papers that report the figures run them.

* :func:`svm_cross_validation`: graph classification (InfoGraph, GraphCL, GraphMAE's ``main_graph.py``): 10-fold
  ``StratifiedKFold(shuffle=True, random_state=0)``; in every fold an ``SVC`` whose ``C`` is chosen from
  {1e-3, 1e-2, 1e-1, 1, 10} by a 5-fold grid search on the training part; the mean and std of the fold accuracies.
* :func:`transductive_probe`: node classification on one graph (GraphMAE's ``main_transductive.py``,
  DGI's protocol): a logistic regression (one linear layer) trained with Adam on the training nodes' frozen
  embeddings, scored on the test nodes at the last epoch and at the epoch of the best validation accuracy.
* :func:`mean_std`: the figure over seeds.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

SVM_C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def svm_cross_validation(embeddings: np.ndarray, labels: Sequence[int], folds: int = 10, random_state: int = 0,
                         c_grid: Sequence[float] = SVM_C_GRID) -> tuple[float, float]:
    """(mean, std) accuracy of an RBF ``SVC`` (``random_state=42``, as GraphMAE's) with ``C`` grid-searched per
    fold, over ``folds`` stratified folds of (N, D) ``embeddings``."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    x, y = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    if len(np.unique(y)) < 2:
        raise ValueError("svm_cross_validation needs at least two classes")
    scores = []
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state).split(x, y):
        search = GridSearchCV(SVC(random_state=42), {"C": list(c_grid)})
        search.fit(x[train], y[train])
        scores.append(float((search.predict(x[test]) == y[test]).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def transductive_probe(embeddings: torch.Tensor, labels: torch.Tensor, train_mask: torch.Tensor,
                       val_mask: torch.Tensor, test_mask: torch.Tensor, learning_rate: float = 0.01,
                       weight_decay: float = 1e-4, epochs: int = 300, seed: int = 0) -> dict[str, float]:
    """GraphMAE's linear probe of node embeddings (N, D): ``test_accuracy`` at the last epoch,
    ``early_stopping_test_accuracy`` at the epoch of the best validation accuracy (ties: the later epoch, as
    GraphMAE's ``>=``), ``best_val_accuracy``. Full-batch Adam on the cross-entropy of the training nodes."""
    gen = torch.Generator().manual_seed(seed)
    x, y = embeddings.detach().float().cpu(), labels.long().cpu()
    head = nn.Linear(x.shape[1], int(y.max()) + 1)
    with torch.no_grad():   # nn.Linear's own initialisation, drawn from the seed
        bound = 1.0 / x.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    best_val, best = -1.0, head
    accuracy = lambda logits, m: float((logits[m].argmax(-1) == y[m]).float().mean())   # noqa: E731
    for _ in range(epochs):
        head.train()
        loss = nn.functional.cross_entropy(head(x[train_mask]), y[train_mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            logits = head.eval()(x)
        if accuracy(logits, val_mask) >= best_val:
            best_val, best = accuracy(logits, val_mask), copy.deepcopy(head)
    with torch.no_grad():
        last, early = head(x), best(x)
    return {"test_accuracy": accuracy(last, test_mask), "early_stopping_test_accuracy": accuracy(early, test_mask),
            "best_val_accuracy": best_val}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population std) of per-seed figures, as GraphMAE reports them (``np.std``)."""
    return float(np.mean(values)), float(np.std(values))


__all__ = ["svm_cross_validation", "transductive_probe", "mean_std", "SVM_C_GRID"]
