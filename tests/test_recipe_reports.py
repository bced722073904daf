"""What recipes tell a person: each probe figure once in a speech run's metrics and summary, the built-in data
announced once, and an MAE picture that shows several classes of a class-sorted data set."""
import contextlib
import importlib
import itertools
from types import SimpleNamespace

import numpy as np
import torch
from tests.conftest import speech_argv

from selfsup.recipes import _image, _speech

w2v = importlib.import_module("selfsup.recipes.wav2vec2")
QUIET = SimpleNamespace(main_process_first=contextlib.nullcontext, print=print, is_main_process=True,
                        num_processes=1, process_index=0)


def distinct_figures(monkeypatch) -> None:
    """Every linear probe and kNN the speech probe runs returns its own number (a power of two, so means over
    splits stay distinct too): two keys holding one number hold one measurement."""
    calls = itertools.count(1)
    fake = lambda *a, **kw: 2.0 ** -next(calls)  # noqa: E731
    monkeypatch.setattr(_speech, "linear_probe", fake)
    monkeypatch.setattr(_speech, "knn_accuracy", fake)


def figures(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith(("probe/", "knn/")) and k != "probe/splits"}


def test_the_default_speech_run_reports_each_figure_once(tmp_path, monkeypatch, capsys):
    distinct_figures(monkeypatch)
    metrics = w2v.main(speech_argv(tmp_path / "run", "--gumbel_temperature_decay", "0.9", "--random_init_seeds", "1",
                                   steps=1))
    found = figures(metrics)
    assert sorted(found) == ["knn/accuracy", "knn/random_init_accuracy", "probe/accuracy",
                             "probe/all_layers/accuracy", "probe/all_layers/random_init_accuracy",
                             "probe/random_init_accuracy"]
    assert len(set(found.values())) == len(found), f"two keys hold the same measurement: {found}"
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if line.strip().startswith(("probe/", "knn/")) and "random init" in line]
    assert rows == ["knn/accuracy", "probe/accuracy", "probe/all_layers/accuracy"]   # one row per figure


def test_labelled_audio_figures_are_named_by_protocol_and_not_copied(tmp_path, monkeypatch):
    import soundfile

    from selfsup.recipes.builders.speech_quantised import wav2vec2

    rng = np.random.default_rng(0)
    for digit, speaker, take in itertools.product((0, 1), ("ann", "bob"), range(6)):
        soundfile.write(tmp_path / f"{digit}_{speaker}_{take}.wav", rng.normal(0, 0.1, 4000).astype("float32"), 16000)
    distinct_figures(monkeypatch)
    torch.manual_seed(0)
    trained, fresh = wav2vec2("tiny").encoder(), wav2vec2("tiny").encoder()
    run = _speech.SpeechRun(eval_dir=str(tmp_path), eval_split="official,loso", max_duration=1.0,
                            per_device_eval_batch_size=8)
    out = _speech.audio_probe({"": trained, "random_init_": [fresh]}, run, "cpu")
    found = figures(out)
    assert sorted(found) == sorted(f"{kind}/{protocol}/{layers}{who}accuracy" for protocol in ("official", "loso")
                                   for kind, layers in (("probe", ""), ("knn", ""), ("probe", "all_layers/"))
                                   for who in ("", "random_init_"))
    assert len(set(found.values())) == len(found), f"two keys hold the same measurement: {found}"
    assert out["probe/splits"] == 3   # official, and one per speaker


def said(text: str, capsys, caplog) -> int:
    """How many times ``text`` reached the person: printed, or logged (pytest keeps log records apart)."""
    printed = capsys.readouterr()
    return printed.out.count(text) + printed.err.count(text) + sum(text in r.getMessage() for r in caplog.records)


def test_clip_says_once_that_no_image_text_data_was_given(tmp_path, capsys, caplog):
    from selfsup.recipes import clip

    clip.main(["--output_dir", str(tmp_path / "run"), "--model_size", "tiny", "--max_steps", "1", "--report_to", "none",
               "--per_device_train_batch_size", "8", "--max_train_samples", "60", "--vocab_size", "600",
               "--zero_shot_samples", "12", "--pipeline_check_images", "2", "--random_init_seeds", "1"])
    assert said("no image-text data given", capsys, caplog) == 1


def test_the_image_recipes_say_once_that_no_image_data_was_given(capsys, caplog):
    images, source = _image.load_training_images(_image.ImageRun(max_train_samples=50), QUIET)
    assert source == "builtin:digits" and len(images) == 50
    assert said("no image data given", capsys, caplog) == 1


def class_sorted_folder(root, per_class: tuple[int, ...]):
    """``root/<class>/*.png``: ``per_class[c]`` solid 16 x 16 images of class c, one colour per class; loaded in
    class order."""
    from PIL import Image

    for c, count in enumerate(per_class):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (16, 16), (40 + 60 * c, 200 - 40 * c, 90)).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def test_max_train_samples_of_a_class_sorted_image_set_is_a_seeded_sample_of_every_class(tmp_path):
    """CIFAR-10's files are sorted by class: the first N training images would be one class."""
    class_sorted_folder(tmp_path / "train", per_class=(30, 30, 30))
    run = _image.ImageRun(train_dir=str(tmp_path / "train"), image_size=16, max_train_samples=12, seed=1)
    images, _ = _image.load_training_images(run, QUIET)
    labels = [images[i]["label"] for i in range(len(images))]
    assert len(images) == 12 and set(labels) == {0, 1, 2}
    again, _ = _image.load_training_images(run, QUIET)
    assert [e.name for e in again.entries] == [e.name for e in images.entries]


def test_picture_indices_go_round_the_classes_in_a_seeded_order():
    labels = [0] * 30 + [1] * 30 + [2] * 30           # sorted by class, as CIFAR-10's test set
    picked = _image.spread_over_classes(labels, 8, seed=3)
    assert len(picked) == len(set(picked)) == 8
    assert sorted(labels[i] for i in picked[:3]) == [0, 1, 2]    # one of each class, then round again
    assert picked == _image.spread_over_classes(labels, 8, seed=3) != _image.spread_over_classes(labels, 8, seed=4)
    assert sorted(_image.spread_over_classes(labels[:5], 8, seed=0)) == [0, 1, 2, 3, 4]   # fewer than asked: all
    unlabelled = _image.spread_over_classes([-1] * 40, 8, seed=0)
    assert len(set(unlabelled)) == 8 and unlabelled != list(range(8))   # a seeded random sample


def test_the_mae_picture_spans_the_classes_of_a_class_sorted_set(tmp_path, monkeypatch):
    """Labelled held-out images in class order (as CIFAR-10's test split in --eval_dir), one class far larger than
    the others: the reconstruction picture shows every class, not eight images of the first (nor, evenly spaced,
    mostly the large one)."""
    from selfsup.recipes import mae

    class_sorted_folder(tmp_path / "data" / "train", per_class=(20, 20, 20, 20))
    class_sorted_folder(tmp_path / "data" / "test", per_class=(40, 4, 4, 4))
    run = _image.ImageRun(train_dir=str(tmp_path / "data" / "train"), eval_dir=str(tmp_path / "data"), image_size=16)
    _, score, _ = _image.labelled_images(run, _image.load_training_images(run, QUIET)[0])
    assert set(score.labels[:8]) == {0}, "the held-out images are sorted by class: the first 8 are one class"
    shown = []
    real_grid = mae.reconstruction_grid
    monkeypatch.setattr(mae, "reconstruction_grid", lambda originals, *a, **kw: shown.append(originals.clone())
                        or real_grid(originals, *a, **kw))
    mae.main(["--output_dir", str(tmp_path / "run"), "--train_dir", run.train_dir, "--eval_dir", run.eval_dir,
              "--image_size", "16", "--model_size", "tiny", "--patch_size", "4", "--max_steps", "1",
              "--per_device_train_batch_size", "16", "--report_to", "none", "--mixed_precision", "no",
              "--random_init_seeds", "1", "--no_linear_probe"])
    colours = {tuple(image.mean(dim=(1, 2)).round(decimals=3).tolist()) for image in shown[-1]}
    assert len(shown[-1]) == 8 and len(colours) == 4, "8 images, every one of the 4 classes"
