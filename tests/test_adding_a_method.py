"""The house: a method added as one module (``tests/added_method.py``: class, config, head sizes, presets) and one
registry line trains through ``recipes/two_view.py --method`` and is listed by its ``--help``, with no other file
edited. Were a method's presets or sizes still kept in central tables, the method would not be listed, would find no
preset, or would be built with its config's defaults instead of its sizes, and this test would fail."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.objectives import registry
from tests import added_method
from tests.conftest import ROOT
from tests.test_image_recipes import two_view_argv

NAME = "align_uniform"
LINE = registry.Method(NAME, "two_view", "tests.added_method", "AlignUniform", "AlignUniformConfig",
                       "alignment and uniformity on the hypersphere (Wang & Isola, 2020)", presets="image")


@pytest.fixture
def registered(monkeypatch):
    """The one registry line, as it would stand in ``objectives/registry.py``'s ``METHODS``."""
    monkeypatch.setitem(registry.METHODS, NAME, LINE)


def test_no_file_of_the_package_names_the_added_method():
    named = [str(path.relative_to(ROOT)) for folder in ("selfsup", "objectives", "modalities", "backbones", "recipes")
             for path in (ROOT / folder).rglob("*.py") if NAME in path.read_text(encoding="utf-8")]
    assert named == []


@pytest.mark.long
def test_the_added_method_trains_through_the_image_recipe_and_is_listed(registered, monkeypatch, tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())                      # argparse wraps the help
    assert f"{NAME} = alignment and uniformity on the hypersphere" in shown
    assert NAME in recipe.build_parser()._option_string_actions["--method"].choices
    with pytest.raises(SelfsupError, match=rf"--preset imagenet has no settings for {NAME}; choose from \['cpu', 'gpu'\]"):
        recipe.TwoViewRun(method=NAME, preset="imagenet")

    seen = {}
    trainer = recipe.Trainer

    def spy(objective, loader, settings, *args, **kwargs):
        seen.update(objective=objective, settings=settings)
        return trainer(objective, loader, settings, *args, **kwargs)

    monkeypatch.setattr(recipe, "Trainer", spy)
    metrics = recipe.main(two_view_argv(NAME)(tmp_path / "run", steps=3))
    assert metrics["steps"] == 3 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    objective, settings = seen["objective"], seen["settings"]
    assert isinstance(objective, added_method.AlignUniform)
    tiny = added_method.SIZES[NAME]["tiny"]                                  # its sizes, from its module
    assert (objective.config.hidden_dim, objective.config.out_dim) == (tiny["hidden_dim"], tiny["out_dim"]) == (16, 8)
    cpu = added_method.PRESETS[NAME]["cpu"]                                  # its preset, from its module
    assert settings.learning_rate == cpu["learning_rate"] == 0.02
    assert objective.config.uniformity_weight == cpu["objective"]["uniformity_weight"] == 0.5


def test_the_added_method_loss_against_a_plain_reference(registered):
    from selfsup.recipes.builders.two_view import two_view

    torch.manual_seed(0)
    obj = two_view(NAME, "resnet_tiny", "tiny", image_size=16).eval()
    views = [{"pixel_values": torch.randn(6, 3, 16, 16)} for _ in range(2)]
    z1, z2 = (torch.nn.functional.normalize(obj.projector(obj.encoder().features(v)), dim=-1) for v in views)
    uniform = [torch.log(torch.stack([torch.exp(-2 * (z[i] - z[j]).pow(2).sum()) for i in range(6) for j in range(6)
                                      if i < j]).mean()) for z in (z1, z2)]
    reference = ((z1 - z2).pow(2).sum(-1).mean() + (uniform[0] + uniform[1]) / 2).item()
    assert obj({"views": views}).loss.item() == pytest.approx(reference, abs=1e-5)


@pytest.mark.long
def test_help_lists_the_methods_without_importing_their_modules():
    """``--help`` reads the registry's lines only: no method's module is imported (a fresh interpreter)."""
    import os
    import subprocess
    import sys

    code = ("import contextlib, io, sys\nfrom selfsup.objectives import registry\nfrom selfsup.recipes import two_view\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    try:\n        two_view.main(['--help'])\n"
            "    except SystemExit:\n        pass\n"
            "print(sorted(m.name for m in registry.METHODS.values() if m.module_path in sys.modules))\n"
            "print(all(m in out.getvalue() for m in two_view.methods()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:2] == ["[]", "True"]
