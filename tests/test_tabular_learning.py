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
                     "adult/frozen_probe_vs_hist_gradient_boosting", "adult/few_labels_1%/fine_tuned_vs_scratch",
                     "adult/few_labels_10%/fine_tuned_vs_scratch"]
    for line in lines:
        assert {"ours", "reference", "unit", "ratio", "machine"} <= set(line)
        assert 0.5 < line["ours"] <= 1.0 and 0.5 < line["reference"] <= 1.0
        assert math.isclose(line["ratio"], line["ours"] / line["reference"])
    assert lines[2]["reference"] > 0.85, "gradient-boosted trees on Adult"
    few = lines[3]
    assert few["labels"] == round(0.01 * 32561) and len(few["per_seed_ours"]) == few["seeds"] == 2


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
                                              pretrain_steps=10, seed=0, mask_ratio=0.3), tmp_path / "run")

    mlp = argv("mlp")
    assert mlp[mlp.index("--backbone") + 1] == "mlp"
    assert "--backbone" not in argv("transformer")     # the flags kept runs were made with, unchanged

