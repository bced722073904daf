"""The pipelines table: every preset names a pipeline that exists and builds, and what the views imply for the
objective reaches its config without the recipe naming the method."""
import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.modalities.view_pipelines import PIPELINES, ViewOptions, view_pipeline
from selfsup.objectives.two_view.presets import CPU_SETTINGS, GPU_SETTINGS, IMAGENET_SETTINGS
from selfsup.recipes import two_view

IMAGE = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_every_pipeline_makes_image_tensors(name):
    pipeline = view_pipeline(name, ViewOptions(image_size=24, num_local_views=2))
    torch.manual_seed(0)
    out = [t(IMAGE) for t in pipeline.transforms]
    views = out[0]["views"] if isinstance(out[0], dict) else out
    assert len(views) >= min(2, len(pipeline.transforms)) and all(isinstance(v, torch.Tensor) and v.shape[0] == 3 for v in views)


def test_every_preset_names_a_pipeline():
    for preset in (CPU_SETTINGS, GPU_SETTINGS, IMAGENET_SETTINGS):
        for method, settings in preset.items():
            assert settings.get("transform", "simclr") in PIPELINES, method


def test_views_set_the_objective_config_and_unknown_names_stop():
    run = two_view.TwoViewRun(method="rotation", rotations="0_180")
    assert two_view.method_overrides(run)["num_classes"] == 2
    assert two_view.pipeline_for(run).shared_draws
    run = two_view.TwoViewRun(method="jigsaw", jigsaw_permutations=30)
    assert two_view.method_overrides(run)["num_permutations"] == 30
    assert "num_classes" not in two_view.method_overrides(two_view.TwoViewRun(method="simclr"))
    with pytest.raises(ValueError, match="unknown view pipeline 'nope'; choose from"):
        view_pipeline("nope", ViewOptions())
