"""Context encoders (inpainting): the view hides exactly the central half-side square and the target is the original
there, the loss is 0.999 x the squared error plus 0.001 x the generator's adversarial term plus the discriminator's
loss, one backward pass keeps the two players apart, and the image recipe trains it, draws the picture and resumes
the discriminator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.modalities.image_views import (CentreHole, ViewDataset, centre_square, collate_views, denormalize,
                                            eval_transform)
from selfsup.modalities.view_pipelines import ViewOptions, view_pipeline
from selfsup.recipes.builders.two_view import two_view
from tests.conftest import straight_and_resumed
from tests.test_image_recipes import two_view_argv


def noise_image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def centre_mask(size: int, start: int, side: int) -> torch.Tensor:
    rows = (torch.arange(size) >= start) & (torch.arange(size) < start + side)
    return rows[:, None] & rows[None, :]


@pytest.mark.parametrize("size", [32, 20, 17])
def test_the_view_hides_exactly_the_central_half_side_square_and_the_target_is_the_original_there(size):
    start, side = centre_square(size)
    assert side == size // 2 and start == (size - side) // 2
    image = noise_image(size)
    original = eval_transform(size)(image)                        # resize + centre crop + normalise, no hole
    out = ViewDataset([{"image": image}], CentreHole(size, augment=False), seed=0)[0]
    (view,), target = out["views"], out["pretext_target"]
    hidden = (view == 0).all(dim=0)
    assert torch.equal(hidden, centre_mask(size, start, side))    # the hole: exactly the central square
    assert torch.equal(view[:, ~hidden], original[:, ~hidden])     # the rest untouched
    assert target.shape == (3, side, side)
    assert torch.equal(target, original[:, start:start + side, start:start + side])
    # augmented (crop + flip): still exactly the central square, the target what was there before it was filled
    for seed in range(3):
        aug = ViewDataset([{"image": noise_image(size, seed + 1)}], CentreHole(size), seed=seed)[0]
        assert torch.equal((aug["views"][0] == 0).all(dim=0), centre_mask(size, start, side))
        assert aug["pretext_target"].shape == (3, side, side) and aug["pretext_target"].abs().sum() > 0
    batch = collate_views([out, out])
    assert batch["pretext_targets"].shape == (2, 3, side, side)


def test_the_overlap_keeps_the_target_squares_border_visible_and_the_pipeline_sets_the_papers():
    """The paper's code: the hole is ``overlapPred`` (4 of a 64-pixel square) smaller on every side than the
    predicted square, so the input shows the target's border."""
    from selfsup.modalities.image_views import paper_overlap

    assert (paper_overlap(64), paper_overlap(16), paper_overlap(8)) == (4, 1, 0)
    size, k = 32, 2
    start, side = centre_square(size)
    image = noise_image(size, 3)
    original = eval_transform(size)(image)
    out = ViewDataset([{"image": image}], CentreHole(size, augment=False, overlap=k), seed=0)[0]
    (view,), target = out["views"], out["pretext_target"]
    hidden = (view == 0).all(dim=0)
    assert torch.equal(hidden, centre_mask(size, start + k, side - 2 * k))     # the hole: the square less its border
    assert torch.equal(target, original[:, start:start + side, start:start + side])   # the target: the whole square
    border = ~centre_mask(side, k, side - 2 * k)
    assert torch.equal(view[:, start:start + side, start:start + side][:, border], target[:, border])
    with pytest.raises(ValueError, match="no hole"):
        CentreHole(size, overlap=side // 2)
    pipeline = view_pipeline("inpainting", ViewOptions(image_size=32))        # CIFAR: 1 pixel of a 16-pixel square
    assert pipeline.objective == {"overlap": 1} and pipeline.transforms[0].overlap == 1
    assert view_pipeline("inpainting", ViewOptions(image_size=128)).objective == {"overlap": 4}   # the paper's


def test_an_objective_flag_cannot_contradict_the_overlap_the_views_set():
    from selfsup.errors import SelfsupError
    from selfsup.recipes import two_view as recipe

    def overrides(*flags):
        args = recipe.build_parser().parse_args(["--method", "inpainting", *flags])
        return recipe.method_overrides(recipe.settings_from(recipe.TwoViewRun, args))

    assert overrides()["overlap"] == 1
    assert overrides("--objective", "overlap=1", "overlap_weight=5.0")["overlap_weight"] == 5.0   # agreeing: fine
    with pytest.raises(SelfsupError, match="views set overlap to 1"):
        overrides("--objective", "overlap=3")


def test_the_overlap_border_weighs_ten_times_in_the_squared_error_against_a_plain_reference():
    """The paper's ``wtl2Matrix``: 10 x the weight on the border of ``overlap`` pixels, 1 inside, then the mean."""
    torch.manual_seed(0)
    obj = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16, overlap=2, adversarial_weight=0.0).double()
    g = torch.Generator().manual_seed(4)
    view = {"pixel_values": torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)}
    target = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    out = obj({"views": [view], "pretext_targets": target})
    prediction = obj.pretext_predictions({"views": [view], "pretext_targets": target})
    weights = torch.ones(8, 8, dtype=torch.float64)
    for i in range(8):
        for j in range(8):
            if min(i, j) < 2 or max(i, j) >= 6:
                weights[i, j] = 10.0
    assert int((weights == 10).sum()) == 64 - 16
    want = 0.999 * sum(((prediction[b] - target[b]) ** 2 * weights).mean() for b in range(3))
    assert torch.allclose(out.loss, want, rtol=1e-9)
    plain = 0.999 * ((prediction - target) ** 2).flatten(1).mean(1).sum()
    assert not torch.allclose(out.loss, plain, rtol=1e-3)                          # the weights do something
    assert torch.allclose(out.metrics["reconstruction_mse"] * 3 * 0.999, plain)     # the metric: unweighted
    with pytest.raises(ValueError, match="no hidden centre"):
        two_view("inpainting", "resnet_tiny", size="tiny", image_size=16, overlap=4)(
            {"views": [view], "pretext_targets": target})


def test_the_picture_rows_are_masked_inpainted_original_in_0_1():
    pipeline = view_pipeline("inpainting", ViewOptions(image_size=16))
    data = ViewDataset([{"image": noise_image(16, s)} for s in range(3)], pipeline.transforms, seed=0)
    batch = collate_views([data[i] for i in range(3)])
    masked, targets = batch["views"][0]["pixel_values"], batch["pretext_targets"]
    predictions = torch.full_like(targets, 0.5)
    rows = pipeline.render(batch, predictions)
    assert len(rows) == 3 and all(r.shape == (3, 3, 16, 16) and r.min() >= 0 and r.max() <= 1 for r in rows)
    whole = masked.clone()
    whole[..., 4:12, 4:12] = targets
    assert torch.allclose(rows[0], denormalize(masked)) and torch.allclose(rows[2], denormalize(whole))
    assert torch.allclose(rows[1][..., 4:12, 4:12], denormalize(predictions))
    assert torch.allclose(rows[1][..., :4, :], rows[2][..., :4, :])


def reference_terms(obj, view, target):
    """The plain context-encoder terms, summed over the images: 0.999 x per-image mean squared error, -log D(G(x)),
    and D's -log D(real) - log(1 - D(G(x)))."""
    out, _ = obj.encoder()(view)
    tokens = out.last_hidden_state                                 # (B, g·g, D), no class token on a ResNet
    b, n, d = tokens.shape
    g = int(round(n ** 0.5))
    prediction = obj.decoder(tokens.transpose(1, 2).reshape(b, d, g, g))
    assert prediction.shape == target.shape
    squared = ((prediction - target) ** 2).sum(dim=(1, 2, 3)) / target[0].numel()
    rec = 0.999 * squared.sum()
    disc = obj.discriminator
    p_fake, p_real = torch.sigmoid(disc(prediction)), torch.sigmoid(disc(target))
    adv = -torch.log(p_fake).sum()
    d_loss = (-torch.log(p_real) - torch.log(1 - p_fake)).sum()
    return rec, adv, d_loss


def test_the_loss_is_l2_plus_the_adversarial_terms_against_a_plain_reference():
    torch.manual_seed(0)
    obj = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16).double()
    g = torch.Generator().manual_seed(1)
    view = {"pixel_values": torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)}
    target = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    out = obj({"views": [view], "pretext_targets": target})
    rec, adv, d_loss = reference_terms(obj, view, target)
    assert out.num_targets == 5                                    # images
    m = out.metrics
    assert torch.allclose(0.999 * m["reconstruction_mse"].double() * 5, rec, rtol=1e-5)           # the L2 part
    assert torch.allclose(m["adversarial_loss"].double() * 5, adv, rtol=1e-5)                     # the adversarial
    assert torch.allclose(m["discriminator_loss"].double() * 5, d_loss, rtol=1e-5)                # D's
    assert torch.allclose(out.loss.double(), rec + 0.001 * adv + d_loss, rtol=1e-5)
    assert not torch.allclose(out.loss.double(), rec + d_loss, rtol=1e-5)
    # adversarial_weight 0: no discriminator, the L2 alone
    plain = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16, adversarial_weight=0.0).double()
    assert plain.discriminator is None and not any(k.startswith("discriminator") for k in plain.state_dict())
    plain.load_state_dict(obj.state_dict(), strict=False)
    alone = plain({"views": [view], "pretext_targets": target})
    assert torch.allclose(alone.loss.double(), rec, rtol=1e-5) and set(alone.metrics) == {"reconstruction_mse"}
    with pytest.raises(ValueError, match="pretext_targets"):
        obj({"views": [view]})
    assert obj.pretext_predictions({"views": [view], "pretext_targets": target}).shape == target.shape
    vit = two_view("inpainting", "vit", size="tiny", image_size=16)      # a ViT: its patch grid, not the class token
    images = {"views": [{"pixel_values": torch.randn(2, 3, 16, 16)}]}
    assert vit.pretext_predictions(images).shape == (2, 3, 8, 8) and vit.config.upsamples == 1


def test_one_backward_pass_keeps_the_generator_and_the_discriminator_apart():
    torch.manual_seed(0)
    obj = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16).double()
    g = torch.Generator().manual_seed(2)
    view = {"pixel_values": torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)}
    target = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    obj({"views": [view], "pretext_targets": target}).loss.backward()
    rec, adv, d_loss = reference_terms(obj, view, target)
    d_params = list(obj.discriminator.parameters())
    g_params = [p for n, p in obj.named_parameters() if not n.startswith("discriminator")]
    want_d = torch.autograd.grad(d_loss, d_params, retain_graph=True)                     # D: its own loss only
    want_g = torch.autograd.grad(rec + 0.001 * adv, g_params, retain_graph=True, allow_unused=True)
    for p, w in zip(d_params, want_d):
        assert torch.allclose(p.grad, w, rtol=1e-5, atol=1e-10)
    for p, w in zip(g_params, want_g):
        assert torch.allclose(p.grad, w, rtol=1e-5, atol=1e-10)
    # the generator's adversarial term does reach the decoder (it is not dropped)
    last = obj.decoder[-1].weight
    (only_rec,) = torch.autograd.grad(rec, [last], retain_graph=True)
    assert not torch.allclose(last.grad, only_rec, rtol=1e-9, atol=0)


def test_the_discriminator_learns_at_a_tenth_of_the_rate_through_the_schedule(tmp_path):
    """The paper's discriminator learns ten times slower: its parameters are the optimizer's groups at 0.1 x the
    rate, the generator's at the rate, and the schedule (warmup, cosine) keeps the ratio at every step."""
    from selfsup.train import TrainingSettings, lr_lambda, make_optimizer

    obj = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16)
    settings = TrainingSettings(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05, optimizer="adamw")
    optimizer = make_optimizer(obj, settings, torch.device("cpu"))
    d = {id(p) for p in obj.discriminator.parameters()}
    rates = {id(p): round(group["lr"], 12) for group in optimizer.param_groups for p in group["params"]}
    assert len(rates) == len([p for p in obj.parameters() if p.requires_grad])
    assert {rates[i] for i in d} == {1e-4}
    assert {r for i, r in rates.items() if i not in d} == {1e-3}
    decays = {(round(group["lr"], 12), group["weight_decay"]) for group in optimizer.param_groups if group["params"]}
    assert decays == {(1e-3, 0.05), (1e-3, 0.0), (1e-4, 0.05), (1e-4, 0.0)}
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda("cosine", 2, 10, 0.0))
    for _ in range(5):
        optimizer.step()
        schedule.step()
        by_group = [group["lr"] for group in optimizer.param_groups if group["params"]]
        assert max(by_group) == pytest.approx(10 * min(by_group)) and max(by_group) > 0
    plain = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16, adversarial_weight=0.0)
    assert plain.learning_rate_scales() == {}
    assert len(make_optimizer(plain, settings, torch.device("cpu")).param_groups) == 2
    same = two_view("inpainting", "resnet_tiny", size="tiny", image_size=16, discriminator_lr_scale=1.0)
    assert {g["lr"] for g in make_optimizer(same, settings, torch.device("cpu")).param_groups} == {1e-3}


@pytest.mark.long
def test_the_image_recipe_trains_inpainting_draws_the_picture_and_resume_restores_the_discriminator(tmp_path,
                                                                                                       capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "inpainting" in capsys.readouterr().out
    argv = two_view_argv("inpainting")
    metrics = recipe.main(argv(tmp_path / "run", "--eval_steps", "2", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    png = Image.open(tmp_path / "run" / "pretext.png")
    assert png.mode == "RGB" and png.size[1] > 0 and png.size[0] > png.size[1] / 3   # 3 rows of pictures
    straight, resumed, early = straight_and_resumed(recipe.main, argv, tmp_path / "resume", steps=4, at=2)
    keys = [k for k in straight if "discriminator" in k]
    assert keys
    for k in keys:
        assert torch.equal(straight[k], resumed[k])
    assert any(not torch.equal(straight[k], early[k]) for k in keys)   # D trained between the checkpoints


def test_the_presets_take_the_papers_adam():
    from selfsup.objectives.two_view.presets import method_presets
    from selfsup.recipes import two_view as recipe
    from selfsup.train import TrainingSettings

    gpu = method_presets("inpainting")["gpu"]
    assert (gpu["optimizer"], gpu["learning_rate"], gpu["adam_beta1"], gpu["batch_size"]) == ("adamw", 2e-4, 0.5, 64)
    assert method_presets("inpainting")["cpu"]["transform"] == "inpainting"
    args = recipe.build_parser().parse_args(["--method", "inpainting", "--preset", "gpu"])
    run = recipe.TwoViewRun(method="inpainting", preset="gpu")
    settings = recipe.preset_training(TrainingSettings.from_args(args), run, 50_000, 1)
    assert settings.adam_beta1 == 0.5 and settings.learning_rate == 2e-4 and settings.weight_decay == 0.0
    simclr = recipe.preset_training(TrainingSettings.from_args(recipe.build_parser().parse_args([])),
                                    recipe.TwoViewRun(), 50_000, 1)
    assert simclr.adam_beta1 == 0.9                                          # a preset without one: the default
    plain = recipe.settings_from(recipe.TwoViewRun, recipe.build_parser().parse_args(
        ["--method", "inpainting", "--adversarial_weight", "0"]))
    assert recipe.method_overrides(plain)["adversarial_weight"] == 0.0
    given = recipe.build_parser().parse_args(["--method", "inpainting", "--adam_beta1", "0.7"])
    assert recipe.preset_training(TrainingSettings.from_args(given), recipe.TwoViewRun(method="inpainting"),
                                  50_000, 1).adam_beta1 == 0.7
