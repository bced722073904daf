"""``--streaming`` in each modality: the loaders the recipes build read, on each of two (simulated) processes, only
that process's shards, and the two processes' examples split the epoch's data between them; the recipes train."""
from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
from PIL import Image

from selfsup.config import settings_from
from selfsup.streaming import assign
from tests.conftest import speech_argv


def process(rank: int, world: int = 2):
    return SimpleNamespace(num_processes=world, process_index=rank, print=lambda *a, **k: None, is_main_process=True)


def opened_and_batches(loader):
    """One epoch of a stream loader: (shards it opened, its batches)."""
    stream = loader.dataset
    opened, read = [], stream.read
    stream.read = lambda shard: (opened.append(stream.shards.index(shard)), read(shard))[1]
    batches = list(loader)
    return opened, batches


def own_shards(stream, rank, world=2):
    return [s for s, _ in assign(len(stream.shards), world, rank, stream.seed, 0)]


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), value % 255, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_parquets(folder, files=4, rows=6, captions=False):
    """Parquet shards whose integer ``label`` is a unique image id (1000 * file + row)."""
    folder.mkdir()
    for f in range(files):
        ids = [1000 * f + r for r in range(rows)]
        cols = {"image": pa.array([{"bytes": png(i), "path": None} for i in ids]), "label": pa.array(ids)}
        if captions:
            cols["text"] = pa.array([f"a picture number {i % 7}" for i in ids])
        pq.write_table(pa.table(cols), folder / f"train-{f:02d}.parquet")
    return sorted(str(p) for p in folder.glob("*.parquet"))


def test_images_each_process_reads_only_its_parquet_shards(tmp_path):
    from selfsup.modalities.image_views import mae_transform
    from selfsup.recipes._image import ImageRun, load_training_images, view_loader

    files = image_parquets(tmp_path / "img")
    run = ImageRun(train_file=files, streaming=True, image_size=8)
    seen = {}
    for rank in range(2):
        images, _ = load_training_images(run, process(rank))
        loader = view_loader(images, [mae_transform(8)], run, 3, process(rank))
        opened, batches = opened_and_batches(loader)
        assert sorted(opened) == sorted(own_shards(loader.dataset, rank)) and len(opened) == 2
        seen[rank] = [int(i) for b in batches for i in b["labels"]]
        assert {i // 1000 for i in seen[rank]} == set(opened)
        assert batches[0]["pixel_values"].shape == (3, 3, 8, 8)
    assert sorted(seen[0] + seen[1]) == [1000 * f + r for f in range(4) for r in range(6)]


def test_pairs_each_process_reads_only_its_parquet_shards(tmp_path):
    from selfsup.recipes import clip

    files = image_parquets(tmp_path / "pairs", files=3, rows=8, captions=True)
    args = clip.build_parser().parse_args(["--train_file", *files, "--streaming", "--image_size", "8"])
    run = settings_from(clip.ClipRun, args)
    tokenizer = None
    seen = {}
    for rank in range(2):
        pairs = clip.load_training_pairs(run, process(rank))
        pairs, test, _ = clip.zero_shot_images(run, pairs)
        assert test is None
        if tokenizer is None:
            from selfsup.modalities.image_text import train_caption_tokenizer

            tokenizer = train_caption_tokenizer(pairs.captions(), 300, context_length=run.context_length)
        loader = clip.pair_loader(pairs, tokenizer, run, 4, process(rank))
        opened, batches = opened_and_batches(loader)
        # 3 shards on 2 processes: one whole shard each, the left-over one read by both, each keeping its half
        whole = [s for s, w in assign(3, 2, rank, run.seed, 0) if w]
        assert sorted(opened) == sorted(own_shards(loader.dataset, rank))
        seen[rank] = [int(i) for b in batches for i in b["labels"]]
        assert all(i // 1000 in whole or (i % 1000) % 2 == rank for i in seen[rank])
        assert batches[0]["input_ids"].shape[0] == 4
    assert sorted(seen[0] + seen[1]) == [1000 * f + r for f in range(3) for r in range(8)]


def test_audio_each_process_reads_only_its_folder_shards(tmp_path):
    from selfsup.recipes._speech import SpeechRun, load_audio, speech_loader
    from selfsup.modalities.audio_data import collate_audio

    folder = tmp_path / "wav"
    folder.mkdir()
    for i in range(24):
        soundfile.write(folder / f"clip{i:02d}.wav", np.random.default_rng(i).normal(0, 0.1, 4000 + 200 * i), 16000)
    run = SpeechRun(train_dir=str(folder), streaming=True, stream_shard_size=5, max_duration=0.5,
                    validation_split_percentage=10.0)
    seen = {}
    for rank in range(2):
        train, val, _ = load_audio(run)
        assert len(train) + len(val) == 24 and len(train.shards) == 5     # 22 clips in shards of 5
        loader = speech_loader(train, collate_audio, run, 2, process(rank))
        opened, batches = opened_and_batches(loader)
        assert sorted(opened) == sorted(own_shards(loader.dataset, rank))
        mine = {e.path for s in opened for e in train.shards[s]}
        # a clip's length identifies it (4000 + 200 i samples, cropped at 0.5 s = 8000)
        lengths = {min(8000, soundfile.info(p).frames) for p in mine}
        seen[rank] = [int(n) for b in batches for n in b["attention_mask"].sum(1)]
        assert set(seen[rank]) <= lengths
    assert len(seen[0]) + len(seen[1]) >= 22 - 2 * 1    # each process drops at most an incomplete batch


def test_text_each_process_reads_only_its_files_and_holds_out_validation(tmp_path):
    from selfsup.modalities.shards import text_reader
    from selfsup.modalities.text import train_tokenizer
    from selfsup.recipes._text import TextRun, text_blocks

    folder = tmp_path / "txt"
    folder.mkdir()
    for f in range(4):
        (folder / f"part{f}.txt").write_text("\n".join(f"file {f} line {i} says something about topic {i % 5}"
                                                       for i in range(40)))
    run = TextRun(train_dir=str(folder), streaming=True, max_seq_length=16, streaming_validation_examples=10,
                  max_eval_blocks=8)
    tok = train_tokenizer((f"file {f} line {i} says something about topic" for f in range(4) for i in range(40)), 200)
    files = sorted(str(p) for p in folder.glob("*.txt"))
    # the blocks of each file, the first file's first 10 lines held out for validation
    every = {f: [tuple(b["input_ids"]) for b in text_reader(tok, 16, hold_out={files[0]: 10})(f)] for f in files}
    seen = {}
    for rank in range(2):
        loader, val_blocks = text_blocks(run, None, None, "t", tok, 4, process(rank))
        opened, batches = opened_and_batches(loader)
        assert sorted(opened) == sorted(own_shards(loader.dataset, rank))
        seen[rank] = [tuple(x.tolist()) for b in batches for x in b["input_ids"]]
        assert set(seen[rank]) <= {b for s in opened for b in every[files[s]]}
        assert len(set(b["example_seeds"].tolist()[0] for b in batches)) == len(batches)
        # the held-out blocks (the first 10 lines of the first file) are not trained on
        assert not set(map(tuple, val_blocks)) & set(seen[rank])
    assert not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) > sum(map(len, every.values())) - 2 * 4   # only incomplete batches dropped


@pytest.mark.long
@pytest.mark.parametrize("recipe", ["mae", "clip", "wav2vec2"])
def test_recipes_train_streamed_and_resume(tmp_path, recipe):
    """Each recipe trains with --streaming, checkpoints its stream position and resumes from it."""
    import importlib

    main = importlib.import_module(f"selfsup.recipes.{recipe}").main
    out = tmp_path / "run"
    if recipe == "wav2vec2":
        folder = tmp_path / "wav"
        folder.mkdir()
        for i in range(20):
            soundfile.write(folder / f"c{i:02d}.wav", np.random.default_rng(i).normal(0, 0.1, 8000), 16000)
        argv = lambda *extra, steps: speech_argv(out, "--train_dir", str(folder), "--streaming",  # noqa: E731
                                                 "--stream_shard_size", "4", *extra, steps=steps)
    else:
        files = image_parquets(tmp_path / "data", files=3, rows=8, captions=recipe == "clip")
        common = ["--train_file", *files, "--streaming", "--output_dir", str(out), "--model_size", "tiny",
                  "--per_device_train_batch_size", "4", "--report_to", "none", "--image_size", "16"]
        if recipe == "clip":
            common += ["--vocab_size", "300"]
        else:
            common += ["--patch_size", "4"]
        argv = lambda *extra, steps: [*common, "--max_steps", str(steps), *extra]  # noqa: E731
    main(argv("--checkpointing_steps", "2", steps=2))
    state = json.loads((out / "checkpoint-2" / "data_state_0.json").read_text())
    assert state["batches"] == 2 and state["num_processes"] == 1
    metrics = main(argv("--resume_from_checkpoint", "latest", "--checkpointing_steps", "3", steps=3))
    assert metrics["steps"] == 3
    after = json.loads((out / "checkpoint-3" / "data_state_0.json").read_text())
    assert (after["epoch"], after["batches"]) != (state["epoch"], state["batches"])
