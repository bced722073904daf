"""recipes/timeseries.py end to end: PatchTST and data2vec on the generated series and on a UCR set, the probe
beside random init and raw 1-NN, the PatchTST export, exact resume, two processes = one (world size asserted); the
series loaders' one-line errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.modalities.timeseries.data import (collate_series, load_ucr, read_series_csv, read_series_table,
                                                read_ts, read_ucr)
from selfsup.recipes import timeseries
from tests.conftest import straight_and_resumed
from tests.test_distributed import assert_same_weights, checkpoints_of_one_and_two

UCR = Path(__file__).resolve().parents[2] / "shared" / "data" / "timeseries" / "UCR"


def argv(out, *extra, steps=3):
    return ["--output_dir", str(out), "--hidden_size", "16", "--num_layers", "2", "--heads", "2", "--max_steps",
            str(steps), "--report_to", "none", "--per_device_train_batch_size", "8", *extra]


@pytest.mark.parametrize("method", ["patchtst", "data2vec", "simclr"])
def test_default_run_probes_beside_random_init_and_raw_1nn_and_exports(tmp_path, method, capsys):
    from transformers import AutoModel, PatchTSTModel

    metrics = timeseries.main(argv(tmp_path / "run", "--method", method))
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    for key in ("probe/accuracy", "probe/random_init_accuracy", "raw_1nn/accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["export/max_abs_hidden_diff"] <= 1e-4
    export = tmp_path / "run" / "export"
    assert isinstance(AutoModel.from_pretrained(export), PatchTSTModel)
    assert (export / "pretraining" / "config.json").is_file() == (method == "patchtst")
    assert (tmp_path / "run" / "reconstruction.png").is_file() == (method == "patchtst")
    out = capsys.readouterr().out
    assert "random init" in out and ("picture: " in out) == (method == "patchtst")


@pytest.mark.skipif(not (UCR / "GunPoint").is_dir(), reason="../shared/data/timeseries/UCR is absent")
def test_a_ucr_set_trains_and_is_scored_on_its_test_split(tmp_path):
    metrics = timeseries.main(argv(tmp_path, "--train_dir", str(UCR / "GunPoint"), "--patch_length", "16",
                                   "--stride", "16"))
    assert metrics["raw_1nn/accuracy"] == pytest.approx(1 - 0.0867, abs=1e-3), "the UCR archive's 1-NN error"
    assert 0.0 <= metrics["probe/accuracy"] <= 1.0


def test_a_resumed_run_ends_where_a_straight_one_does(tmp_path):
    def run_argv(out, *flags, steps):
        return argv(out, *flags, steps=steps)

    straight, resumed, midway = straight_and_resumed(timeseries.main, run_argv, tmp_path, steps=6, at=3)
    assert set(straight) == set(resumed)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert any(not torch.equal(straight[k], midway[k]) for k in straight)


@pytest.mark.long
@pytest.mark.parametrize("method", ["patchtst", "simclr"])
def test_two_processes_train_as_one(tmp_path, method):
    """Masks drawn per channel row from the example's seed, views from the example's generators, batch norm over
    the global batch: 2 x 4 series train as 1 x 8."""
    one, two = checkpoints_of_one_and_two(tmp_path, "timeseries", "--method", method, "--hidden_size", "16",
                                          "--num_layers", "2", "--heads", "2", "--optimizer", "sgd",
                                          "--learning_rate", "0.05")
    assert_same_weights(one, two, atol=5e-6)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_loaders_stop_with_one_line_naming_file_and_row(tmp_path):
    with pytest.raises(SelfsupError, match=r"empty file"):
        read_ucr(write(tmp_path / "e_TRAIN.txt", "\n"))
    with pytest.raises(SelfsupError, match=r"row 2: NaN inside"):
        read_ucr(write(tmp_path / "n_TRAIN.txt", "1 0.1 0.2 0.3\n2 0.1 nan 0.3\n"))
    with pytest.raises(SelfsupError, match=r"row 1: an infinite value"):
        read_ucr(write(tmp_path / "i_TRAIN.txt", "1 0.1 inf 0.3\n"))
    with pytest.raises(SelfsupError, match=r"row 3: 2 fields, the first row has 4"):
        read_series_csv(write(tmp_path / "r.csv", "label,a,b,c\n1,0.1,0.2,0.3\n2,0.5\n"), label_column="label")
    with pytest.raises(SelfsupError, match=r"row 2: 'x' is not a number"):
        read_series_csv(write(tmp_path / "t.csv", "0.1,0.2,0.3\n0.1,x,0.3\n"))
    with pytest.raises(SelfsupError, match="shorter than one patch"):
        timeseries.main(argv(tmp_path / "short", "--train_file", str(write(tmp_path / "s.csv", "0.1,0.2,0.3\n")),
                             "--patch_length", "8"))


def test_one_long_series_trains_on_windows_of_its_training_period(tmp_path):
    t = torch.arange(300, dtype=torch.float32)
    rows = ["date,a,b"] + [f"2020-01-01 {i:04d},{float(torch.sin(t[i] / 5)):.4f},{float(t[i]) / 100:.4f}"
                           for i in range(300)]
    csv = write(tmp_path / "long.csv", "\n".join(rows) + "\n")
    metrics = timeseries.main(argv(tmp_path / "run", "--train_file", str(csv), "--csv_layout", "columns",
                                   "--context_length", "64", "--window_stride", "16", "--train_rows", "200"))
    assert metrics["steps"] == 3 and metrics["export/max_abs_hidden_diff"] <= 1e-4
    from selfsup.modalities.timeseries.data import window_set, windows

    data = window_set(read_series_csv(csv, "columns"), 64, 16, 200)
    assert len(data) == (200 - 64) // 16 + 1 and data.series[0].shape == (64, 2)
    ctx, fut = windows(torch.arange(300.0)[:, None], 10, 3, 100, 120)
    assert ctx[0, -1, 0] == 99 and fut[0, 0, 0] == 100 and fut[-1, -1, 0] == 119, "a window's future is its split's"


def test_variable_lengths_pad_at_the_start_and_trailing_nan_is_ucr_padding(tmp_path):
    data = read_ucr(write(tmp_path / "v_TRAIN.txt", "1 1 2 3 4 5 6\n2 1 2 3 nan nan nan\n"))
    assert [len(s) for s in data.series] == [6, 3]
    batch = collate_series([data[0], data[1]])
    assert batch["past_values"].shape == (2, 6, 1)
    assert batch["past_observed_mask"][1, :3].sum() == 0 and batch["past_observed_mask"][1, 3:].all()
    assert torch.equal(batch["past_values"][1, 3:, 0], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.skipif(not (UCR / "Coffee").is_dir(), reason="../shared/data/timeseries/UCR is absent")
def test_ucr_test_labels_use_the_training_classes():
    train, test = load_ucr(UCR / "Coffee")
    assert train.classes == test.classes and len(train) == 28 and len(test) == 28


TS = """# a UEA .ts file
@problemName tiny
@univariate false
@classLabel true a b
@data
1,2,3,4:5,6,7,8:a
1,2,3:4,5,6:b
"""


def test_ts_files_hold_multichannel_series_with_labels(tmp_path):
    data = read_ts(write(tmp_path / "tiny_TRAIN.ts", TS))
    assert [tuple(s.shape) for s in data.series] == [(4, 2), (3, 2)] and data.classes == ["a", "b"]
    assert torch.equal(data.series[1][:, 1], torch.tensor([4.0, 5.0, 6.0]))
    write(tmp_path / "tiny_TEST.ts", TS)
    train, test = load_ucr(tmp_path, "tiny")
    assert len(train) == len(test) == 2
    with pytest.raises(SelfsupError, match="row 6: channels of different lengths"):
        read_ts(write(tmp_path / "bad.ts", TS.replace("1,2,3,4:5,6,7,8:a", "1,2,3,4:5,6:a")))
    with pytest.raises(SelfsupError, match="empty file"):
        read_ts(write(tmp_path / "empty.ts", "@data\n"))


def test_parquet_and_datasets_folders_hold_a_column_of_series(tmp_path):
    import datasets

    table = datasets.Dataset.from_dict({"values": [[0.1, 0.2, 0.3]] * 3,
                                        "label": ["x", "y", "x"]})
    table.to_parquet(str(tmp_path / "s.parquet"))
    table.save_to_disk(str(tmp_path / "folder"))
    for where in (tmp_path / "s.parquet", tmp_path / "folder"):
        data = read_series_table(where, label_column="label")
        assert len(data) == 3 and data.series[0].shape == (3, 1) and data.classes == ["x", "y"]
    with pytest.raises(SelfsupError, match="no column 'series'"):
        read_series_table(tmp_path / "s.parquet", value_column="series")
    metrics = timeseries.main(argv(tmp_path / "run", "--train_file", str(tmp_path / "s.parquet"), "--patch_length",
                                   "2", "--stride", "1", "--label_column", "label"))
    assert metrics["steps"] == 3


def test_the_reconstruction_picture_is_in_the_series_units(tmp_path, monkeypatch):
    """The picture's reconstruction is the model's output with the adapter's scaling undone, at the patches'
    own time steps: a model that predicts each (scaled) target patch exactly draws the series itself there."""
    from selfsup.backbones.transformer import transformer_config
    from selfsup.modalities.timeseries import SeriesConfig
    from selfsup.modalities.timeseries.data import builtin_series
    from selfsup.objectives.masked.hf_patchtst import compose_patchtst
    from selfsup.recipes._timeseries import reconstruction_picture

    data = builtin_series()[1]
    length = len(data.series[0])
    objective = compose_patchtst(SeriesConfig(num_channels=data.num_channels, context_length=length,
                                              patch_length=8, stride=5),
                                 transformer_config(dict(hidden_size=16, num_layers=1, num_heads=2,
                                                         intermediate_size=32), "bert", norm_first=True))
    real = objective.predict
    monkeypatch.setattr(objective, "predict", lambda batch: {   # the scaled target patches, exactly
        **real(batch), "logits": objective.adapter.embed(batch).targets["patches"]})
    picture = reconstruction_picture(objective, data, tmp_path / "r.png", "cpu", count=3)
    assert Path(picture.path).is_file() and picture.mask.any() and not picture.mask.all()
    for row in range(3):
        for j, start in enumerate(picture.starts):
            torch.testing.assert_close(torch.as_tensor(picture.reconstruction[row, j]),
                                       torch.as_tensor(picture.values[row, start:start + 8]), rtol=1e-5, atol=1e-4)
    assert picture.starts[-1] + 8 == length


def test_the_cross_validated_probes_choose_c_on_the_training_split_and_match_scikit_learn():
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from selfsup.recipes._timeseries import CS, linear_probe, probe_folds

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 30)) + 0.4 * y[:, None] * (np.arange(30) < 3)        # 3 informative of 30 columns
    xt, yt = x[::2] + rng.normal(scale=0.5, size=(20, 30)), y[::2]
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    lr = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                      {"logisticregression__C": list(CS)}, cv=folds).fit(x, y)
    svm = GridSearchCV(SVC(kernel="rbf", gamma="scale"), {"C": list(CS)}, cv=folds).fit(x, y)
    assert linear_probe(x, y, xt, yt, "logistic_cv") == lr.score(xt, yt)
    assert linear_probe(x, y, xt, yt, "svm_cv") == svm.score(xt, yt)
    fixed = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y).score(xt, yt)
    assert linear_probe(x, y, xt, yt) == fixed
    assert lr.best_params_["logisticregression__C"] != 1.0, "the grid chose another C than the fixed probe's"
    assert probe_folds(np.array([0, 0, 1, 1, 2, 2])) == 2 and probe_folds(y) == 5
    with pytest.raises(SelfsupError, match="probe 'knn'"):
        linear_probe(x, y, xt, yt, "knn")


@pytest.mark.long
def test_the_probe_reads_every_layer_with_probe_layers_all(tmp_path):
    from selfsup.recipes._timeseries import series_embeddings

    metrics = timeseries.main(argv(tmp_path, "--probe", "svm_cv", "--probe_layers", "all", steps=2))
    assert 0.0 <= metrics["probe/accuracy"] <= 1.0 and 0.0 <= metrics["probe/random_init_accuracy"] <= 1.0
    from selfsup.recipes._timeseries import SeriesRun, build_objective, load_series, series_config

    run = SeriesRun(hidden_size=16, num_layers=2, heads=2)
    train, _ = load_series(run)
    encoder = build_objective(run, series_config(run, train), 1).encoder()
    last = series_embeddings(encoder, train, "cpu")
    every = series_embeddings(encoder, train, "cpu", layers="all")
    assert every.shape == (len(train), 3 * last.shape[1]), "the input and both layers, side by side"
    width = last.shape[1] // train.num_channels          # per channel: (input, layer 1, layer 2), channels side by side
    per_channel = every.reshape(len(train), train.num_channels, 3, width)
    assert np.allclose(per_channel[:, :, -1].reshape(len(train), -1), last, atol=1e-5)
