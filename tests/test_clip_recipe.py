"""recipes/clip.py end to end on tiny models: CLIP on a ViT and SigLIP on a ResNet (exports, the transformers
pipeline against our predictions, zero-shot beside random init), exact resume with the logit scale and bias, bad
input, and a CIFAR-10 run when the shared data is there."""
import json

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.recipes import clip as recipe
from tests.conftest import straight_and_resumed


def argv(out, *extra, steps=4):
    return ["--output_dir", str(out), "--model_size", "tiny", "--max_steps", str(steps), "--report_to", "none",
            "--per_device_train_batch_size", "8", "--max_train_samples", "120", "--vocab_size", "700",
            "--zero_shot_samples", "24", "--pipeline_check_images", "4", *extra]


def check_run(out, metrics, model_type):
    for key in ("train_loss", "logit_scale", "zero_shot/accuracy", "zero_shot/top5_accuracy",
                "zero_shot/random_init_accuracy", "export/max_abs_logit_diff", "export/loss_diff"):
        assert key in metrics, key
    assert metrics["export/pipeline_agreement"] == 1.0 and metrics["export/pipeline_images"] == 4
    assert max(metrics["export/max_abs_logit_diff"], metrics["export/loss_diff"]) < 1e-4
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    assert json.loads((out / "export" / "config.json").read_text())["model_type"] == model_type
    assert (out / "export" / "processor_config.json").is_file() and (out / "export" / "README.md").is_file()
    assert (out / "zero_shot_confusion.png").is_file()


def test_clip_vit_on_the_builtin_digits(tmp_path, capsys):
    metrics = recipe.main(argv(tmp_path / "run"))
    check_run(tmp_path / "run", metrics, "clip")
    printed = capsys.readouterr().out
    assert "built-in digits" in printed and "templates" in printed and "random init" in printed


def test_siglip_resnet_exports_selfsup_class_and_the_pipeline_agrees(tmp_path):
    metrics = recipe.main(argv(tmp_path / "run", "--loss", "siglip", "--backbone", "resnet_tiny", "--local_loss"))
    check_run(tmp_path / "run", metrics, "selfsup_siglip")
    assert "logit_bias" in metrics


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_resume_restores_the_logit_scale_and_bias_with_everything_else(tmp_path, loss):
    run = lambda out, *extra, steps=6: argv(out, "--loss", loss, "--zero_shot_samples", "8", *extra, steps=steps)  # noqa: E731
    straight, resumed, early = straight_and_resumed(recipe.main, run, tmp_path)
    assert set(straight) == set(resumed) and "logit_scale" in straight
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert not torch.equal(straight["logit_scale"], early["logit_scale"])   # it trains, so resume had to restore it
    if loss == "siglip":
        assert not torch.equal(straight["logit_bias"], early["logit_bias"])


def test_bad_input_stops_with_one_line_naming_the_row(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "a cat"}\n')
    with pytest.raises(SelfsupError, match=r"gone.png: image file not found"):
        recipe.main(argv(tmp_path / "run", "--train_dir", str(tmp_path / "d"), "--bad_input", "error"))
    with pytest.raises(SelfsupError, match="no usable image-text pairs"):
        recipe.main(argv(tmp_path / "run", "--train_dir", str(tmp_path / "d")))


def test_cifar10_pairs_from_class_names_and_zero_shot_on_the_test_set(tmp_path, shared_data):
    cifar = shared_data / "images" / "cifar10"
    metrics = recipe.main(argv(tmp_path / "run", "--train_file", str(cifar / "train.parquet"), "--zero_shot_dir",
                               str(cifar), "--max_train_samples", "64", "--pipeline_check_images", "8"))
    assert metrics["zero_shot/num_images"] == 24 and metrics["export/pipeline_agreement"] == 1.0


@pytest.mark.long
def test_two_fresh_runs_train_the_same_model_and_tokenizer(tmp_path):
    """Fresh processes with other hash seeds, sharing the cores: bitwise the same weights and tokenizer (fp32)."""
    from tests.test_reproducible import digest, finish, start

    flags = ["--model_size", "tiny", "--report_to", "none", "--per_device_train_batch_size", "8", "--max_train_samples",
             "80", "--vocab_size", "700", "--zero_shot_samples", "8", "--pipeline_check_images", "0",
             "--mixed_precision", "no"]
    a, b = tmp_path / "a", tmp_path / "b"
    for proc in [start("clip", flags, a, "1"), start("clip", flags, b, "2")]:
        finish(proc)
    from safetensors.torch import load_file

    wa, wb = (load_file(d / "checkpoint-2" / "model.safetensors") for d in (a, b))
    assert set(wa) == set(wb) and len(wa) > 10 and "logit_scale" in wa
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    assert digest(a / "tokenizer" / "tokenizer.json") == digest(b / "tokenizer" / "tokenizer.json")


def test_init_from_an_export_continues_from_its_weights_and_tokenizer(tmp_path):
    recipe.main(argv(tmp_path / "first", steps=2))
    metrics = recipe.main(argv(tmp_path / "second", "--init_from", str(tmp_path / "first" / "export"), steps=2))
    assert metrics["export/pipeline_agreement"] == 1.0
    first = json.loads((tmp_path / "first" / "export" / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((tmp_path / "second" / "export" / "tokenizer.json").read_text())["model"]["vocab"] == first
