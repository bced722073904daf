"""Colorization: the paper's 313 ab bins and a known colour's bin, the grey view and the target grid, the soft
encoding and the class-rebalanced cross-entropy against plain references, the running histogram a resume restores,
the annealed mean, and the image recipe training it and drawing its picture."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.modalities.image_views import (IMAGENET_MEAN, IMAGENET_STD, LabColours, ViewDataset, ab_bin_index,
                                            ab_bins, collate_views, denormalize, lab_to_rgb, published_ab_bins,
                                            rgb_to_lab)
from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
from selfsup.recipes.builders.two_view import two_view
from tests.conftest import straight_and_resumed
from tests.test_image_recipes import two_view_argv

BINS = published_ab_bins()
AB_BINS = tuple(tuple(row) for row in BINS.tolist())


def in_gamut_somewhere(a: float, b: float) -> bool:
    """Plainly: some L of 0, 0.1, ..., 100 puts (L, a, b) inside [0, 1]^3 in sRGB."""
    for k in range(1001):
        rgb = lab_to_rgb(torch.tensor([k / 10, a, b], dtype=torch.float64).view(3, 1, 1), clamp=False)
        if bool(((rgb >= -1e-9) & (rgb <= 1 + 1e-9)).all()):
            return True
    return False


def bin_of(a: float, b: float) -> int:
    return [tuple(row) for row in BINS.tolist()].index((a, b))


def test_the_bins_are_the_papers_313_and_red_and_green_land_in_theirs():
    # the paper's 313 centres of the grid of 10: every one of them on the grid, (0, 0) among them; the 229 centres in
    # the sRGB gamut for some L are all inside them (the hull of ImageNet's colours holds more than sRGB's gamut)
    assert len(BINS) == 313 and len(set(AB_BINS)) == 313
    assert ((BINS % 10 == 0).all() and BINS[:, 0].min() == -90 and BINS[:, 0].max() == 100
            and BINS[:, 1].min() == -110 and BINS[:, 1].max() == 100) and (0.0, 0.0) in AB_BINS
    assert AB_BINS[:5] == ((-90.0, 50.0), (-90.0, 60.0), (-90.0, 70.0), (-90.0, 80.0), (-90.0, 90.0))
    assert AB_BINS[-1] == (100.0, 0.0) and (100.0, 10.0) not in AB_BINS and (-90.0, 40.0) not in AB_BINS
    gamut = {tuple(row) for row in ab_bins().tolist()}
    assert len(gamut) == 229 and gamut < set(AB_BINS)
    assert in_gamut_somewhere(80, 60) and (80.0, 60.0) in gamut
    assert not in_gamut_somewhere(80, 70) and (80.0, 70.0) not in gamut and (80.0, 70.0) in AB_BINS
    red = rgb_to_lab(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).view(3, 1, 1)).flatten()
    assert torch.allclose(red, torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.01)
    # an image red above, green below: the top half of the 4 x 4 grid has red's ab, the bottom green's
    # (-86.18, 83.18), whatever the flip; their nearest bins (80, 70) and (-90, 80); the view is the grey of their L
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[:8, :, 0] = 255
    a[8:, :, 1] = 255
    out = LabColours(16, scale=(1.0, 1.0))(Image.fromarray(a))
    target, view = out["pretext_target"], out["views"][0]
    assert target.shape == (2, 4, 4) and target.dtype == torch.float32
    assert torch.allclose(target[:, :2], torch.tensor([80.09, 67.20]).view(2, 1, 1).expand(2, 2, 4), atol=0.01)
    assert torch.allclose(target[:, 2:], torch.tensor([-86.18, 83.18]).view(2, 1, 1).expand(2, 2, 4), atol=0.01)
    nearest = ab_bin_index(target, BINS)
    assert (nearest[:2] == bin_of(80, 70)).all() and (nearest[2:] == bin_of(-90, 80)).all()
    grey = denormalize(view, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[0], grey[2], atol=1e-5)
    lightness = rgb_to_lab(grey.double())[0]
    assert torch.allclose(lightness[:8], torch.full((8, 16), 53.24, dtype=torch.float64), atol=0.05)
    assert torch.allclose(lightness[8:], torch.full((8, 16), 87.73, dtype=torch.float64), atol=0.05)


def plain_soft_encoding(a: float, b: float, k: int = 5, sigma: float = 5.0) -> list[tuple[int, float]]:
    """The k nearest centres of (a, b), nearest first, with Gaussian weights exp(-d^2 / 2 sigma^2) summing to 1."""
    by_distance = sorted(range(len(AB_BINS)), key=lambda q: math.dist((a, b), AB_BINS[q]))[:k]
    g = [math.exp(-math.dist((a, b), AB_BINS[q]) ** 2 / (2 * sigma ** 2)) for q in by_distance]
    return [(q, gq / sum(g)) for q, gq in zip(by_distance, g)]


def test_the_soft_encoding_spreads_a_colour_over_its_five_nearest_bins():
    obj = build()
    ab = torch.tensor([[3.0, 4.0], [80.09, 67.2], [-86.18, 83.18], [1.5, -3.0]]).T.reshape(1, 2, 2, 2)
    bins, weights = obj.soft_encoding(ab)
    assert bins.shape == weights.shape == (4, 5)
    for cell, (a, b) in enumerate(ab.reshape(2, 4).T.tolist()):
        ref = plain_soft_encoding(a, b)
        assert bins[cell].tolist() == [q for q, _ in ref], cell
        assert weights[cell].tolist() == pytest.approx([w for _, w in ref], abs=1e-6)
    # (3, 4): 5 from (0, 0), sqrt 45 from (0, 10), sqrt 65 from (10, 0): the nearest carries the most
    assert [AB_BINS[q] for q in bins[0, :3].tolist()] == [(0.0, 0.0), (0.0, 10.0), (10.0, 0.0)]
    assert weights[0, 0] > weights[0, 1] > weights[0, 2] and float(weights.sum(1).sub(1).abs().max()) < 1e-6
    one = build(soft_neighbours=1)
    bins, weights = one.soft_encoding(ab)
    assert torch.equal(bins[:, 0], ab_bin_index(ab, BINS).flatten()) and (weights == 1).all()
    with pytest.raises(ValueError, match="soft_neighbours"):
        build(soft_neighbours=0)


def build(**overrides):
    torch.manual_seed(0)
    return two_view("colorization", "resnet_tiny", size="tiny", image_size=16, ab_bins=AB_BINS, **overrides).double()


def plain_loss(logits: torch.Tensor, ab: torch.Tensor, counts: list[int], lam: float, sigma: float,
               k: int = 5) -> float:
    """The rebalanced cross-entropy of the soft-encoded targets, summed, written out: p the counts' share, smoothed
    by a Gaussian over the centres, w = 1 / ((1 - lam) p + lam / Q), normalised so that sum p w = 1; each cell's
    cross-entropy against its soft encoding, weighted by w of its nearest bin."""
    q = len(counts)
    total = sum(counts)
    p = [c / total for c in counts]
    if sigma > 0:
        centres = BINS.tolist()
        smooth = [sum(p[i] * math.exp(-((centres[i][0] - centres[j][0]) ** 2 + (centres[i][1] - centres[j][1]) ** 2)
                                      / (2 * sigma ** 2)) for i in range(q)) for j in range(q)]
        p = [s / sum(smooth) for s in smooth]
    w = [1 / ((1 - lam) * pj + lam / q) for pj in p]
    norm = sum(pj * wj for pj, wj in zip(p, w))
    loss = 0.0
    b, _, h, wd = logits.shape
    for n in range(b):
        for y in range(h):
            for x in range(wd):
                z = logits[n, :, y, x].tolist()
                m = max(z)
                log_sum = m + math.log(sum(math.exp(v - m) for v in z))
                soft = plain_soft_encoding(float(ab[n, 0, y, x]), float(ab[n, 1, y, x]), k)
                loss += (w[soft[0][0]] / norm) * sum(zq * (log_sum - z[t]) for t, zq in soft)
    return loss


def some_colours(generator: torch.Generator, n: int = 3) -> torch.Tensor:
    """(n, 2, 4, 4) ab of a skewed palette: near 12 of the bins' centres, each moved by up to 4."""
    centres = BINS[torch.randint(0, 12, (n, 4, 4), generator=generator) * 20]
    return (centres.permute(0, 3, 1, 2) + 8 * torch.rand(n, 2, 4, 4, generator=generator) - 4).float()


def test_the_loss_is_the_rebalanced_cross_entropy_over_the_target_cells_and_the_histogram_runs():
    obj = build().train()
    g = torch.Generator().manual_seed(1)
    views = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    targets = some_colours(g)
    batch = {"views": [{"pixel_values": views}], "pretext_targets": targets}
    out = obj(batch)
    counts = torch.bincount(ab_bin_index(targets, BINS).flatten(), minlength=len(BINS))
    assert torch.equal(obj.bin_counts, counts) and out.num_targets == 48 and int((counts > 0).sum()) > 6
    logits = obj.logits({"pixel_values": views}, (4, 4))      # train mode: the same batch statistics
    assert logits.shape == (3, len(BINS), 4, 4)
    ref = plain_loss(logits, targets, counts.tolist(), 0.5, 5.0)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    again = obj(batch)                                         # the histogram keeps counting
    assert torch.equal(obj.bin_counts, 2 * counts) and again.loss.item() == pytest.approx(ref, rel=1e-5)
    obj.bin_counts[0] += 100                                   # the weights follow the histogram
    assert obj(batch).loss.item() == pytest.approx(plain_loss(logits, targets, (2 * counts + torch.eye(
        len(BINS), dtype=torch.long)[0] * 100 + counts).tolist(), 0.5, 5.0), rel=1e-5)
    hard = build(rebalance=1.0, smoothing=0.0, soft_neighbours=1).train()   # one bin, weights 1: the cross-entropy
    out = hard(batch)
    ref = torch.nn.functional.cross_entropy(hard.logits({"pixel_values": views}, (4, 4)),
                                            ab_bin_index(targets, BINS), reduction="sum")
    assert torch.allclose(out.loss.double(), ref, rtol=1e-5)
    unsmoothed = build(smoothing=0.0).train()
    out = unsmoothed(batch)
    assert out.loss.item() == pytest.approx(plain_loss(unsmoothed.logits({"pixel_values": views}, (4, 4)), targets,
                                                       counts.tolist(), 0.5, 0.0), rel=1e-5)
    evaluating = build().eval()                                # evaluation counts nothing: uniform weights of 1
    evaluating(batch)
    assert int(evaluating.bin_counts.sum()) == 0
    with pytest.raises(ValueError, match="pretext_targets"):
        obj({"views": [{"pixel_values": views}]})
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        obj({"views": [{"pixel_values": views}], "pretext_targets": ab_bin_index(targets, BINS)})
    with pytest.raises(ValueError, match="ab bins"):
        two_view("colorization", "resnet_tiny", size="tiny", image_size=16)


@pytest.mark.long
def test_the_histogram_is_a_buffer_a_resume_restores(tmp_path):
    argv = two_view_argv("colorization")
    from selfsup.recipes import two_view as recipe

    final, resumed, middle = straight_and_resumed(recipe.main, argv, tmp_path, steps=2, at=1)
    assert int(middle["bin_counts"].sum()) == 8 * 4 * 4 and int(final["bin_counts"].sum()) == 2 * 8 * 4 * 4
    for k in final:
        assert torch.equal(final[k], resumed[k]), k


@pytest.mark.parametrize("backbone", ["resnet_tiny", "vit"])
def test_the_predictions_are_the_annealed_mean_of_the_bins(backbone):
    torch.manual_seed(0)
    obj = two_view("colorization", backbone, size="tiny", image_size=16, ab_bins=AB_BINS).double().eval()
    views = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    batch = {"views": [{"pixel_values": views}], "pretext_targets": torch.zeros(2, 2, 4, 4)}
    ab = obj.pretext_predictions(batch)
    logits = obj.logits({"pixel_values": views}, (4, 4))
    probs = torch.softmax(logits / 0.38, dim=1)
    ref = torch.stack([(probs * BINS[:, 0].double().view(1, -1, 1, 1)).sum(1),
                       (probs * BINS[:, 1].double().view(1, -1, 1, 1)).sum(1)], dim=1)
    assert ab.shape == (2, 2, 4, 4) and torch.allclose(ab.double(), ref, atol=1e-5)
    obj.config.temperature = 1.0                                # T = 1: the distribution's own mean
    mean = torch.einsum("bqhw,qc->bchw", torch.softmax(logits, dim=1), BINS.double())
    assert torch.allclose(obj.pretext_predictions(batch).double(), mean, atol=1e-5)
    assert not torch.allclose(mean, ref, atol=1e-2)


def test_the_pipeline_renders_grey_coloured_and_target_rows():
    pipeline = view_pipeline("colorization", ViewOptions(image_size=16))
    assert len(pipeline.objective["ab_bins"]) == len(BINS)
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[..., 0] = 255
    batch = collate_views([ViewDataset([{"image": Image.fromarray(a)}] * 2, pipeline.transforms)[i] for i in (0, 1)])
    assert batch["views"][0]["pixel_values"].shape == (2, 3, 16, 16) and batch["pretext_targets"].shape == (2, 2, 4, 4)
    predictions = torch.zeros(2, 2, 4, 4)                        # grey predicted: the colourised row is grey
    grey, coloured, target = pipeline.render(batch, predictions)
    assert grey.shape == coloured.shape == target.shape == (2, 3, 16, 16)
    assert torch.allclose(coloured, grey, atol=2e-3)
    assert (target[:, 0] > 0.95).all() and (target[:, 1:] < 0.05).all()   # red again: red's own ab at red's L


@pytest.mark.long
def test_the_image_recipe_trains_colorization_and_draws_its_picture(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "colorization" in capsys.readouterr().out
    metrics = recipe.main(two_view_argv("colorization")(tmp_path / "run", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"]) and "knn/accuracy" in metrics
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    picture = Image.open(tmp_path / "run" / "pretext.png")
    assert picture.mode == "RGB" and picture.size[0] > picture.size[1] > 0     # 3 rows of 8 images
    gpu = recipe.TwoViewRun(method="colorization", preset="gpu")
    flags = recipe.TrainingSettings.from_args(recipe.build_parser().parse_args(["--method", "colorization"]))
    settings = recipe.preset_training(flags, gpu, 50_000, 1)
    assert (settings.adam_beta1, settings.adam_beta2, settings.learning_rate, settings.per_device_train_batch_size,
            settings.weight_decay) == (0.9, 0.99, 3e-5, 40, 1e-3)
