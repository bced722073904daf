"""recipes/mae.py and recipes/two_view.py end to end on the built-in digits: pictures, probes, exports that
transformers' pipeline runs, --init_from, and resume that restores queues, centres, teachers and prototypes."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from selfsup.errors import SelfsupError
from selfsup.modalities.view_pipelines import ViewOptions, local_view_size
from selfsup.recipes import mae, two_view
from tests.conftest import straight_and_resumed

EVAL = ["--eval_train_samples", "120", "--eval_test_samples", "40", "--random_init_seeds", "1"]


def mae_argv(out, *extra, steps: int = 3):
    return ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "16", "--mixed_precision", "no", *EVAL, *extra]


def two_view_argv(method):
    def argv(out, *extra, steps: int = 3):
        return ["--method", method, "--output_dir", str(out), "--model_size", "tiny", "--backbone", "resnet_tiny",
                "--image_size", "16", "--max_steps", str(steps), "--report_to", "none",
                "--per_device_train_batch_size", "8", "--mixed_precision", "no", *EVAL, *extra]
    return argv


def features_by_pipeline(export_dir, image, **kw):
    from transformers import pipeline

    extract = pipeline("image-feature-extraction", model=str(export_dir), **kw)
    return torch.tensor(np.asarray(extract(image, return_tensors=False)), dtype=torch.float32).reshape(-1)


@pytest.mark.long
def test_mae_run_writes_pictures_probes_and_an_export_the_pipeline_runs(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import AutoImageProcessor, AutoModelForPreTraining

    out = tmp_path / "run"
    metrics = mae.main(mae_argv(out, "--report_to", "tensorboard", "--eval_steps", "2", steps=3))
    assert metrics["steps"] == 3 and metrics["export/max_abs_hidden_diff"] < 1e-4
    assert {"knn/accuracy", "knn/random_init_accuracy", "probe/accuracy", "eval/mae_loss"} <= set(metrics)
    png = Image.open(out / "reconstruction.png")
    assert png.mode == "RGB" and png.size[0] > png.size[1] > 0
    events = EventAccumulator(str(next(out.rglob("events.out.tfevents*")).parent), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("images/reconstruction")] == [2, 3]
    export = out / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "vit"
    assert AutoModelForPreTraining.from_pretrained(str(export / "pretraining")).config.model_type == "vit_mae"
    image = Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype("uint8"))
    pixels = AutoImageProcessor.from_pretrained(str(export))(image, return_tensors="pt")["pixel_values"]
    objective = mae.mae_from_transformers(str(export))
    with torch.no_grad():
        ours = objective.encoder()({"pixel_values": pixels})[0].last_hidden_state.reshape(-1)
    torch.testing.assert_close(features_by_pipeline(export, image), ours, atol=1e-4, rtol=1e-4)


@pytest.mark.long
def test_mae_resume_is_the_straight_run(tmp_path):
    final, resumed, middle = straight_and_resumed(mae.main, mae_argv, tmp_path, steps=4, at=2)
    for k in final:
        assert torch.equal(final[k], resumed[k]), k
    assert any(not torch.equal(final[k], middle[k]) for k in final)


@pytest.mark.long
def test_mae_init_from_the_export(tmp_path):
    first = tmp_path / "first"
    mae.main(mae_argv(first, steps=2))
    more = tmp_path / "more"
    mae.main(mae_argv(more, "--init_from", str(first / "export"), "--learning_rate", "0", "--checkpointing_steps",
                      "1", steps=1))
    exported = load_file(first / "export" / "pretraining" / "model.safetensors")
    started = load_file(more / "checkpoint-1" / "model.safetensors")
    assert torch.equal(started["decoder_pred.weight"], exported["decoder.decoder_pred.weight"])


# what each method must carry across a resume (names in the checkpoint's model.safetensors)
STATE = {"moco_v2": ("queue", "teacher."), "byol": ("teacher.",), "dino": ("center", "teacher."),
         "swav": ("prototypes",)}


@pytest.mark.long
@pytest.mark.parametrize("method", sorted(STATE))
def test_two_view_resume_restores_the_methods_state(tmp_path, method):
    base = two_view_argv(method)

    def argv(out, *extra, steps):        # the kNN only: the linear probe's search is not what this test is about
        return base(out, "--no_linear_probe", *extra, steps=steps)

    final, resumed, middle = straight_and_resumed(two_view.main, argv, tmp_path, steps=4, at=2)
    for k in final:
        assert torch.equal(final[k], resumed[k]), k
    for part in STATE[method]:
        names = [k for k in final if part in k]
        assert names, f"no {part} in the checkpoint"
        assert any(not torch.equal(final[k], middle[k]) for k in names), f"{part} did not change after step 2"


@pytest.mark.long
def test_two_view_exports_the_cifar_stem_resnet_with_its_code(tmp_path):
    from PIL import Image

    out = tmp_path / "run"
    metrics = two_view.main(two_view_argv("simclr")(out, steps=2))
    assert metrics["export/max_abs_hidden_diff"] < 1e-4 and "knn/random_init_accuracy" in metrics
    export = out / "export"
    assert json.loads((export / "config.json").read_text())["model_type"] == "selfsup_resnet"
    assert (export / "modeling_selfsup_resnet.py").is_file() and (export / "preprocessor_config.json").is_file()
    image = Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype("uint8"))
    feats = features_by_pipeline(export, image, trust_remote_code=True)
    assert feats.numel() > 0 and torch.isfinite(feats).all()
    again = two_view.main(two_view_argv("simclr")(tmp_path / "more", "--init_from", str(export),
                                                  "--learning_rate", "0", steps=1))
    assert again["export/max_abs_hidden_diff"] < 1e-4


def test_two_view_on_a_vit_exports_a_vit_model(tmp_path):
    from PIL import Image

    out = tmp_path / "vit"
    argv = two_view_argv("moco_v3")(out, steps=2)
    argv[argv.index("resnet_tiny")] = "vit"
    metrics = two_view.main(argv)
    assert metrics["export/max_abs_hidden_diff"] < 1e-4
    assert json.loads((out / "export" / "config.json").read_text())["model_type"] == "vit"
    image = Image.fromarray((np.random.default_rng(2).random((16, 16, 3)) * 255).astype("uint8"))
    assert torch.isfinite(features_by_pipeline(out / "export", image)).all()


def test_dino_on_a_vit_trains_on_smaller_local_views(tmp_path):
    """Multi-crop on a ViT: 2 global views of 16 px and 2 local ones rounded to whole patches (8 px, 2x2 patches),
    which get interpolated positions; a --local_size that is not whole patches stops in one line."""
    argv = two_view_argv("dino")(tmp_path / "dino", "--num_local_views", "2", steps=2)
    argv[argv.index("resnet_tiny")] = "vit"
    assert local_view_size(ViewOptions(image_size=16, patch_size=4)) == 8
    metrics = two_view.main(argv)
    assert np.isfinite(metrics["train_loss"]) and metrics["export/max_abs_hidden_diff"] < 1e-4
    with pytest.raises(SelfsupError, match="not a multiple of the ViT's patch size 4"):
        two_view.main([*argv, "--local_size", "6"])


def preset_run(*flags, num_images: int, num_processes: int):
    """(the recipe's settings, the training settings, the preset) of a two-view command line."""
    from selfsup.config import settings_from
    from selfsup.train import TrainingSettings

    args = two_view.build_parser().parse_args(list(flags))
    run = settings_from(two_view.TwoViewRun, args)
    settings = two_view.preset_training(TrainingSettings.from_args(args), run, num_images, num_processes)
    assert args.method == flags[flags.index("--method") + 1], "the command line is left as it was parsed"
    return run, settings, run.preset_settings


def test_presets_fill_what_the_flags_leave():
    run, settings, preset = preset_run("--method", "barlow", "--learning_rate", "0.5", num_images=50_000,
                                       num_processes=2)
    assert run.method == "barlow_twins" and settings.learning_rate == 0.5        # a given flag wins
    assert settings.optimizer == preset["optimizer"] and run.backbone == preset["backbone"]
    assert settings.per_device_train_batch_size * 2 == preset["batch_size"]
    gpu, settings, preset = preset_run("--method", "simclr", "--preset", "gpu", num_images=50_000, num_processes=1)
    assert settings.max_steps == preset["epochs"] * (50_000 // preset["batch_size"]) and gpu.backbone == "resnet18"


def test_fewer_images_than_one_global_batch_stop_in_one_line(tmp_path):
    from selfsup.errors import SelfsupError

    with pytest.raises(SelfsupError, match="fewer than one global batch") as err:
        two_view.main(two_view_argv("simclr")(tmp_path / "run", "--max_train_samples", "5", steps=1))
    assert "\n" not in str(err.value)


@pytest.mark.long
def test_the_objective_flag_sets_any_config_field_of_the_method(tmp_path):
    from selfsup.recipes import two_view as recipe

    assert recipe.objective_settings(["head_norm=all", "temperature=0.3", "symmetric=True", "grid=(4, 4)"]) == {
        "head_norm": "all", "temperature": 0.3, "symmetric": True, "grid": (4, 4)}
    with pytest.raises(Exception, match="KEY=VALUE"):
        recipe.objective_settings(["head_norm"])
    argv = two_view_argv("instance_discrimination")
    with pytest.raises(Exception, match="head_norm 'bogus'"):           # the value reached the method's config
        recipe.main(argv(tmp_path / "a", "--objective", "head_norm=bogus", steps=1))
    with pytest.raises(Exception, match="no_such_field"):
        recipe.main(argv(tmp_path / "b", "--objective", "no_such_field=1", steps=1))
    metrics = recipe.main(argv(tmp_path / "c", "--objective", "head_norm=all", "temperature=0.3", steps=1))
    assert metrics["steps"] == 1


def test_probe_c_flag_takes_a_number_or_cv_and_stops_at_parse_time_otherwise(capsys):
    from selfsup.evaluate import PROBE_C_GRID
    from selfsup.recipes._image import ImageRun

    parser = two_view.build_parser()
    assert parser.parse_args([]).probe_c == "cv" and ImageRun().probe_regularisation == PROBE_C_GRID
    assert ImageRun(probe_c=parser.parse_args(["--probe_c", "0.05"]).probe_c).probe_regularisation == 0.05
    for bad in ("often", "-1", "0"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--probe_c", bad])
        assert "--probe_c" in capsys.readouterr().err


@pytest.mark.long
def test_the_probe_of_a_run_uses_the_c_the_flag_names(tmp_path, monkeypatch):
    from selfsup import evaluate
    from selfsup.evaluate import PROBE_C_GRID

    seen, probe = [], evaluate.probe_predictions

    def recording(*args, c=1.0, **kw):
        seen.append(c)
        return probe(*args, c=c, **kw)

    monkeypatch.setattr(evaluate, "probe_predictions", recording)
    two_view.main(two_view_argv("simclr")(tmp_path / "a", "--probe_c", "0.05", steps=1))
    assert seen == [0.05, 0.05]                     # the trained encoder and the random-init one
    seen.clear()
    two_view.main(two_view_argv("simclr")(tmp_path / "b", steps=1))
    assert seen == [PROBE_C_GRID, PROBE_C_GRID]
