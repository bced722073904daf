"""recipes/graph.py end to end on the built-in graphs: every method on every backbone, node-level training on
neighbour-sampled batches, the published protocol's figures beside random init, the export, exact resume, and two
processes = one (world size asserted) for GraphMAE and GraphCL, augmentation draws included."""
import json

import pytest
import torch
from safetensors.torch import load_file

from selfsup.errors import SelfsupError
from selfsup.recipes import graph
from tests.conftest import straight_and_resumed
from tests.test_distributed import assert_same_weights, checkpoints_of_one_and_two


def argv(out, *extra, steps=3):
    return ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "8", *extra]


@pytest.mark.long
def test_default_run_scores_the_published_protocol_and_exports(tmp_path, capsys):
    metrics = graph.main(argv(tmp_path / "run"))
    assert metrics["steps"] == 3 and metrics["train_loss"] > 0
    for key in ("svm/accuracy", "svm/random_init_accuracy", "svm/accuracy_std"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (tmp_path / "run" / "export" / "config.json").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["svm/accuracy"] == metrics["svm/accuracy"]
    out = capsys.readouterr().out
    assert "svm/accuracy" in out and "random init" in out


@pytest.mark.long
@pytest.mark.parametrize("method, backbone", [("graphcl", "gin"), ("data2vec", "transformer"), ("graphmae", "gat"),
                                              ("graphmae", "transformer"), ("byol", "gin")])
def test_every_method_on_every_backbone(tmp_path, method, backbone):
    metrics = graph.main(argv(tmp_path, "--method", method, "--backbone", backbone, "--heads", "2", steps=2))
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert "svm/accuracy" in metrics
    assert metrics["export/max_abs_hidden_diff"] <= 1e-4, "every backbone exports (and reloads equal)"


def test_node_level_training_on_neighbour_batches_writes_every_node(tmp_path):
    out = tmp_path / "node"
    metrics = graph.main(argv(out, "--task", "node", "--num_neighbors", "5", "5", "--num_train_epochs", "2"))
    assert metrics["steps"] == 2 * 34 // 8 + 2, "an epoch is every node once as a seed, the last batch kept"
    embeddings = load_file(out / "node_embeddings.safetensors")["embeddings"]
    assert embeddings.shape == (34, 16) and torch.isfinite(embeddings).all()
    assert "probe/accuracy" in metrics and "probe/random_init_accuracy" in metrics


def test_bad_settings_stop_with_one_line(tmp_path):
    with pytest.raises(SelfsupError, match="--task node trains graphmae or data2vec"):
        graph.main(argv(tmp_path, "--task", "node", "--method", "graphcl"))
    with pytest.raises(SelfsupError, match="--num_neighbors"):
        graph.main(argv(tmp_path, "--task", "node", "--num_neighbors", "0"))
    with pytest.raises(SelfsupError, match="--dataset_name"):
        graph.main(argv(tmp_path, "--train_dir", str(tmp_path)))


@pytest.mark.long
@pytest.mark.parametrize("method", ["graphmae", "graphcl"])
def test_a_resumed_run_ends_where_a_straight_one_does(tmp_path, method):
    extra = ("--method", method, "--dropout", "0", "--per_device_train_batch_size", "8")

    def run_argv(out, *flags, steps):
        return argv(out, *extra, *flags, steps=steps)

    straight, resumed, midway = straight_and_resumed(graph.main, run_argv, tmp_path, steps=6, at=3)
    assert set(straight) == set(resumed)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert any(not torch.equal(straight[k], midway[k]) for k in straight), "the steps after the checkpoint train"


@pytest.mark.long
@pytest.mark.parametrize("method", ["graphmae", "graphcl"])
def test_two_processes_train_as_one(tmp_path, method):
    # SGD: a bias just before a batch norm has a true gradient of zero, and Adam would scale the float noise of
    # that zero (different in one and two processes) up to a full step of the learning rate
    one, two = checkpoints_of_one_and_two(tmp_path, "graph", "--method", method, "--dropout", "0",
                                          "--optimizer", "sgd", "--learning_rate", "0.05")
    assert_same_weights(one, two, atol=5e-6)
