"""recipes/tabular.py end to end on the built-in tables and on files: every table method, the probe beside random
init and the raw features, the export, bad settings and input as one line, exact resume, two processes = one (world
size asserted) for masked features and SCARF, and two fresh runs giving the same weights."""
import json

import pytest
import torch
from safetensors.torch import load_file

from selfsup.errors import SelfsupError
from selfsup.recipes import tabular
from tests.conftest import straight_and_resumed
from tests.test_distributed import assert_same_weights, checkpoints_of_one_and_two
from tests.test_reproducible import finish, start


def argv(out, *extra, steps=3):
    return ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "16", *extra]


def test_default_run_probes_beside_random_init_and_exports(tmp_path, capsys):
    metrics = tabular.main(argv(tmp_path / "run"))
    assert metrics["steps"] == 3 and metrics["train_loss"] > 0
    for key in ("probe/accuracy", "probe/random_init_accuracy", "probe/raw_features/accuracy"):
        assert 0.5 <= metrics[key] <= 1.0, key
    assert metrics["export/max_abs_pooled_diff"] <= 1e-4
    assert (tmp_path / "run" / "export" / "preprocessor_config.json").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["probe/accuracy"] == metrics["probe/accuracy"]
    out = capsys.readouterr().out
    assert "scikit-learn's bundled breast_cancer table (the built-in default: no network)" in out
    assert "random init" in out


@pytest.mark.parametrize("method, extra", [("scarf", ()), ("data2vec", ()), ("masked_features", ("--mask_mode", "drop")),
                                           ("vicreg", ()), ("scarf", ("--backbone", "mlp"))])
def test_every_method_trains_and_exports(tmp_path, method, extra):
    metrics = tabular.main(argv(tmp_path, "--method", method, "--dataset_name", "wine", *extra, steps=2))
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert "probe/accuracy" in metrics and metrics["export/max_abs_hidden_diff"] <= 1e-4


CSV = "age,city,score,label\n" + "".join(f"{20 + i % 30},{['Paris', 'Rome', 'Oslo'][i % 3]},{i % 7 / 2},"
                                         f"{'yes' if i % 3 == 0 else 'no'}\n" for i in range(60))


def test_csv_files_with_a_validation_file_and_epochs(tmp_path):
    (tmp_path / "train.csv").write_text(CSV)
    (tmp_path / "test.csv").write_text("age,city,score,label\n33,Lima,1.0,yes\n40,Rome,,no\n21,Oslo,2.0,no\n")
    metrics = tabular.main(argv(tmp_path / "run", "--train_file", str(tmp_path / "train.csv"), "--validation_file",
                                str(tmp_path / "test.csv"), "--label_column", "label", "--num_train_epochs", "2",
                                "--mask_ratio", "0.4"))
    assert metrics["steps"] == 2 * (60 // 16)
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert [c["name"] for c in config["schema"]["columns"]] == ["age", "score", "city"]


def test_bad_settings_and_input_stop_with_one_line(tmp_path):
    (tmp_path / "small.csv").write_text(CSV)
    with pytest.raises(SelfsupError, match="--mask_ratio 0.3 masks no column of a table of 3"):
        tabular.main(argv(tmp_path, "--train_file", str(tmp_path / "small.csv"), "--label_column", "label"))
    with pytest.raises(SelfsupError, match="--dataset_name nowhere: neither a built-in table"):
        tabular.main(argv(tmp_path, "--dataset_name", "nowhere"))
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3\n")
    with pytest.raises(SelfsupError, match=r"bad\.csv line 3: 1 fields, expected 2"):
        tabular.main(argv(tmp_path, "--train_file", str(tmp_path / "bad.csv")))
    with pytest.raises(SelfsupError, match="--backbone mlp gives one output per row; --method masked_features"):
        tabular.main(argv(tmp_path, "--backbone", "mlp"))
    with pytest.raises(SelfsupError, match="--num_heads and --attention_dropout are the Transformer's"):
        tabular.main(argv(tmp_path, "--backbone", "mlp", "--method", "scarf", "--num_heads", "2"))
    with pytest.raises(SelfsupError, match="--token_size is --backbone mlp's"):
        tabular.main(argv(tmp_path, "--token_size", "8"))
    with pytest.raises(SelfsupError, match="--method masked_features has none"):
        tabular.main(argv(tmp_path, "--temperature", "0.2"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SelfsupError, match=r"empty\.csv: empty file"):
        tabular.main(argv(tmp_path, "--train_file", str(tmp_path / "empty.csv")))


@pytest.mark.parametrize("method", ["masked_features", "scarf"])
def test_a_resumed_run_ends_where_a_straight_one_does(tmp_path, method):
    def run_argv(out, *flags, steps):
        return argv(out, "--method", method, "--dropout", "0.1", *flags, steps=steps)

    straight, resumed, midway = straight_and_resumed(tabular.main, run_argv, tmp_path, steps=6, at=3)
    assert set(straight) == set(resumed)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert any(not torch.equal(straight[k], midway[k]) for k in straight), "the steps after the checkpoint train"


@pytest.mark.long
@pytest.mark.parametrize("method", ["masked_features", "scarf"])
def test_two_processes_train_as_one(tmp_path, method):
    one, two = checkpoints_of_one_and_two(tmp_path, "tabular", "--method", method, "--random_init_seeds", "1")
    assert_same_weights(one, two, atol=5e-6)


@pytest.mark.long
def test_two_fresh_runs_train_the_same_model(tmp_path):
    flags = ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "16", "--method", "scarf",
             "--dropout", "0.1"]
    procs = [start("tabular", flags, tmp_path / d, seed) for d, seed in (("a", "1"), ("b", "2"))]
    for proc in procs:
        finish(proc)
    wa, wb = (load_file(tmp_path / d / "checkpoint-2" / "model.safetensors") for d in ("a", "b"))
    assert set(wa) == set(wb) and len(wa) > 10
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_datasets_folder_with_train_and_test_splits(tmp_path):
    import datasets

    rows = [{"x": float(i % 9), "c": "abc"[i % 3], "y": i % 2} for i in range(48)]
    split = datasets.Dataset.from_list
    datasets.DatasetDict({"train": split(rows[:40]), "test": split(rows[40:])}).save_to_disk(str(tmp_path / "dd"))
    metrics = tabular.main(argv(tmp_path / "run", "--dataset_name", str(tmp_path / "dd"), "--label_column", "y",
                                "--mask_ratio", "0.5", steps=2))
    assert "probe/accuracy" in metrics and metrics["steps"] == 2
