"""Deep InfoMax, local-global (Hjelm et al., 2019): the local and global ends of the encoder, the JSD and InfoNCE
estimators against plain references written with loops, the pairing mattering, one process's rows of a split batch
adding up to the whole, two processes training as one, the crop-and-flip views, a recipe run with export, the clear
errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.objectives.predictive.deep_infomax import infonce_terms, jsd_terms
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def make(estimator="jsd", backbone="resnet_tiny", **kw):
    torch.manual_seed(0)
    return two_view("deep_infomax", backbone, size="tiny", image_size=16, estimator=estimator, **kw).double().eval()


def batch(b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"views": [{"pixel_values": torch.randn(b, 3, 16, 16, generator=g, dtype=torch.float64)}]}


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def dot(a, b) -> float:
    return float(sum(float(x) * float(y) for x, y in zip(a, b)))


def jsd_reference(l_enc, g) -> float:
    """The negative of the paper's Eq. 4 per image (E_pos over its locations, E_neg over the other images'
    locations), summed over the images."""
    n, m = l_enc.shape[:2]
    total = 0.0
    for i in range(n):
        pos = sum(softplus(-dot(g[i], l_enc[i, k])) for k in range(m)) / m
        neg = sum(softplus(dot(g[i], l_enc[j, k])) for j in range(n) if j != i for k in range(m)) / ((n - 1) * m)
        total += pos + neg
    return total


def infonce_reference(l_enc, g) -> float:
    """Per image and location: -log softmax of (g_i . l_i^m) among it and every other image's local features."""
    n, m = l_enc.shape[:2]
    total = 0.0
    for i in range(n):
        negatives = [dot(g[i], l_enc[j, k]) for j in range(n) if j != i for k in range(m)]
        for k in range(m):
            pos = dot(g[i], l_enc[i, k])
            total -= (pos - math.log(math.exp(pos) + sum(math.exp(s) for s in negatives))) / m
    return total


def test_the_local_features_are_the_stage_before_last_and_the_global_vector_the_pooled_features():
    obj, b = make(), batch()
    view = b["views"][0]
    local, pooled = obj.local_and_global(view)
    states = obj.backbone(view["pixel_values"], output_hidden_states=True).hidden_states
    assert local.shape == (5, 16, 256)                  # layer3 of the CIFAR-stem ResNet at 16 px: a 4 x 4 map
    assert torch.equal(local, states[3]) and torch.allclose(pooled, obj.encoder().features(view))
    last = make(local_layer=-1).local_and_global(view)[0]
    assert last.shape == (5, 4, 512)                    # the last stage: 2 x 2 x 512
    vit = make(backbone="vit")
    local = vit.local_and_global(view)[0]
    assert local.shape == (5, 16, 32)                   # a ViT layer's 16 patch tokens, the class token left out


@pytest.mark.parametrize("estimator,reference", [("jsd", jsd_reference), ("infonce", infonce_reference)])
def test_the_loss_equals_the_plain_reference(estimator, reference):
    obj, b = make(estimator), batch()
    l_enc, g = obj.codes(b)
    assert l_enc.shape == (5, 16, 16) and g.shape == (5, 16)
    ref = reference(l_enc.detach(), g.detach())
    out = obj(b)
    assert out.num_targets == 5 and 0 <= float(out.metrics["dim_accuracy"]) <= 1
    assert abs(float(out.loss.detach()) - ref) < 1e-9 * max(1.0, abs(ref))


@pytest.mark.parametrize("terms", [jsd_terms, infonce_terms])
def test_the_pairing_matters_and_the_order_of_the_batch_does_not(terms):
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(6, 8, generator=g, dtype=torch.float64)
    local = codes[:, None] + 0.3 * torch.randn(6, 4, 8, generator=g, dtype=torch.float64)   # each near its own code
    paired = terms(torch.einsum("id,jmd->ijm", codes, local)).sum()
    shuffle = torch.tensor([1, 2, 3, 4, 5, 0])
    shuffled = terms(torch.einsum("id,jmd->ijm", codes[shuffle], local)).sum()
    assert float(shuffled) > float(paired) + 1.0                     # another image's code: the loss grows
    order = torch.randperm(6, generator=g)
    reordered = terms(torch.einsum("id,jmd->ijm", codes[order], local[order])).sum()
    assert torch.allclose(reordered, paired, atol=1e-12)             # the same pairs in another order


@pytest.mark.parametrize("terms", [jsd_terms, infonce_terms])
def test_rows_of_a_split_batch_against_the_whole_batch_add_up_to_it(terms):
    """What a process computes: its rows' codes against every process's local features, its own at ``offset``."""
    g = torch.Generator().manual_seed(0)
    codes, local = torch.randn(7, 8, generator=g, dtype=torch.float64), torch.randn(7, 3, 8, generator=g,
                                                                                    dtype=torch.float64)
    whole = terms(torch.einsum("id,jmd->ijm", codes, local))
    parts = [terms(torch.einsum("id,jmd->ijm", codes[a:z], local), offset=a) for a, z in ((0, 3), (3, 7))]
    assert torch.allclose(torch.cat(parts), whole, atol=1e-12)


def test_the_crop_flip_views_move_pixels_and_change_no_colour():
    from selfsup.modalities.image_views import denormalize
    from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pipeline = view_pipeline("crop_flip", ViewOptions(image_size=16))
    assert len(pipeline.transforms) == 1
    colours = {tuple(p) for p in pixels.reshape(-1, 3)} | {(0, 0, 0)}    # the image's, and the padding's black
    torch.manual_seed(0)
    moved = 0
    for _ in range(4):
        view, = pipeline.transforms[0](Image.fromarray(pixels))["views"]
        assert view.shape == (3, 16, 16)
        out = (denormalize(view).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert {tuple(p) for p in out.reshape(-1, 3)} <= colours
        moved += not np.array_equal(out, pixels)
    assert moved


def test_the_clear_errors():
    with pytest.raises(ValueError, match="unknown Deep InfoMax estimator 'nce'"):
        make("nce")
    with pytest.raises(ValueError, match="local_layer 7"):
        make(local_layer=7)
    with pytest.raises(ValueError, match="at least 2 images"):
        make()(batch(b=1))


@pytest.mark.long
def test_the_image_recipe_trains_it_and_exports(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "deep_infomax" in capsys.readouterr().out
    metrics = recipe.main(two_view_argv("deep_infomax")(tmp_path / "run", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    run = recipe.TwoViewRun(method="deep_infomax", estimator="infonce")
    assert recipe.method_overrides(run) == {"units": 512, "estimator": "infonce"}   # the CPU preset's, the flag's
    assert recipe.method_overrides(recipe.TwoViewRun(method="deep_infomax", preset="gpu")) == {"estimator": "jsd"}


@pytest.mark.long
def test_two_processes_train_as_one(tmp_path):
    """Unequal halves of each global batch on two processes (world size asserted by the launcher): the losses and
    the gradients equal one process's on the whole batch (the negatives are every process's local features)."""
    from tests import dim_worker
    from tests.conftest import ROOT
    from tests.launch import worker_tensors

    one = dim_worker.run_all()
    two = worker_tensors(2, ROOT / "tests" / "dim_worker.py", tmp_path / "two.safetensors", timeout=300)
    keys = sorted(k for k in one)
    assert keys == sorted(k for k in two if not k.startswith("__")) and any("/grad/" in k for k in keys)
    for k in keys:
        assert torch.allclose(one[k], two[k], atol=1e-9, rtol=1e-7), (k, float((one[k] - two[k]).abs().max()))
