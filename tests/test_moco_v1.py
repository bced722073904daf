"""MoCo v1 (He et al., 2020): the MoCo class with a linear head, v1's temperature and v1's augmentation (no blur,
jitter always) — the baseline MoCo v2's ablation starts from. Its loss is Algorithm 1's InfoNCE against the queue,
and the image recipe trains it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from selfsup.modalities.image_views import moco_v1_transform
from selfsup.objectives import registry
from selfsup.recipes.builders.two_view import two_view
from tests.test_image_recipes import two_view_argv


def test_moco_v1_is_the_moco_class_with_a_linear_head_and_v1s_settings():
    v1 = two_view("moco_v1", "resnet_tiny", size="base", image_size=16)
    v2_ = two_view("moco_v2", "resnet_tiny", size="base", image_size=16)
    assert type(v1) is type(v2_) and registry.get("moco_v1").family == "two_view"
    linear = [m for m in v1.projector.modules() if isinstance(m, nn.Linear)]
    assert len(linear) == 1 and linear[0].out_features == 128            # one linear layer: v1's head
    assert len([m for m in v2_.projector.modules() if isinstance(m, nn.Linear)]) == 2   # v2's MLP
    assert v1.config.temperature == 0.07 and v1.config.queue_size == 65536 and v1.config.momentum == 0.999
    assert v1.teacher["projector"][0].weight.shape == linear[0].weight.shape


def test_v1s_augmentation_has_no_blur_and_always_jitters():
    t = moco_v1_transform(32)
    kinds = [type(s).__name__ for s in t.transforms]
    assert "GaussianBlur" not in str(t) and "RandomResizedCrop" in kinds
    crop = next(s for s in t.transforms if isinstance(s, v2.RandomResizedCrop))
    assert crop.scale == (0.2, 1.0)
    jitter = [s for s in t.transforms if isinstance(s, v2.RandomApply)]
    assert jitter and jitter[0].p == 1.0 and isinstance(jitter[0].transforms[0], v2.ColorJitter)
    assert jitter[0].transforms[0].hue == (-0.4, 0.4)


def test_the_loss_is_algorithm_1s_infonce_against_the_queue():
    torch.manual_seed(0)
    obj = two_view("moco_v1", "resnet_tiny", size="tiny", image_size=16).double().eval()
    obj.config.symmetric = False
    g = torch.Generator().manual_seed(2)
    views = [{"pixel_values": torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)} for _ in range(2)]
    queue = obj.queue.clone()
    out = obj({"views": views})
    enc, tenc = obj.encoder(), obj.teacher
    q = F.normalize(obj.projector(enc.features(views[0])), dim=1)
    with torch.no_grad():
        k = F.normalize(tenc["projector"](
            tenc["backbone"](tenc["adapter"](views[1]).x).last_hidden_state.mean(1)), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / 0.07
    ref = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
    assert torch.allclose(out.loss.double(), ref, atol=1e-6)


@pytest.mark.long
def test_the_image_recipe_trains_moco_v1(tmp_path):
    from selfsup.recipes import two_view as recipe

    metrics = recipe.main(two_view_argv("moco_v1")(tmp_path / "run", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
