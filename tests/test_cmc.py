"""Contrastive Multiview Coding (Tian, Krishnan & Isola, 2020): the L and ab views of one crop (a known colour's
values), the loss against plain references (in-batch and memory-bank negatives, 2 and 3 views, full graph and core
view), the bank update, the encoder per view and its concatenated feature, a recipe run with the export per view,
resume restoring the banks, the clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.modalities.image_views import LAB_MEAN, LAB_STD, LabViews, ViewDataset, collate_views, lab_views
from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.conftest import straight_and_resumed
from tests.test_image_recipes import two_view_argv

N = 20


def make(negatives="batch", num_views=2, **kw):
    torch.manual_seed(0)
    return two_view("cmc", "resnet_tiny", size="tiny", image_size=16, num_examples=N, negatives=negatives,
                    num_views=num_views, **kw).double().eval()


def batch(num_views=2, seed=1, index=(3, 7, 0, 11, 19)):
    g = torch.Generator().manual_seed(seed)
    views = [{"pixel_values": torch.randn(len(index), 3, 16, 16, generator=g, dtype=torch.float64)}
             for _ in range(num_views)]
    return {"views": views, EXAMPLE_INDEX: torch.tensor(index)}


def embeddings(obj, b):
    """Each view through its own encoder and head, written out."""
    with torch.no_grad():
        return [F.normalize(obj.heads[v](obj.encoders[v].features(b["views"][v])), dim=1)
                for v in range(len(b["views"]))]


def pairs(num_views, graph):
    if graph == "core":
        return [(0, j) for j in range(1, num_views)] + [(j, 0) for j in range(1, num_views)]
    return [(i, j) for i in range(num_views) for j in range(num_views) if i != j]


def test_the_views_are_the_l_and_ab_channels_of_one_crop():
    red = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    red[:, 0] = 1.0                                                   # sRGB red: L* 53.24, a* 80.09, b* 67.20
    lv, abv = lab_views(red)
    lab = (torch.tensor([53.2408, 80.0925, 67.2032], dtype=torch.float64) - torch.tensor(LAB_MEAN)) / torch.tensor(LAB_STD)
    assert torch.allclose(lv[0, :, 0, 0], torch.stack([lab[0], torch.tensor(0.0), torch.tensor(0.0)]).double(), atol=1e-3)
    assert torch.allclose(abv[0, :, 0, 0], torch.stack([torch.tensor(0.0), lab[1], lab[2]]).double(), atol=1e-3)
    assert abs(float(lv[0, 0, 0, 0]) - (53.2408 - 50) / 50) < 1e-3   # L's range [0, 100] to [-1, 1]

    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    t = LabViews(16)
    torch.manual_seed(3)
    crop = t.base(image).as_subclass(torch.Tensor)                   # the crop and flip of this draw
    torch.manual_seed(3)
    views = t(image)["views"]
    expected = lab_views(crop)
    assert len(views) == 2 and all(torch.allclose(v, e) for v, e in zip(views, expected))
    assert views[0][1:].abs().max() == 0 and views[1][0].abs().max() == 0 and views[1][1:].abs().max() > 0

    pipeline = view_pipeline("cmc", ViewOptions(image_size=16))
    assert pipeline.objective == {"num_views": 2, "view_names": ("L", "ab")}
    data = ViewDataset([{"image": image, "label": 1}] * 3, pipeline.transforms)
    b = collate_views([data[i] for i in range(3)])
    assert [tuple(v["pixel_values"].shape) for v in b["views"]] == [(3, 3, 16, 16)] * 2
    assert torch.equal(b[EXAMPLE_INDEX], torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("num_views,graph", [(2, "full"), (3, "full"), (3, "core")])
def test_the_in_batch_loss_is_infonce_between_the_views(num_views, graph):
    obj, b = make("batch", num_views, graph=graph), batch(num_views)
    z, T = embeddings(obj, b), obj.config.temperature
    ref = 0.0
    for i, j in pairs(num_views, graph):
        for r in range(5):
            scores = [math.exp(float(z[i][r] @ z[j][c]) / T) for c in range(5)]
            ref -= math.log(scores[r] / sum(scores))
    out = obj(b)
    assert out.num_targets == 5
    assert abs(float(out.loss.detach()) - ref) < 1e-6 * max(1.0, abs(ref))


@pytest.mark.parametrize("num_views,graph", [(2, "full"), (3, "full"), (3, "core")])
def test_the_bank_loss_is_a_softmax_over_the_positive_row_and_k_drawn_rows(num_views, graph):
    obj, b = make("bank", num_views, graph=graph, num_negatives=6), batch(num_views)
    bank, index = obj.bank.clone(), b[EXAMPLE_INDEX]
    z, T = embeddings(obj, b), obj.config.temperature
    negatives = obj.sample_negatives(5, torch.device("cpu"))
    assert negatives.shape == (5, 6) and torch.equal(negatives, obj.sample_negatives(5, torch.device("cpu")))
    ref = 0.0
    for i, j in pairs(num_views, graph):
        for r in range(5):
            pos = math.exp(float(bank[j, index[r]] @ z[i][r]) / T)
            neg = sum(math.exp(float(bank[j, k] @ z[i][r]) / T) for k in negatives[r].tolist())
            ref -= math.log(pos / (pos + neg))
    out = obj(b)
    assert abs(float(out.loss.detach()) - ref) < 1e-6 * max(1.0, abs(ref))
    assert int(obj.draws) == 1 and not torch.equal(obj.sample_negatives(5, torch.device("cpu")), negatives)


def test_the_bank_scores_by_rows_and_by_columns_agree():
    from selfsup.objectives.two_view.cmc import bank_scores

    g = torch.Generator().manual_seed(0)
    z, bank = torch.randn(4, 8, generator=g, dtype=torch.float64), torch.randn(30, 8, generator=g, dtype=torch.float64)
    candidates = torch.randint(0, 30, (4, 5), generator=g)
    expected = torch.stack([torch.stack([bank[k] @ z[r] for k in candidates[r]]) for r in range(4)])
    for by_rows in (True, False, None):
        assert torch.allclose(bank_scores(z, bank, candidates, by_rows), expected, atol=1e-12)


def test_every_views_bank_rows_of_the_batch_move_and_the_rest_stay():
    obj, b = make("bank", 3), batch(3)
    before = obj.bank.clone()
    z = embeddings(obj, b)
    obj(b)
    index, m = b[EXAMPLE_INDEX], obj.config.bank_momentum
    rest = torch.ones(N, dtype=torch.bool)
    rest[index] = False
    for v in range(3):
        assert torch.allclose(obj.bank[v, index], F.normalize(m * before[v, index] + (1 - m) * z[v], dim=1),
                              atol=1e-12)
        assert torch.equal(obj.bank[v, rest], before[v, rest])
    assert torch.allclose(obj.bank.norm(dim=-1), torch.ones(3, N, dtype=torch.float64), atol=1e-12)
    assert torch.equal(make("bank", 3).bank, before)                  # the initial banks are seeded


def test_one_encoder_per_view_and_the_feature_is_their_concatenation():
    obj, b = make(), batch()
    a, c = obj.encoders
    assert type(a.backbone) is type(c.backbone) and a.backbone is not c.backbone
    pa, pc = dict(a.named_parameters()), dict(c.named_parameters())
    assert pa.keys() == pc.keys() and all(pa[k].shape == pc[k].shape for k in pa)
    obj(b).loss.backward()
    assert all(p.grad is not None for p in c.parameters() if p.requires_grad)   # the copy trains too
    encoder = obj.encoder()
    feature = encoder.pooled_views(b)["last"]
    expected = torch.cat([a.features(b["views"][0]), c.features(b["views"][1])], dim=1)
    assert feature.shape == (5, 2 * a.feature_size) == (5, encoder.feature_size)
    assert torch.allclose(feature, expected, atol=1e-10) and torch.allclose(encoder.features(b), expected)
    assert list(encoder.parts) == ["view_1", "view_2"]
    with pytest.raises(ValueError, match="2 views"):
        encoder.pooled_views({"pixel_values": b["views"][0]["pixel_values"]})


def test_the_clear_errors():
    with pytest.raises(ValueError, match="num_examples > 0"):
        two_view("cmc", "resnet_tiny", size="tiny", image_size=16, negatives="bank")
    with pytest.raises(ValueError, match="'batch' or 'bank'"):
        make("queue")
    with pytest.raises(ValueError, match="at least 2 views"):
        make(num_views=1)
    obj, b = make("bank"), batch()
    del b[EXAMPLE_INDEX]
    with pytest.raises(ValueError, match="example_index"):
        obj(b)


@pytest.mark.long
def test_the_image_recipe_trains_probes_and_exports_an_encoder_per_view(tmp_path, capsys):
    from transformers import AutoModel

    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "cmc" in capsys.readouterr().out
    # one C for the probe (its cross-validated search over 1,024 features of two encoders is most of this test's
    # time; tests/test_image_recipes.py covers the search)
    metrics = recipe.main(two_view_argv("cmc")(tmp_path / "run", "--probe_c", "0.1", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert {"knn/accuracy", "knn/random_init_accuracy"} <= set(metrics)
    assert metrics["export/max_abs_hidden_diff"] < 1e-4
    export = tmp_path / "run" / "export"
    for name in ("L", "ab"):
        assert (export / name / "model.safetensors").is_file()
    assert "lab_views" in (export / "README.md").read_text()
    model = AutoModel.from_pretrained(str(export / "L"), trust_remote_code=True)
    assert model(pixel_values=torch.zeros(1, 3, 16, 16)).pooler_output.numel() == 512


@pytest.mark.long
def test_resume_restores_the_banks(tmp_path):
    from selfsup.recipes import two_view as recipe

    argv = two_view_argv("cmc")

    def with_bank(out, *extra, steps):     # the gpu preset's memory banks on the tiny run
        return argv(out, "--preset", "gpu", "--no_linear_probe", *extra, steps=steps)

    straight, resumed, early = straight_and_resumed(recipe.main, with_bank, tmp_path, steps=4, at=2)
    keys = [k for k in straight if k.endswith("bank")]
    assert keys
    for k in keys:
        assert torch.equal(straight[k], resumed[k]) and not torch.equal(straight[k], early[k])


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    from tests import cmc_worker
    from tests.conftest import ROOT
    from tests.launch import worker_tensors

    out = tmp_path_factory.mktemp("cmc") / "two.safetensors"
    return cmc_worker.run_all(), worker_tensors(2, ROOT / "tests" / "cmc_worker.py", out, timeout=300)


@pytest.mark.long
@pytest.mark.parametrize("name", ["cmc_batch", "cmc_bank"])
def test_two_processes_train_as_one(one_and_two, name):
    """Unequal halves of each global batch on two processes (world size asserted by the launcher): the losses, the
    gradients (in-batch negatives gathered with gradient) and the banks (every process's rows written into every
    process's banks) equal one process's."""
    one, two = one_and_two
    keys = sorted(k for k in one if k.startswith(f"{name}/"))
    assert keys == sorted(k for k in two if k.startswith(f"{name}/")) and any("/grad/" in k for k in keys)
    assert (f"{name}/buffer/bank" in keys) == (name == "cmc_bank")
    for k in keys:
        assert torch.allclose(one[k], two[k], atol=1e-9, rtol=1e-7), (k, float((one[k] - two[k]).abs().max()))
