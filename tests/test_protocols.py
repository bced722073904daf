"""The published evaluation protocols (selfsup/protocols.py) equal the papers' code on the same embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.protocols import mean_std, svm_cross_validation, transductive_probe


def graphmae_svm(embeddings, labels):
    """GraphMAE's ``evaluate_graph_embeddings_using_svm`` (main_graph.py), as written there."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.svm import SVC

    result = []
    kf = StratifiedKFold(n_splits=10, shuffle=True, random_state=0)
    for train_index, test_index in kf.split(embeddings, labels):
        clf = GridSearchCV(SVC(random_state=42), {"C": [1e-3, 1e-2, 1e-1, 1, 10]})
        clf.fit(embeddings[train_index], labels[train_index])
        result.append(f1_score(labels[test_index], clf.predict(embeddings[test_index]), average="micro"))
    return np.mean(result), np.std(result)


def test_svm_protocol_equals_graphmaes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)
    x = rng.normal(size=(120, 8)) + y[:, None] * 0.8
    ours = svm_cross_validation(x, y)
    assert ours == pytest.approx(graphmae_svm(x, y), abs=1e-12)
    assert 0.6 < ours[0] <= 1.0
    with pytest.raises(ValueError, match="two classes"):
        svm_cross_validation(x, np.zeros(120, dtype=int))


def test_transductive_probe_learns_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 16, generator=g) + torch.nn.functional.one_hot(y, 16).float() * 3
    masks = [torch.zeros(300, dtype=torch.bool) for _ in range(3)]
    masks[0][:60], masks[1][60:120], masks[2][120:] = True, True, True
    a = transductive_probe(x, y, *masks, epochs=100)
    b = transductive_probe(x, y, *masks, epochs=100)
    assert a == b and a["test_accuracy"] > 0.9 and a["best_val_accuracy"] > 0.9
    assert mean_std([1.0, 3.0]) == (2.0, 1.0)
