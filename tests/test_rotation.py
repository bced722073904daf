"""Rotation prediction (RotNet): a rotated image's label is its rotation, the loss is the cross-entropy of the view
index, and the image recipe trains it (``--method rotation --rotations ...``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.modalities.image_views import ROTATION_SETS, ViewDataset, rotation_transforms
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def noise_image(size: int = 20, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["4", "8", "0_180", "90_270"])
def test_a_rotated_images_label_is_its_rotation(name):
    angles = ROTATION_SETS[name]
    views = ViewDataset([{"image": noise_image()}], rotation_transforms(16, angles, mean=(0,) * 3, std=(1,) * 3),
                        seed=3, shared_draws=True)[0]["views"]
    assert len(views) == len(angles)
    upright = torch.rot90(views[0], -(angles[0] // 90), dims=(-2, -1))   # the crop before any rotation
    for view, angle in zip(views, angles):
        if angle % 90 == 0:   # view k is the same crop turned counter-clockwise by its angle, exactly
            assert torch.equal(view, torch.rot90(upright, angle // 90, dims=(-2, -1))), angle
        else:                 # 45°: the centre pixel stays, the corners are filled
            assert view.shape == upright.shape and float(view[:, 0, 0].abs().sum()) == 0.0
    # the counter-clockwise convention: the top-right corner goes to the top-left under 90°
    if 90 in angles:
        turned = views[angles.index(90)]
        assert torch.equal(turned[:, 0, 0], upright[:, 0, -1])
    if name == "4":   # without shared draws each rotation gets its own crop: the label is no longer all that differs
        own = ViewDataset([{"image": noise_image()}], rotation_transforms(16, angles, mean=(0,) * 3, std=(1,) * 3),
                          seed=3)[0]["views"]
        assert any(not torch.equal(own[k], torch.rot90(own[0], k, dims=(-2, -1))) for k in range(1, 4))


def test_the_loss_is_the_cross_entropy_of_each_views_rotation_index():
    torch.manual_seed(0)
    obj = two_view("rotation", "resnet_tiny", size="tiny", image_size=16, num_classes=4).double().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)
    views = [{"pixel_values": torch.rot90(images, k, dims=(-2, -1))} for k in range(4)]
    out = obj({"views": views})
    assert out.num_targets == 20
    encoder = obj.encoder()
    ref = torch.stack([F.cross_entropy(obj.classifier(encoder.features(v)), torch.full((5,), k), reduction="sum")
                       for k, v in enumerate(views)]).sum()
    assert torch.allclose(out.loss.double(), ref, atol=1e-6, rtol=1e-6)
    shuffled = obj({"views": [views[1], views[0], views[2], views[3]]})
    assert not torch.allclose(shuffled.loss.double(), ref, atol=1e-3)     # the label is the view's place
    with pytest.raises(ValueError, match="needs 4 views, got 2"):
        obj({"views": views[:2]})


@pytest.mark.long
def test_the_image_recipe_trains_rotation_and_lists_it(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "rotation" in capsys.readouterr().out
    metrics = recipe.main(two_view_argv("rotation")(tmp_path / "run", "--rotations", "0_180", steps=3))
    assert metrics["steps"] == 3 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    assert "knn/accuracy" in metrics and "knn/random_init_accuracy" in metrics
