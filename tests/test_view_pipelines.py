"""The pipelines table: every preset names a pipeline that exists and builds, and what the views imply for the
objective reaches its config without the recipe naming the method."""
import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.modalities.view_pipelines import PIPELINES, ViewOptions, view_pipeline
from selfsup.objectives.two_view.presets import NAMES, preset_table
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
    for name in NAMES:
        for method, settings in preset_table(name).items():
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


def test_a_pipeline_that_renders_gets_a_picture_of_the_objective_s_predictions(tmp_path):
    """The pretext picture: the same seeded images every evaluation, the pipeline's rows of the objective's
    predictions, written as one PNG of rows x images."""
    from selfsup.modalities.image_data import ImageEntry, ImageSet
    from selfsup.recipes._image import ImageRun, pretext_picture

    rng = np.random.default_rng(0)
    images = ImageSet([ImageEntry(f"img[{i}]", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), i % 2)
                       for i in range(10)])
    seen = []

    class Predicts(torch.nn.Module):
        def pretext_predictions(self, batch):
            seen.append(batch["views"][0]["pixel_values"].clone())
            return batch["views"][0]["pixel_values"] * 0 + 0.25

    def render(batch, predictions):
        return [batch["views"][0]["pixel_values"].clamp(0, 1), predictions]

    pipeline = view_pipeline("simclr", ViewOptions(image_size=16))
    fn = pretext_picture(render, pipeline.transforms, images, ImageRun(image_size=16, seed=3), torch.device("cpu"),
                         n=4, path=tmp_path / "pretext.png")
    first, second = fn(Predicts()), fn(Predicts())
    assert torch.equal(seen[0], seen[1]) and len(seen[0]) == 4          # the same views at every evaluation
    picture = first["images/pretext"]
    scale = 96 // 16
    assert picture.shape == (2 * (scale * 16 + 2) + 2, 4 * scale * 16 + 5 * 2, 3)
    assert (picture[2 + scale * 16 + 2 + 1, 3] == round(0.25 * 255)).all()   # row 2 is the predictions
    assert (tmp_path / "pretext.png").is_file() and np.array_equal(second["images/pretext"], picture)
