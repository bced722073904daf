"""Every image method's ``gpu`` preset (the paper's settings, on lightly's CIFAR-10 ResNet-18 where the paper has no
CIFAR-10 run) builds and trains: one step of the two-view recipe with the preset's backbone, model size, image size,
optimizer and view pipeline, on the built-in images, the batch cut to 8 and the rate with it (linearly: the preset's
rate at batch 512 diverges at 8 for Barlow Twins); the flags fill what the preset leaves. Slow (a ResNet-18 per
method): ``python -m pytest -m slow tests/test_gpu_presets.py``."""
from __future__ import annotations

import numpy as np
import pytest

from selfsup.objectives.two_view.presets import image_methods, preset_table
from tests.test_image_recipes import EVAL

GPU = preset_table("gpu")


def test_every_image_method_has_a_gpu_preset():
    assert sorted(GPU) == sorted(image_methods()) and len(GPU) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(GPU))
def test_the_gpu_preset_trains_a_step(method, tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    preset = GPU[method]
    rate = preset["learning_rate"] * 8 / preset["batch_size"]
    metrics = recipe.main(["--method", method, "--preset", "gpu", "--output_dir", str(tmp_path / "run"),
                           "--max_steps", "1", "--per_device_train_batch_size", "8", "--learning_rate", str(rate),
                           "--report_to", "none", "--mixed_precision", "no", *EVAL])
    assert metrics["steps"] == 1 and np.isfinite(metrics["train_loss"]), metrics
    said = capsys.readouterr().out        # "<method> on <backbone>: <views> of <size>px ... <optimizer> lr <rate>"
    assert f"{method} on {preset['backbone']}:" in said and f"of {preset['image_size']}px" in said
    assert f"{preset['optimizer']} lr {rate:.3g}" in said
