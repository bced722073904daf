"""Evaluation of frozen encoders, shared by every modality: linear probe and kNN on pooled features.

Each figure is also computed for a randomly initialised encoder of the same size, so that what pretraining
adds is visible (``probe/accuracy`` next to ``probe/random_init_accuracy``).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from selfsup.data import to_device
from selfsup.types import Batch, Encoder


@torch.no_grad()
def extract_features(encoder: Encoder, batches: Iterable[Batch], device: torch.device | str = "cpu") -> np.ndarray:
    """(num_examples, D) float32 mean-pooled last hidden states of a frozen encoder."""
    was_training = encoder.training
    encoder.eval()
    feats = [encoder.pooled(to_device(b, torch.device(device))).float().cpu() for b in batches]
    encoder.train(was_training)
    return torch.cat(feats).numpy()


def linear_probe(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int],
                 c: float = 1.0, max_iter: int = 2000) -> float:
    """Test accuracy of a logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    clf.fit(train_x, np.asarray(train_y))
    return float(clf.score(test_x, np.asarray(test_y)))


def knn_accuracy(train_x: np.ndarray, train_y: Sequence[int], test_x: np.ndarray, test_y: Sequence[int],
                 k: int = 20, temperature: float = 0.07) -> float:
    """Test accuracy of a cosine-similarity kNN with exp(sim / T) weighted votes (Wu et al., 2018)."""
    train = torch.nn.functional.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)
    test = torch.nn.functional.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)
    labels = torch.as_tensor(np.asarray(train_y), dtype=torch.long)
    num_classes = int(labels.max()) + 1
    k = min(k, len(train))
    correct = 0
    for chunk, truth in zip(test.split(1024), torch.as_tensor(np.asarray(test_y)).split(1024)):
        sim, idx = (chunk @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == truth).sum())
    return correct / len(test)


def probe_encoders(encoders: dict[str, Encoder], make_batches: Callable[[str], Iterable[Batch]],
                   train_y: Sequence[int], test_y: Sequence[int], device: torch.device | str = "cpu",
                   knn_k: int = 20) -> dict[str, float]:
    """Linear probe and kNN for each encoder; ``make_batches("train"|"test")`` yields the labelled inputs.

    encoders: ``{"": pretrained, "random_init_": fresh}`` gives ``probe/accuracy``,
    ``probe/random_init_accuracy``, ``knn/accuracy`` and ``knn/random_init_accuracy``.
    """
    out: dict[str, float] = {}
    for prefix, enc in encoders.items():
        tr = extract_features(enc, make_batches("train"), device)
        te = extract_features(enc, make_batches("test"), device)
        out[f"probe/{prefix}accuracy"] = linear_probe(tr, train_y, te, test_y)
        out[f"knn/{prefix}accuracy"] = knn_accuracy(tr, train_y, te, test_y, k=knn_k)
    return out
