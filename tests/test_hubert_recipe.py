"""recipes/hubert.py end to end: iteration 1 (MFCC k-means) then 2 (a layer of iteration 1's model), cached
labels that a resumed run reuses, labels that follow each random crop, the export and --init_from."""
import json
import shutil

import importlib
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import speech_argv

from selfsup import kmeans
from selfsup.errors import SelfsupError
from selfsup.modalities.audio import CONV_SIZES, AudioConfig
from selfsup.modalities.audio_data import AudioDataset
from selfsup.modalities.audio_labels import (HubertCollator, LabelledAudio, LayerFeatures, MFCCFeatures, conv_frames,
                                             fingerprint, load_labels, whole_clip)

hubert = importlib.import_module("selfsup.recipes.hubert")


def argv(out, *extra, steps=3):
    return speech_argv(out, "--num_clusters", "12", *extra, steps=steps)


@pytest.fixture(scope="module")
def iterations(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubert")
    first = hubert.main(argv(root / "iteration{iteration}", "--iteration", "1"))
    second = hubert.main(argv(root / "iteration{iteration}", "--iteration", "2"))
    return root, first, second


@pytest.mark.long
def test_iteration_1_clusters_mfccs_and_exports_a_hubert_model(iterations):
    from transformers import AutoModel, HubertModel

    root, first, _ = iterations
    out = root / "iteration1"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("eval/masked_accuracy", "probe/accuracy", "probe/random_init_accuracy", "export/max_abs_hidden_diff",
                "kmeans/inertia", "kmeans/label_perplexity"):
        assert key in saved, key
    assert saved["kmeans/features"] == "mfcc" and saved["export/max_abs_hidden_diff"] <= 1e-4
    assert isinstance(AutoModel.from_pretrained(out / "export"), HubertModel)
    labels, meta = load_labels(out / "labels" / "train.safetensors")
    assert meta["label_rate"] == 100.0 and meta["num_clusters"] == 12
    used = torch.cat(labels)
    used = used[used >= 0]
    assert used.max() < 12 and len(used.unique()) > 6, "the k-means labels use many of the 12 clusters"
    head = load_file(out / "export" / "hubert_head.safetensors")
    assert head["label_embeddings"].shape[0] == 12
    assert load_file(out / "export" / "kmeans.safetensors")["centroids"].shape == (12, 39)


@pytest.mark.long
def test_iteration_2_clusters_a_layer_of_iteration_1(iterations):
    root, _, second = iterations
    assert second["kmeans/features"] == "layer 1", "tiny has 2 layers: the default is the middle one"
    labels, meta = load_labels(root / "iteration2" / "labels" / "train.safetensors")
    assert meta["label_rate"] == 200.0, "the tiny model's frames (80x at 16 kHz)"
    first, _ = load_labels(root / "iteration1" / "labels" / "train.safetensors")
    assert [len(r) for r in labels] != [len(r) for r in first]
    hidden = load_file(root / "iteration2" / "labels" / "kmeans.safetensors")["centroids"]
    assert hidden.shape == (12, 64), "centroids live in the previous model's hidden space"


@pytest.mark.long
def test_init_from_export_restores_the_head(iterations):
    root, _, _ = iterations
    export = root / "iteration1" / "export"
    parsed = hubert.parse_args(hubert.build_parser(), argv(root / "x", "--init_from", str(export)))
    args = hubert.resolve(hubert.settings_from(hubert.HubertRun, parsed))
    objective = hubert.build_objective(args)
    head = load_file(export / "hubert_head.safetensors")
    assert torch.equal(objective.label_embeddings.detach(), head["label_embeddings"])
    args.num_clusters = 30                                    # another k: the head starts afresh
    assert hubert.build_objective(args).label_embeddings.shape[0] == 30


@pytest.mark.long
def test_resume_reuses_the_cached_labels(tmp_path):
    straight = tmp_path / "a"
    hubert.main(argv(straight, "--checkpointing_steps", "3", "--checkpoints_total_limit", "0", steps=6))
    resumed = tmp_path / "b"
    shutil.copytree(straight / "labels", resumed / "labels")
    cache = load_file(resumed / "labels" / "train.safetensors")
    cache["labels"] = (cache["labels"] + 1) % 12              # edit the labels, keep the fingerprint
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(straight / "labels" / "train.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(cache, str(resumed / "labels" / "train.safetensors"), metadata=meta)
    metrics = hubert.main(argv(resumed, "--resume_from_checkpoint", str(straight / "checkpoint-3"),
                               "--checkpointing_steps", "6", steps=6))
    assert metrics["kmeans/cached"] == 1.0
    a = load_file(straight / "checkpoint-6" / "model.safetensors")
    b = load_file(resumed / "checkpoint-6" / "model.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff > 1e-4, "the resumed run trained on the (edited) cached labels, not on recomputed ones"

    resumed = tmp_path / "c"
    shutil.copytree(straight / "labels", resumed / "labels")
    metrics = hubert.main(argv(resumed, "--resume_from_checkpoint", str(straight / "checkpoint-3"),
                               "--checkpointing_steps", "6", steps=6))
    b = load_file(resumed / "checkpoint-6" / "model.safetensors")
    for k in a:  # to 1e-5: CPU convolution backward is not bit-reproducible (see tests/test_wav2vec2_recipe.py)
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k


def test_the_cache_is_redone_when_the_settings_change(tmp_path):
    data = AudioDataset([(torch.randn(16000), 0), (torch.randn(12000), 1)], max_duration=None)
    base = {"num_clusters": 12, "iteration": 1}
    assert fingerprint(data, base) == fingerprint(data, dict(base))
    assert fingerprint(data, base) != fingerprint(data, {**base, "num_clusters": 13})
    other = AudioDataset([(torch.randn(16000), 0), (torch.randn(12001), 1)], max_duration=None)
    assert fingerprint(data, base) != fingerprint(other, base)


def test_labels_follow_each_random_crop():
    """Label i of a clip marks position i: every crop must get the positions of its own span."""
    tiny = AudioConfig(**CONV_SIZES["tiny"])
    clip = torch.randn(3 * 16000)
    data = AudioDataset([(clip, 0), (torch.randn(20000), 1)], max_duration=1.0, random_crop=True, seed=3)
    positions = MFCCFeatures().num_positions(len(clip))
    rows = [torch.arange(positions), torch.arange(MFCCFeatures().num_positions(20000))]
    labelled = LabelledAudio(data, rows, 100.0, tiny.conv_kernel, tiny.conv_stride)
    starts = set()
    for epoch in range(4):
        labelled.set_epoch(epoch)
        ex = labelled[0]
        start = ex["start"]
        starts.add(start)
        frames = conv_frames(16000, tiny.conv_kernel, tiny.conv_stride)
        expect = torch.floor(start / 160 + torch.arange(frames, dtype=torch.float64) * 0.5 + 0.5).long()
        assert torch.equal(ex["cluster_labels"], expect)
    assert len(starts) > 1, "the crops moved between epochs"
    batch = HubertCollator(tiny.conv_kernel, tiny.conv_stride)([labelled[1], labelled[0]])
    assert batch["cluster_labels"].shape == (2, conv_frames(16000, tiny.conv_kernel, tiny.conv_stride))
    short = conv_frames(16000 if data.lengths[1] >= 16000 else data.lengths[1], tiny.conv_kernel, tiny.conv_stride)
    assert (batch["cluster_labels"][0, short:] == -100).all()


def test_layer_features_tile_long_clips_by_window():
    from selfsup.recipes.builders.clustering import hubert as build

    torch.manual_seed(0)
    model = build("tiny", num_clusters=5).eval()
    source = LayerFeatures(model, 1, window_seconds=0.5)
    assert source.window % source.stride == 0
    clip = torch.randn(int(1.3 * 16000))
    feats, pos = source(clip)
    assert pos.max() < source.num_positions(len(clip)) and len(pos.unique()) == len(pos)
    first = conv_frames(source.window, source.kernels, source.strides)
    assert torch.equal(pos[:first], torch.arange(first))
    assert pos[first] == source.window // source.stride, "the second window starts at its own position"
    piece = clip[:source.window]
    alone = model.layer_features({"input_values": ((piece - piece.mean()) / torch.sqrt(piece.var(unbiased=False)
                                                                                       + 1e-7))[None]}, 1)[0]
    assert torch.allclose(feats[:first], alone, atol=1e-5)


def test_iteration_2_without_a_previous_model_is_one_line(tmp_path):
    with pytest.raises(SelfsupError, match="iteration 1"):
        hubert.main(argv(tmp_path / "iteration{iteration}", "--iteration", "2"))


@pytest.mark.long
def test_new_weights_of_the_previous_iteration_redo_the_labels(iterations, tmp_path):
    """Retrained weights of iteration 1 (same file size) must not leave iteration 2 on its old cached labels."""
    from safetensors.torch import save_file

    root, _, _ = iterations
    shutil.copytree(root / "iteration1", tmp_path / "iteration1")
    run = argv(tmp_path / "iteration{iteration}", "--iteration", "2", steps=1)
    assert hubert.main(run)["kmeans/cached"] == 0.0
    assert hubert.main(run)["kmeans/cached"] == 1.0, "same data, settings and previous model: reused"
    weights = tmp_path / "iteration1" / "export" / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 2)
    state[name] = state[name] + 0.01
    save_file(state, str(weights), metadata={"format": "pt"})
    assert hubert.main(run)["kmeans/cached"] == 0.0, "the previous model changed: labels recomputed"


def test_a_corrupt_head_file_is_one_line(tmp_path):
    bad = tmp_path / "hubert_head.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(SelfsupError, match="not a HuBERT head"):
        hubert._head_clusters(bad)


def test_each_process_labels_every_nth_clip(tmp_path, monkeypatch):
    """Process 1 of 2 fits nothing, labels clips 1, 3, 5, ... with the main process's centroids, merges nothing."""
    from types import SimpleNamespace

    from selfsup.kmeans import save_centroids

    clips = AudioDataset([(torch.randn(8000 + 800 * i), i) for i in range(7)], max_duration=None)
    args = SimpleNamespace(iteration=1, num_clusters=4, seed=0)
    cache = tmp_path / "labels"
    cache.mkdir()
    centroids = torch.randn(4, 39)
    save_centroids(cache / hubert.KMEANS_FILE, centroids)
    steps = []
    monkeypatch.setattr(hubert, "together", lambda acc, step: steps.append(step.__name__) or step())
    second = SimpleNamespace(num_processes=2, process_index=1, is_main_process=False, device=torch.device("cpu"),
                             print=print)
    hubert.make_labels(args, {"train": clips, "validation": clips}, {"train": "a", "validation": "b"}, cache, second)
    assert steps == ["<lambda>", "fit", "label_my_share", "merge"]
    rows, meta = load_labels(cache / "parts" / "train.1.safetensors")
    assert meta["indices"] == [1, 3, 5] and not (cache / "train.safetensors").exists()
    source = MFCCFeatures()
    for i, row in zip(meta["indices"], rows):
        f, pos = source(whole_clip(clips, i))
        assert torch.equal(row[pos], kmeans.predict(f, centroids))


@pytest.mark.long
def test_a_failure_on_the_main_process_stops_both(tmp_path):
    from tests.launch import torchrun

    with pytest.raises(AssertionError) as err:          # torchrun asserts exit code 0 and shows stderr's tail
        torchrun(2, hubert.__file__, *argv(tmp_path / "run", "--num_clusters", "100000", "--iteration", "1"),
                 timeout=120)
    assert "k-means needs at least 100000 frames" in str(err.value)
