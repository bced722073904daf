"""Speech data: every source loads; decoding mixes, resamples and crops right; bad audio is an error or counted."""
import math

import numpy as np
import pytest
import soundfile
import torch

from selfsup.errors import SelfsupError
from selfsup.modalities.audio_data import (AudioDataset, AudioEntry, collate_audio, decode, find_audio,
                                           length_grouped_order, read_audio)
from selfsup.modalities import audio_corpora
from selfsup.modalities.audio_corpora import (fsdd_entries, fsdd_speaker_folds, fsdd_split, synthetic_entries,
                                              synthetic_speech_corpus)


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def write(path, wave, sr=16000, subtype=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, sr, subtype=subtype)
    return path


def peak_hz(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.numel(), periodic=False)).abs()
    return float(spectrum.argmax()) * sr / wave.numel()


# -- decoding ------------------------------------------------------------------------------------------------------
def test_stereo_is_mixed_to_mono_and_every_format_reads(tmp_path):
    stereo = np.stack([np.full(8000, 0.2), np.full(8000, 0.6)], axis=1).astype(np.float32)
    wave = read_audio(write(tmp_path / "stereo.wav", stereo, subtype="FLOAT"))
    assert wave.dtype == torch.float32 and wave.shape == (8000,)
    assert torch.allclose(wave, torch.full((8000,), 0.4), atol=1e-6)
    for ext in ("flac", "ogg"):
        path = write(tmp_path / f"tone.{ext}", sine(440, 0.5, 16000))
        assert abs(read_audio(path).numel() - 8000) <= 1
        assert read_audio(path.read_bytes()).numel() == read_audio(path).numel()  # bytes decode like the file


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_to_16k_with_length_and_pitch_kept(tmp_path, sr):
    path = write(tmp_path / f"tone_{sr}.wav", sine(1000, 1.0, sr), sr, subtype="FLOAT")
    wave = read_audio(path)
    assert abs(wave.numel() - 16000) <= 1
    assert abs(peak_hz(wave, 16000) - 1000) <= 2
    # a span decodes exactly like the same span of the whole clip (block-aligned reads + filter margin)
    span = decode(AudioEntry(str(path)), start=5003, frames=4000)
    assert span.shape == (4000,) and torch.allclose(span, wave[5003:9003], atol=1e-5)


def test_long_clip_is_cropped_without_decoding_all_of_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    path = write(tmp_path / "lecture.wav", (0.1 * rng.standard_normal(180 * 8000)).astype(np.float32), 8000)
    full = read_audio(path)
    assert full.numel() == 180 * 16000
    asked = []
    real_read = soundfile.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        asked.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(soundfile.SoundFile, "read", spy)
    train = AudioDataset([str(path)], max_duration=2.0, random_crop=True, seed=3)
    crop = train[0]["input_values"]
    assert train[0]["length"] == crop.numel() == 32000 and train.durations == [2.0]
    assert asked and max(asked) < 2.2 * 8000  # two seconds at the file's 8 kHz plus a small filter margin
    start = train.crop_start(0)
    assert start > 0 and torch.allclose(crop, full[start:start + 32000], atol=1e-5)
    evaluation = AudioDataset([str(path)], max_duration=2.0, random_crop=False)
    assert torch.allclose(evaluation[0]["input_values"], full[:32000], atol=1e-5)


def test_random_crop_reproducible_per_seed_epoch_and_index():
    waves = [(torch.arange(80000, dtype=torch.float32), 0), (torch.arange(48000, dtype=torch.float32), 1)]

    def starts(seed, epoch):
        ds = AudioDataset(waves, max_duration=1.0, seed=seed)
        ds.set_epoch(epoch)
        items = [ds[i] for i in range(2)]
        assert all(x["length"] == 16000 and x["input_values"].numel() == 16000 for x in items)
        return [int(x["input_values"][0]) for x in items]  # the waveform is its own sample index

    assert starts(0, 0) == starts(0, 0)
    assert starts(0, 1) != starts(0, 0) and starts(1, 0) != starts(0, 0)
    assert AudioDataset(waves, max_duration=1.0, random_crop=False)[0]["input_values"][0] == 0


# -- bad audio -----------------------------------------------------------------------------------------------------
def bad_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.wav").write_bytes(b"")
    write(folder / "no_frames.wav", np.zeros(0, dtype=np.float32))
    (folder / "random.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    (folder / "notes.wav").write_text("this is a text file that someone renamed to .wav\n")
    return {"zero_bytes.wav": "empty", "no_frames.wav": "empty", "random.wav": "cannot be read as audio",
            "notes.wav": "text file, not audio"}


@pytest.mark.parametrize("name", ["zero_bytes.wav", "no_frames.wav", "random.wav", "notes.wav"])
def test_bad_file_is_a_one_line_error_naming_it(tmp_path, name):
    problems = bad_files(tmp_path / "bad")
    good = write(tmp_path / "good.wav", sine(440, 0.5, 16000))
    with pytest.raises(SelfsupError) as err:
        AudioDataset([str(good), str(tmp_path / "bad" / name)], on_bad_audio="error")
    msg = str(err.value)
    assert name in msg and problems[name] in msg and "\n" not in msg
    with pytest.raises(SelfsupError, match=name):
        read_audio(tmp_path / "bad" / name)


def test_skip_mode_leaves_out_and_counts_each_kind(tmp_path, capsys):
    folder = tmp_path / "corpus"
    bad_files(folder / "sub")
    for i in range(3):
        write(folder / f"good{i}.flac", sine(300 + 100 * i, 0.5, 16000))
    write(folder / "blip.wav", sine(440, 0.05, 16000))   # shorter than min_duration
    (folder / "readme.txt").write_text("not picked up: not an audio extension")
    entries = find_audio(train_dir=str(folder))
    assert len(entries) == 8
    ds = AudioDataset(entries, on_bad_audio="skip", min_duration=0.1, source=str(folder))
    assert len(ds) == 3 and len(ds.durations) == 3
    assert ds.skipped.counts == {"empty": 2, "unreadable": 1, "not audio": 1, "too short": 1}
    assert str(ds.skipped).startswith("skipped 5 of 8 clips: 2 empty")
    assert ds.skipped.as_dict()["audio/skipped_not_audio"] == 1
    assert "skipped 5 of 8 clips" in capsys.readouterr().out
    with pytest.raises(SelfsupError, match="no usable audio"):
        AudioDataset([e for e in entries if "good" not in e.path], on_bad_audio="skip", min_duration=0.1)
    with pytest.raises(SelfsupError, match="on_bad_audio"):
        AudioDataset(entries, on_bad_audio="ignore")


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_clip_that_breaks_after_the_scan(tmp_path, policy):
    paths = [write(tmp_path / f"c{i}.wav", sine(200 * (i + 1), 0.5, 16000)) for i in range(3)]
    ds = AudioDataset([str(p) for p in paths], on_bad_audio=policy)
    paths[1].write_bytes(np.random.default_rng(1).bytes(5000))  # damaged after the scan
    if policy == "error":
        with pytest.raises(SelfsupError, match="c1.wav: cannot be read as audio"):
            ds[1]
        return
    assert torch.equal(ds[1]["input_values"], ds[2]["input_values"])  # the next good clip stands in
    ds[1]
    assert ds.skipped.counts == {"unreadable": 1}  # counted once


# -- sources -------------------------------------------------------------------------------------------------------
def test_file_list_with_relative_paths_and_comments(tmp_path):
    write(tmp_path / "data" / "sub" / "a.wav", sine(440, 0.5, 8000), 8000)
    b = write(tmp_path / "elsewhere" / "b.flac", sine(440, 0.25, 16000))
    listing = tmp_path / "data" / "train.txt"
    listing.write_text(f"# training clips\nsub/a.wav\n\n  {b}  \n")
    entries = find_audio(file_list=str(listing))
    assert [e.path for e in entries] == [str(tmp_path / "data" / "sub" / "a.wav"), str(b)]
    assert AudioDataset(entries).lengths == [8000, 4000]
    listing.write_text("sub/a.wav\nsub/missing.wav\n")
    with pytest.raises(SelfsupError, match="missing.wav: audio file not found"):
        AudioDataset(find_audio(file_list=str(listing)))


def test_saved_dataset_with_audio_column(tmp_path):
    import datasets

    paths = [write(tmp_path / "src" / f"u{i}.wav", sine(300 + 50 * i, 0.5, 8000), 8000) for i in range(4)]
    ds = datasets.Dataset.from_dict({"speech": [str(p) for p in paths], "label": [0, 1, 0, 1]})
    ds = ds.cast_column("speech", datasets.Audio())
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    for p in paths:
        p.unlink()  # save_to_disk embedded the bytes: the source files are no longer needed
    entries = find_audio(dataset_name=str(tmp_path / "saved"))
    assert len(entries) == 4 and [e.label for e in entries] == [0, 1, 0, 1]
    data = AudioDataset(entries)
    assert data[1]["label"] == 1 and data[1]["length"] == 8000
    assert len(find_audio(dataset_name=str(tmp_path / "saved"), split="test")) == 1
    with pytest.raises(SelfsupError, match="no 'validation' split"):
        find_audio(dataset_name=str(tmp_path / "saved"), split="validation")
    with pytest.raises(SelfsupError, match="no audio column 'voice'"):
        find_audio(dataset_name=str(tmp_path / "saved"), audio_column="voice")


# -- batching ------------------------------------------------------------------------------------------------------
def test_collate_normalises_like_wav2vec2_feature_extractor_and_masks_padding():
    from transformers import Wav2Vec2FeatureExtractor

    rng = np.random.default_rng(0)
    waves = [(3 + 2 * rng.standard_normal(n)).astype(np.float32) for n in (1000, 640, 1203)]
    batch = collate_audio([{"input_values": torch.from_numpy(w), "label": i} for i, w in enumerate(waves)])
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True, padding_value=0.0)
    ref = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    assert batch["input_values"].shape == (3, 1203) and batch["input_values"].dtype == torch.float32
    assert torch.allclose(batch["input_values"], ref["input_values"], atol=1e-5)
    assert torch.equal(batch["attention_mask"], ref["attention_mask"].long())
    assert batch["attention_mask"].sum(1).tolist() == [1000, 640, 1203] and batch["labels"].tolist() == [0, 1, 2]
    real = batch["input_values"][1, :640]
    assert abs(float(real.mean())) < 1e-5 and abs(float(real.std(unbiased=False)) - 1) < 1e-4
    assert (batch["input_values"][1, 640:] == 0).all()
    padded = collate_audio([{"input_values": torch.from_numpy(w)} for w in waves], normalize=False,
                           pad_to_multiple_of=320)
    assert padded["input_values"].shape == (3, 1280) and "labels" not in padded
    assert torch.equal(padded["input_values"][0, :1000], torch.from_numpy(waves[0]))


def padding_share(order, lengths, batch_size):
    batches = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    padded = sum(max(lengths[j] for j in b) * len(b) for b in batches)
    return 1 - sum(lengths[j] for b in batches for j in b) / padded


def fsdd_like_lengths(n=2700, seed=0):
    """Durations like FSDD's (0.14-2.28 s, mean 0.44 s), in samples at 16 kHz."""
    d = np.clip(np.random.default_rng(seed).lognormal(math.log(0.4), 0.4, n), 0.14, 2.28)
    return (d * 16000).astype(int).tolist()


def test_length_grouping_reduces_padding():
    lengths, bs = fsdd_like_lengths(), 16
    order = length_grouped_order(lengths, bs, seed=0, epoch=0)
    assert sorted(order) == list(range(len(lengths)))
    assert lengths[order[0]] == max(lengths)  # the longest batch comes first
    assert order != length_grouped_order(lengths, bs, seed=0, epoch=1)
    assert order == length_grouped_order(lengths, bs, seed=0, epoch=0)
    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    grouped, shuffled = padding_share(order, lengths, bs), padding_share(random_order, lengths, bs)
    assert grouped < 0.25 * shuffled, (grouped, shuffled)


# -- built-in synthetic corpus -------------------------------------------------------------------------------------
def test_synthetic_corpus_is_deterministic_labelled_and_learnable(capsys, monkeypatch):
    from sklearn.linear_model import LogisticRegression

    train = synthetic_speech_corpus(100, seed=0)
    again = synthetic_speech_corpus(20, seed=0)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(train, again))
    assert not torch.equal(synthetic_speech_corpus(1, seed=1)[0][0][:8000], train[0][0][:8000])
    assert np.bincount([label for _, label in train]).tolist() == [10] * 10
    for wave, _ in train:
        assert wave.dtype == torch.float32 and 0.5 * 16000 <= wave.numel() <= 2 * 16000
        assert torch.isfinite(wave).all() and wave.abs().max() <= 1
    test = synthetic_speech_corpus(50, seed=1)  # other speakers, same words

    def features(pairs):  # log spectrum mean + std over 16 ms frames
        out = []
        for wave, _ in pairs:
            w = wave.numpy()
            spec = np.log(np.abs(np.fft.rfft(w[: w.size // 256 * 256].reshape(-1, 256) * np.hanning(256))) + 1e-6)
            out.append(np.concatenate([spec.mean(0), spec.std(0)]))
        return np.stack(out), np.array([label for _, label in pairs])

    (x, y), (xt, yt) = features(train), features(test)
    mu, sd = x.mean(0), x.std(0)
    probe = LogisticRegression(max_iter=500).fit((x - mu) / sd, y)
    assert probe.score((xt - mu) / sd, yt) > 0.6  # chance is 0.1
    entries = synthetic_entries(20)
    assert "SYNTHETIC" in capsys.readouterr().out and entries[0].path == "synthetic[0]"
    ds = AudioDataset(entries)
    assert ds[3]["label"] == 3 and ds.skipped.skipped == 0
    monkeypatch.setattr(audio_corpora, "synthetic_entries", lambda: entries)  # a smaller default, same wiring
    assert find_audio() is entries  # no source given: the synthetic corpus


# -- FSDD ----------------------------------------------------------------------------------------------------------
def test_fsdd_splits_and_loading(shared_data):
    folder = shared_data / "speech" / "fsdd"
    if not (folder / "recordings").is_dir():
        pytest.skip(f"{folder} is absent")
    clips = fsdd_entries(folder)
    assert len(clips) == 3000 and {c.digit for c in clips} == set(range(10))
    train, test = fsdd_split(clips, "official")
    assert (len(train), len(test)) == (2700, 300) and all(c.take < 5 for c in test)
    folds = fsdd_speaker_folds(clips)
    assert len(folds) == 6 and all(len(te) == 500 and len(tr) == 2500 for _, tr, te in folds)
    assert not {c.speaker for c in folds[0][1]} & {c.speaker for c in folds[0][2]}
    with pytest.raises(SelfsupError, match="unknown FSDD split"):
        fsdd_split(clips, "speaker:nobody")
    ds = AudioDataset(test, random_crop=False)
    assert len(ds) == 300 and ds.skipped.skipped == 0 and ds[0]["label"] == test[0].digit
    info = soundfile.info(test[0].path)
    assert abs(ds[0]["length"] - 2 * info.frames) <= 1  # 8 kHz -> 16 kHz
    lengths, bs = ds.lengths, 16
    grouped = padding_share(length_grouped_order(lengths, bs, seed=0), lengths, bs)
    shuffled = padding_share(torch.randperm(len(lengths)).tolist(), lengths, bs)
    assert grouped < 0.5 * shuffled
