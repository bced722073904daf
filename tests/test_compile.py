"""``--torch_compile``: which modules are the backbones, and a recipe run with its backbone compiled trains the same
model as the eager run and exports the same keys.

The recipe run compiles with the ``aot_eager`` backend: dynamo's graph capture and AOT autograd's traced forward and
backward, run by eager kernels. ``inductor`` (the flag's default) compiles C++ kernels on a CPU, about half a minute
for a small MLP on this machine, too slow for a unit test; its figures are in docs/benchmarks.md."""
import pytest
import torch
from safetensors.torch import load_file

from selfsup.compiling import BACKENDS, backbones, compile_backbones
from selfsup.config import base_parser
from selfsup.recipes import mae
from selfsup.train import TrainingSettings


def test_the_backbones_are_found_once_each_teachers_and_towers_included():
    from selfsup.recipes.builders.image_text import clip
    from selfsup.recipes.builders.masked import mae as build_mae
    from selfsup.recipes.builders.two_view import two_view

    torch.manual_seed(0)
    m = build_mae("tiny", image=dict(image_size=16, patch_size=4))
    assert [(n, id(b)) for n, b in backbones(m)] == [("backbone", id(m.backbone))]
    byol = two_view("byol", "resnet18", size="small", image_size=16)
    assert [n for n, _ in backbones(byol)] == ["backbone", "teacher.backbone"]
    c = clip("tiny", "clip", "vit", 16, vocab_size=64)
    assert sorted(n for n, _ in backbones(c)) == ["image.backbone", "text.backbone"]
    with pytest.raises(ValueError, match="unknown torch.compile backend"):
        compile_backbones(m, "nvfuser")


def test_compiled_backbone_keeps_its_keys_and_computes_the_same():
    from selfsup.recipes.builders.masked import mae as build_mae

    torch.manual_seed(0)
    eager = build_mae("tiny", image=dict(image_size=16, patch_size=4))
    torch.manual_seed(0)
    compiled = build_mae("tiny", image=dict(image_size=16, patch_size=4))
    keys = list(compiled.state_dict())
    torch._dynamo.reset()
    assert compile_backbones(compiled, "aot_eager") == ["backbone"]
    assert list(compiled.state_dict()) == keys
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "noise": torch.rand(4, 16)}
    a, b = eager(batch).loss, compiled(batch).loss
    a.backward(), b.backward()
    assert float(b.detach()) == pytest.approx(float(a.detach()), rel=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert p.grad is None and q.grad is None or torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name


def test_the_flag_is_shared_and_reaches_the_trainer_settings():
    p = base_parser("x")
    args = p.parse_args(["--torch_compile", "--torch_compile_backend", "aot_eager"])
    settings = TrainingSettings.from_args(args)
    assert settings.torch_compile is True and settings.torch_compile_backend == "aot_eager"
    defaults = TrainingSettings.from_args(p.parse_args([]))
    assert defaults.torch_compile is False and defaults.torch_compile_backend == "inductor"
    choices = next(a.choices for a in p._actions if a.dest == "torch_compile_backend")
    assert tuple(choices) == BACKENDS


@pytest.mark.long
def test_a_recipe_run_with_the_compiled_backbone_trains_the_same_model(tmp_path, capsys):
    from torch._dynamo.utils import counters

    argv = ["--model_size", "tiny", "--max_steps", "3", "--report_to", "none", "--per_device_train_batch_size", "8",
            "--mixed_precision", "no", "--random_init_seeds", "1", "--eval_train_samples", "0"]
    eager = mae.main(["--output_dir", str(tmp_path / "eager"), *argv])
    torch._dynamo.reset()
    counters.clear()
    compiled = mae.main(["--output_dir", str(tmp_path / "compiled"), *argv, "--torch_compile",
                         "--torch_compile_backend", "aot_eager"])
    assert "torch.compile (aot_eager): backbone" in capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] > 0, "dynamo captured no graph"
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    for folder in ("export", "export/pretraining"):
        a = load_file(tmp_path / "eager" / folder / "model.safetensors")
        b = load_file(tmp_path / "compiled" / folder / "model.safetensors")
        assert list(a) == list(b), f"{folder}: the export's keys changed"
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"{folder}: {k}")
