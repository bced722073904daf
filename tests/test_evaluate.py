import numpy as np
import pytest
import torch

from selfsup.evaluate import PROBE_C_GRID, choose_probe_c, knn_accuracy, linear_probe, probe_encoders
from selfsup.types import Adapter, BackboneOutput, Encoder, Tokens


def blobs(n: int, seed: int, separable: bool = True):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.eye(3, 16) * (6.0 if separable else 0.0)
    return (centers[y] + rng.normal(size=(n, 16))).astype(np.float32), y


def test_probe_and_knn_separate_blobs_but_not_noise():
    xtr, ytr = blobs(300, 0)
    xte, yte = blobs(200, 1)
    assert linear_probe(xtr, ytr, xte, yte) > 0.95
    assert knn_accuracy(xtr, ytr, xte, yte) > 0.95
    ntr, _ = blobs(300, 0, separable=False)
    nte, _ = blobs(200, 1, separable=False)
    assert linear_probe(ntr, ytr, nte, yte) < 0.55
    assert knn_accuracy(ntr, ytr, nte, yte) < 0.55


def noisy_blobs(n: int, seed: int, noise_dims: int = 200):
    """Weakly separated blobs in 4 dimensions beside many pure-noise ones: an unregularised probe fits the noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    signal = np.eye(3, 4)[y] * 1.5 + rng.normal(size=(n, 4))
    return np.concatenate([signal, rng.normal(size=(n, noise_dims))], axis=1).astype(np.float32), y


@pytest.mark.long
def test_cross_validated_c_is_the_grid_search_choice_and_the_probe_uses_it():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xtr, ytr = noisy_blobs(300, 0)
    xte, yte = noisy_blobs(2000, 1)
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                          {"logisticregression__C": list(PROBE_C_GRID)},
                          cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(xtr, ytr)
    c = choose_probe_c(xtr, ytr)
    assert c == search.best_params_["logisticregression__C"]
    assert c < 1.0                                 # 200 noise dimensions beside 4 of signal call for a penalty
    chosen = linear_probe(xtr, ytr, xte, yte, c=PROBE_C_GRID)
    assert chosen == linear_probe(xtr, ytr, xte, yte, c=c)    # a grid probes with the C the folds chose
    assert chosen > linear_probe(xtr, ytr, xte, yte, c=1.0)


def test_cross_validated_c_falls_back_when_a_class_cannot_be_held_out():
    x, y = blobs(30, 0)
    y[0] = 7                                       # a class with one example: no stratified fold can hold it out
    assert choose_probe_c(x, y, grid=(0.01, 0.5)) == 1.0          # the fixed probe's C
    assert linear_probe(x, y, x, y, c=(0.01, 0.5)) == linear_probe(x, y, x, y, c=1.0)


def test_a_probe_on_features_that_are_not_finite_stops_in_one_line():
    import pytest

    from selfsup.errors import SelfsupError

    x, y = blobs(60, 0)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(SelfsupError, match="training features hold 1 NaN") as err:
        linear_probe(bad, y, x, y)
    assert "\n" not in str(err.value)
    bad[3, 2] = np.inf
    with pytest.raises(SelfsupError, match="test features hold 1 NaN or inf"):
        linear_probe(x, y, bad, y, c=PROBE_C_GRID)


class Lookup(Adapter):
    """Features given in the batch, as one token each."""

    hidden_size = 16

    def embed(self, batch):
        return Tokens(x=batch["x"][:, None, :], padding_mask=None)

    def add_positions(self, x, padding_mask=None, structure=None):
        return x


class Identity(torch.nn.Module):
    """A backbone that passes the features through."""

    def forward(self, x, padding_mask=None, output_hidden_states=False, structure=None):
        return BackboneOutput(x)


class Noise(torch.nn.Module):
    """A backbone that replaces the features with noise."""

    def forward(self, x, padding_mask=None, output_hidden_states=False, structure=None):
        return BackboneOutput(torch.randn_like(x))


def test_an_empty_test_set_stops_the_knn_and_the_probe_in_one_line():
    import pytest

    from selfsup.errors import SelfsupError

    x, y = blobs(60, 0)
    for score, what in ((knn_accuracy, "kNN"), (linear_probe, "linear probe")):
        with pytest.raises(SelfsupError, match=f"the {what} has no test examples") as err:
            score(x, y, x[:0], y[:0])
        assert "\n" not in str(err.value)


def test_probe_encoders_reports_both_encoders():
    xtr, ytr = blobs(120, 0)
    xte, yte = blobs(60, 1)
    data = {"train": xtr, "test": xte}

    out = probe_encoders({"": Encoder(Lookup(), Identity()), "random_init_": Encoder(Lookup(), Noise())},
                         lambda split: [{"x": torch.as_tensor(data[split])}], ytr, yte)
    assert set(out) == {"probe/accuracy", "probe/random_init_accuracy", "knn/accuracy", "knn/random_init_accuracy",
                        "probe/gain", "probe/gain_ci95", "knn/gain", "knn/gain_ci95"}
    assert out["probe/accuracy"] > 0.9 > 0.6 > out["probe/random_init_accuracy"]
    for kind in ("probe", "knn"):    # the gain is the difference of the two accuracies, its interval clear of zero
        assert abs(out[f"{kind}/gain"] - (out[f"{kind}/accuracy"] - out[f"{kind}/random_init_accuracy"])) < 1e-12
        assert out[f"{kind}/gain"] - out[f"{kind}/gain_ci95"] > 0


def test_paired_gain_equals_a_plain_reference():
    """The gain's interval from the per-example differences, written out; it is narrower than the unpaired one
    when the two classifiers agree on most examples, and zero for one classifier against itself."""
    import math

    from selfsup.evaluate import paired_gain

    rng = np.random.default_rng(0)
    reference = (rng.random(1000) < 0.3).astype(float)
    flip = rng.random(1000) < 0.1                        # 10 % of the answers changed, more often to right
    correct = np.where(flip, rng.random(1000) < 0.8, reference).astype(float)
    diffs = [a - b for a, b in zip(correct, reference)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    gain, half = paired_gain(correct, reference)
    assert abs(gain - mean) < 1e-12 and abs(half - 1.96 * sd / math.sqrt(1000)) < 1e-12
    p, q = correct.mean(), reference.mean()
    unpaired = 1.96 * math.sqrt(p * (1 - p) / 1000 + q * (1 - q) / 1000)
    assert half < 0.6 * unpaired
    assert paired_gain(correct, correct) == (0.0, 0.0)
    import pytest
    with pytest.raises(ValueError, match="one score per test example"):     # not broadcast into a wrong figure
        paired_gain(correct, reference[:1])


def test_the_summary_shows_the_paired_gain(tmp_path):
    from selfsup.run import summary

    metrics = {"steps": 3, "knn/accuracy": 0.311, "knn/random_init_accuracy": 0.304, "knn/gain": 0.007,
               "knn/gain_ci95": 0.009, "probe/accuracy": 0.5, "probe/random_init_accuracy": 0.4}
    lines = summary(metrics, None, tmp_path).splitlines()
    assert any("31.1%   (random init 30.4%; +0.7 ± 0.9 points, 95 % over the test examples)" in ln for ln in lines)
    assert any(ln.endswith("50.0%   (random init 40.0%)") for ln in lines)     # no interval, no claim


def test_all_layers_probe_sees_what_the_last_layer_lost():
    """An encoder whose last layer is noise but whose input layer holds the classes: only the all-layers probe and
    kNN (every hidden state mean-pooled and concatenated) find them."""
    from selfsup.types import BackboneOutput

    xtr, ytr = blobs(120, 0)
    xte, yte = blobs(60, 1)
    data = {"train": xtr, "test": xte}

    class LastLayerNoise(torch.nn.Module):
        def forward(self, x, padding_mask=None, output_hidden_states=False, structure=None):
            noise = torch.randn_like(x)
            return BackboneOutput(noise, (x, noise) if output_hidden_states else None)

    out = probe_encoders({"": Encoder(Lookup(), LastLayerNoise())},
                         lambda split: [{"x": torch.as_tensor(data[split])}], ytr, yte, all_layers=True)
    assert out["probe/accuracy"] < 0.6 and out["probe/all_layers/accuracy"] > 0.9
    assert out["knn/accuracy"] < 0.6 and out["knn/all_layers/accuracy"] > 0.9


def test_a_list_of_encoders_reports_their_mean():
    xtr, ytr = blobs(120, 0)
    xte, yte = blobs(60, 1)
    data = {"train": xtr, "test": xte}
    batches = lambda split: [{"x": torch.as_tensor(data[split])}]  # noqa: E731
    good = probe_encoders({"": Encoder(Lookup(), Identity())}, batches, ytr, yte)["probe/accuracy"]
    torch.manual_seed(0)
    bad = probe_encoders({"": Encoder(Lookup(), Noise())}, batches, ytr, yte)["probe/accuracy"]
    torch.manual_seed(0)
    both = probe_encoders({"": [Encoder(Lookup(), Noise()), Encoder(Lookup(), Identity())]}, batches, ytr, yte)
    assert abs(both["probe/accuracy"] - (good + bad) / 2) < 1e-9


def test_knn_under_bf16_autocast_ranks_in_float32():
    """The trainer evaluates under autocast; the kNN's similarities must not drop to bf16 (nor fail on dtypes)."""
    import numpy as np
    import torch

    from selfsup.evaluate import knn_accuracy

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(300, 16)).astype("float32"), rng.normal(size=(50, 16)).astype("float32")
    ty, sy = rng.integers(0, 3, 300), rng.integers(0, 3, 50)
    plain = knn_accuracy(train, ty, test, sy, k=200, temperature=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert knn_accuracy(train, ty, test, sy, k=200, temperature=0.1) == plain


def test_the_confusion_matrix_is_drawn_by_scikit_learn_on_agg(tmp_path):
    from PIL import Image

    from selfsup.evaluate import confusion_png
    from selfsup.plots import confusion_figure

    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 7]])
    fig = confusion_figure(confusion, ["cat", "dog", "ship"], "title")
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    ax = fig.axes[0]
    assert np.array_equal(np.asarray(ax.images[0].get_array()), confusion)   # ConfusionMatrixDisplay's imshow
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in confusion.ravel())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "ship"]
    assert ax.get_ylabel() == "True label" and ax.get_title() == "title"
    path = confusion_png(confusion, ["cat", "dog", "ship"], str(tmp_path / "sub" / "cm.png"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 200
