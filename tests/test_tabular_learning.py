"""benchmarks/tabular_learning.py end to end on UCI Adult (slow: about a minute with --quick; the figures of the full
run are in docs/recipes/tabular.md)."""
import math

import pytest

from tests.test_tabular_data import ADULT


@pytest.mark.slow
@pytest.mark.skipif(not ADULT.is_dir(), reason="shared data folder absent")
def test_the_benchmark_prints_every_figure():
    from benchmarks.tabular_learning import main

    lines = main(["--quick", "--data", str(ADULT)])
    names = [line["name"] for line in lines]
    assert names == ["adult/frozen_probe_vs_random_init", "adult/frozen_probe_vs_raw_one_hot",
                     "adult/frozen_probe_vs_hist_gradient_boosting", "adult/few_labels_1%/frozen_probe_vs_random_init",
                     "adult/few_labels_1%/fine_tuned_vs_scratch", "adult/few_labels_10%/frozen_probe_vs_random_init",
                     "adult/few_labels_10%/fine_tuned_vs_scratch"]
    for line in lines:
        assert {"ours", "reference", "unit", "ratio", "machine"} <= set(line)
        assert 0.5 < line["ours"] <= 1.0 and 0.5 < line["reference"] <= 1.0
        assert math.isclose(line["ratio"], line["ours"] / line["reference"])
    assert lines[2]["reference"] > 0.85, "gradient-boosted trees on Adult"
    probe, few = lines[3], lines[4]
    assert few["labels"] == round(0.01 * 32561) and len(few["per_seed_ours"]) == few["seeds"] == 2
    assert probe["labels"] == few["labels"] and len(probe["per_seed_random_init"]) == 2
    assert 0.5 < probe["raw_one_hot"] <= 1.0


def test_l2_sp_penalises_the_distance_from_the_starting_weights():
    import torch

    from benchmarks.tabular_learning import anchor_penalty

    layer = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in layer.parameters()]
    assert float(anchor_penalty(layer, start, 0.1)) == 0.0
    with torch.no_grad():
        layer.weight.add_(1.0)
    assert math.isclose(float(anchor_penalty(layer, start, 0.1)), 0.5 * 0.1 * 6, rel_tol=1e-6)


def test_a_negative_anchor_stops_at_parse_time(capsys):
    from benchmarks.tabular_learning import main

    with pytest.raises(SystemExit):
        main(["--anchor", "-1"])
    assert "--anchor -1.0: a penalty weight is 0 or more" in capsys.readouterr().err


def test_the_backbone_flag_reaches_the_recipe_and_leaves_kept_transformer_runs_alone(tmp_path):
    import argparse

    from benchmarks.tabular_learning import recipe_argv

    def argv(backbone):
        return recipe_argv(argparse.Namespace(data=tmp_path, method="scarf", backbone=backbone, model_size="small",
                                              pretrain_steps=10, seed=0, mask_ratio=0.3, temperature=None),
                           tmp_path / "run")

    mlp = argv("mlp")
    assert mlp[mlp.index("--backbone") + 1] == "mlp"
    assert "--backbone" not in argv("transformer")     # the flags kept runs were made with, unchanged
    assert "--temperature" not in mlp


def test_the_temperature_flag_reaches_the_recipe(tmp_path):
    import argparse

    from benchmarks.tabular_learning import recipe_argv

    argv = recipe_argv(argparse.Namespace(data=tmp_path, method="scarf", backbone="mlp", model_size="small",
                                          pretrain_steps=10, seed=0, mask_ratio=0.3, temperature=0.2),
                       tmp_path / "run")
    assert argv[argv.index("--temperature") + 1] == "0.2"


def test_cross_validation_scores_every_labelled_row_once_and_refits_on_all_of_them(monkeypatch):
    """--folds K: each (rates, step) is scored on every labelled row exactly once (out of fold), the pair and step
    best on the pooled scores win, and the model is then trained on all the rows for that many steps."""
    import numpy as np

    import benchmarks.tabular_learning as bench
    from selfsup.modalities.tabular.data import TableArrays

    rows = 40
    arrays = TableArrays(np.arange(rows, dtype=np.float32)[:, None], np.zeros((rows, 0), np.int64),
                         np.arange(rows) % 2)
    seen: dict[tuple, list[float]] = {}
    calls = []

    def fake_train_steps(encoder, train, protocol, lr, scale, seed, steps=None, on_eval=None, num_classes=None):
        calls.append((lr, scale, steps, train.numeric[:, 0].tolist()))
        if on_eval is not None:
            for step in (0, 25, 50):
                on_eval(step, (lr, scale, step), None)
        return (lr, scale, steps), None

    def fake_scores(model, head, val):
        seen.setdefault(model, []).extend(val.numeric[:, 0].tolist())
        lr, scale, step = model
        best = lr == 3e-4 and scale == 0.1 and step == 25    # the one the pooled scores must pick
        return (0.9 if best else 0.6), 0.5

    monkeypatch.setattr(bench, "train_steps", fake_train_steps)
    monkeypatch.setattr(bench, "scores", fake_scores)
    monkeypatch.setattr(bench, "accuracy", lambda model, head, test: 0.77 if model == (3e-4, 0.1, 25) else 0.0)
    protocol = bench.Protocol(lrs=(1e-4, 3e-4), encoder_lr_scales=(1.0, 0.1), folds=4)
    val_acc, test_acc = bench.fine_tune(object(), arrays, arrays, protocol, seed=0)
    assert len(seen) == 2 * 2 * 3
    for rows_scored in seen.values():
        assert sorted(rows_scored) == list(range(rows))      # every row once, out of fold
    for lr, scale, steps, train_rows in calls[:-1]:
        assert steps is None and len(train_rows) == rows - rows // 4
    assert calls[-1] == (3e-4, 0.1, 25, list(range(rows)))  # the refit: every row, the chosen step
    assert val_acc == 0.9 and test_acc == 0.77


def test_one_fold_stops_at_parse_time(capsys):
    from benchmarks.tabular_learning import main

    with pytest.raises(SystemExit):
        main(["--folds", "1"])
    assert "--folds 1: 0 (a held-out share) or 2 or more folds" in capsys.readouterr().err



def test_a_diverged_step_never_wins_the_selection():
    from benchmarks.tabular_learning import selection_key

    for select in ("accuracy", "loss"):
        diverged = selection_key(0.99, float("nan"), select)
        assert selection_key(0.5, 2.0, select) > diverged
        assert selection_key(0.5, 2.0, select) > selection_key(0.9, float("inf"), select)
    assert selection_key(0.8, 0.4, "accuracy") > selection_key(0.8, 0.5, "accuracy")     # ties to the lower loss


def test_more_folds_than_the_rarest_class_stops_with_one_line():
    import numpy as np

    import benchmarks.tabular_learning as bench
    from selfsup.modalities.tabular.data import TableArrays

    labels = np.array([0] * 9 + [1] * 3)
    arrays = TableArrays(np.zeros((12, 1), np.float32), np.zeros((12, 0), np.int64), labels)
    with pytest.raises(SystemExit, match="--folds 5: 12 labelled rows, the rarest class has 3"):
        bench.fine_tune(object(), arrays, arrays, bench.Protocol(folds=5), seed=0)
