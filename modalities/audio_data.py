"""Speech data: finding, checking, decoding, cropping and batching raw waveforms for pretraining.

wav2vec 2.0 (Baevski et al., 2020), HuBERT (Hsu et al., 2021) and data2vec (Baevski et al., 2022) read raw
16 kHz mono waveforms, crop long utterances (at random while training), normalise each utterance to zero mean
and unit variance and pad batches with an attention mask. Sources: a folder of audio files, file lists, or a
dataset folder written by ``datasets``' ``save_to_disk``; with none, a built-in corpus that is plainly
*synthetic*. Audio is decoded with ``soundfile`` only (the decoders of ``torchaudio`` and ``datasets`` need
torchcodec and FFmpeg) and resampled with ``torchaudio.functional.resample``. Bad files end in one line naming
the file and the problem (``on_bad_audio="error"``) or are skipped and counted (``"skip"``).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile
import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.data import (check_files, example_rng, example_seed, files_in_dir, length_grouped_order,  # noqa: F401
                          suffix_of)
from selfsup.errors import SelfsupError

TARGET_SR = 16_000
AUDIO_EXTENSIONS = [".wav", ".flac", ".ogg", ".oga", ".opus"] + \
    ([".mp3"] if "MP3" in soundfile.available_formats() else [])  # libsndfile >= 1.1 reads MP3
BAD_AUDIO_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class AudioEntry:
    """One utterance. ``path`` is the file, or a name used in messages (``saved[12]: a.wav``, ``synthetic[3]``).

    ``data``: None to read ``path``; encoded bytes; a callable returning bytes or a file path (a lazy row of an
    Arrow table); or a 1-D float waveform already at the target rate.
    """

    path: str
    label: int | None = None
    data: bytes | Tensor | Callable[[], bytes | str] | None = None


class BadAudio(Exception):
    """A clip that cannot be used; ``kind`` is its category in :class:`SkipStats` (e.g. ``"empty"``)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass
class SkipStats:
    """Clips left out, by kind: ``str(stats)`` reads "skipped 3 of 120 clips: 2 unreadable, 1 empty"."""

    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)  # kind -> "path: reason" of its first clip

    def add(self, err: BadAudio, path: str) -> None:
        self.counts[err.kind] = self.counts.get(err.kind, 0) + 1
        self.first.setdefault(err.kind, f"{path}: {err.reason}")

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def __str__(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))
        return f"skipped {self.skipped} of {self.total} clips" + (f": {kinds}" if kinds else "")

    def as_dict(self) -> dict[str, int]:
        """Flat figures for ``metrics.json``: ``audio/skipped`` and ``audio/skipped_<kind>``."""
        return {"audio/skipped": self.skipped, **{f"audio/skipped_{k.replace(' ', '_')}": n
                                                   for k, n in self.counts.items()}}


# -- sources -------------------------------------------------------------------------------------------------------
def find_audio(train_dir: str | None = None, file_list: str | Sequence[str] | None = None,
               dataset_name: str | None = None, audio_column: str | None = None, label_column: str | None = None,
               split: str = "train") -> list[AudioEntry]:
    """Entries from one source: a folder (searched recursively for :data:`AUDIO_EXTENSIONS`), file lists
    (one path a line, relative to the list's folder, ``#`` comments; an audio file given here stands for
    itself), or a ``save_to_disk`` folder with an audio column. With no source: the synthetic corpus."""
    if sum(x is not None for x in (train_dir, file_list, dataset_name)) > 1:
        raise SelfsupError(f"{train_dir or file_list}: give one audio source (folder, file list or dataset)")
    if train_dir is not None:
        return [AudioEntry(str(p)) for p in files_in_dir(train_dir, AUDIO_EXTENSIONS)]
    if file_list is not None:
        lists = [file_list] if isinstance(file_list, (str, Path)) else list(file_list)
        return [e for f in lists for e in ([AudioEntry(str(f))] if suffix_of(Path(f)) in AUDIO_EXTENSIONS
                                           else read_file_list(f))]
    if dataset_name is not None:
        return dataset_entries(dataset_name, audio_column, label_column, split)
    from selfsup.modalities import audio_corpora  # the built-in corpus lives apart; imported when needed

    return audio_corpora.synthetic_entries()


def load_audio_splits(train_dir: str | None = None, train_file: Sequence[str] | str | None = None,
                      dataset_name: str | None = None, audio_column: str | None = None, synthetic_utterances: int = 400,
                      max_train_samples: int | None = None, validation_percentage: float = 10.0,
                      max_validation: int = 64, max_duration: float = 4.0, min_duration: float = 0.25,
                      on_bad_audio: str = "error", seed: int = 0, streaming: bool = False,
                      shard_size: int = 1000) -> tuple["AudioDataset", "AudioDataset", str]:
    """(train, validation, source): the user's audio (a folder, file lists or files, a dataset) or, with none,
    the built-in synthetic corpus; ``validation_percentage`` of the clips (at most ``max_validation``), drawn
    from ``seed``, are held out. Training clips are cropped at random, held-out ones at their start.
    ``streaming``: the training clips as a ``modalities.shards.AudioStream`` of shards of ``shard_size`` clips (in
    their listed order), none of them opened here."""
    if train_dir or train_file or dataset_name:
        entries = find_audio(train_dir=train_dir, file_list=train_file, dataset_name=dataset_name,
                             audio_column=audio_column)
    else:
        from selfsup.modalities.audio_corpora import synthetic_entries

        entries = synthetic_entries(synthetic_utterances)
    first = train_file[0] if isinstance(train_file, (list, tuple)) and train_file else train_file
    source = train_dir or first or dataset_name or "builtin:synthetic"
    if max_train_samples:
        entries = entries[:max_train_samples]
    if len(entries) < 2:
        raise SelfsupError(f"{source}: needs at least two audio clips")
    order = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max_validation, max(1, int(len(entries) * validation_percentage / 100)))
    common = dict(max_duration=max_duration, min_duration=min_duration, seed=seed, on_bad_audio=on_bad_audio)
    val = AudioDataset([entries[i] for i in order[:n_val]], random_crop=False, source=f"{source} (validation)",
                       **common)
    if streaming:   # the same held-out clips; the training clips are listed, each process opens only its shards'
        from selfsup.modalities.shards import AudioStream

        return AudioStream([entries[i] for i in sorted(order[n_val:])], source, shard_size=shard_size,
                           **common), val, source
    train = AudioDataset([entries[i] for i in order[n_val:]], random_crop=True, source=source, **common)
    return train, val, source


def read_file_list(path: str | Path) -> list[AudioEntry]:
    """Paths in a text file, one a line; blank lines and ``#`` comments skipped; relative to the list's folder."""
    file = check_files([path], what="audio file list")[0]
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SelfsupError(f"{path}: file list is not UTF-8 text (one audio path a line expected)") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise SelfsupError(f"{path}: file list names no audio files")
    return [AudioEntry(str(p if p.is_absolute() else file.parent / p)) for p in map(Path, names)]


def dataset_entries(name: str, audio_column: str | None = None, label_column: str | None = None,
                    split: str = "train") -> list[AudioEntry]:
    """Lazy entries for the rows of a ``save_to_disk`` folder; the audio column is read undecoded."""
    import datasets

    ds = load_saved(name, split)
    col = audio_column or next((c for c, f in ds.features.items() if isinstance(f, datasets.Audio)),
                               "audio" if "audio" in ds.column_names else None)
    if col not in ds.column_names:
        raise SelfsupError(f"{name}: no audio column{f' {col!r}' if col else ''}; name one with --audio_column "
                           f"(columns: {', '.join(ds.column_names)})")
    if isinstance(ds.features[col], datasets.Audio):
        ds = ds.cast_column(col, datasets.Audio(decode=False))
    labels = dataset_labels(ds, name, label_column)
    return [AudioEntry(f"{name}[{i}]", labels[i] if labels else None, partial(_row_source, ds, col, i, name))
            for i in range(len(ds))]


def load_saved(name: str, split: str):
    """A ``datasets.Dataset`` from a ``save_to_disk`` folder (a DatasetDict gives its ``split``)."""
    import datasets

    if not Path(name).is_dir():
        raise SelfsupError(f"{name}: not a dataset folder (expected one written by datasets' save_to_disk)")
    try:
        ds = datasets.load_from_disk(name)
    except Exception as err:  # noqa: BLE001 - any reader error becomes one line naming the folder
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SelfsupError(f"{name}: cannot load dataset ({first})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SelfsupError(f"{name}: dataset has no {split!r} split (splits: {', '.join(ds)})")
        ds = ds[split]
    return ds


def dataset_labels(ds, name: str, label_column: str | None) -> list[int] | None:
    col = label_column or ("label" if "label" in ds.column_names else None)
    if col is None:
        return None
    if col not in ds.column_names:
        raise SelfsupError(f"{name}: no label column {col!r} (columns: {', '.join(ds.column_names)})")
    values = ds[col]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise SelfsupError(f"{name}: label column {col!r} must hold integer class ids")
    return [int(v) for v in values]


def _row_source(ds, column: str, index: int, root: str) -> bytes | str:
    """The encoded bytes of one row's audio, or its file path (relative paths tried against the dataset)."""
    value = ds[index][column]
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not value:
        raise BadAudio("empty", "row has no audio (neither bytes nor path)")
    path = Path(value)
    return str(path if path.is_absolute() or path.exists() else Path(root) / path)


def to_entries(items: Sequence[Any]) -> list[AudioEntry]:
    """Entries from entries, paths, FSDD clips (anything with ``path`` and ``digit``) or ``(waveform, label)``
    pairs (waveform at 16 kHz)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, AudioEntry):
            out.append(item)
        elif hasattr(item, "digit") and hasattr(item, "path"):
            out.append(AudioEntry(item.path, item.digit))
        elif isinstance(item, (str, Path)):
            out.append(AudioEntry(str(item)))
        elif isinstance(item, tuple) and isinstance(item[0], Tensor):
            out.append(AudioEntry(f"waveform[{i}]", item[1] if len(item) > 1 else None, item[0]))
        else:
            raise TypeError(f"cannot make an audio entry of {type(item).__name__}")
    return out


# -- decoding ------------------------------------------------------------------------------------------------------
def _open(entry: AudioEntry) -> str | io.BytesIO | Tensor:
    """What soundfile opens: the path or the bytes (BadAudio for a missing or empty file)."""
    data = entry.data() if callable(entry.data) else entry.data
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (bytes, bytearray)):
        if not data:
            raise BadAudio("empty", "no audio bytes")
        return io.BytesIO(data)
    path = Path(data if data is not None else entry.path)
    if not path.is_file():
        raise BadAudio("not found", "audio file not found")
    if path.stat().st_size == 0:
        raise BadAudio("empty", "audio file is empty (0 bytes)")
    return str(path)


def _libsndfile_error(err: Exception, source: str | io.BytesIO) -> BadAudio:
    """Tell a text file (a common mistake) from damaged audio."""
    if isinstance(source, io.BytesIO):
        head = source.getvalue()[:4096]
    else:
        with open(source, "rb") as f:
            head = f.read(4096)
    try:
        if b"\x00" not in head and head.decode("utf-8").strip():
            return BadAudio("not audio", "is a text file, not audio")
    except UnicodeDecodeError:
        pass
    reason = str(getattr(err, "error_string", None) or err).strip().splitlines()[0].rstrip(".")
    return BadAudio("unreadable", f"cannot be read as audio ({reason})")


def probe_audio(entry: AudioEntry, target_sr: int = TARGET_SR) -> int:
    """Length in samples at ``target_sr``, from the header alone (``soundfile.info``); BadAudio if unusable."""
    source = _open(entry)
    if isinstance(source, Tensor):
        frames, sr = source.numel(), target_sr
    else:
        try:
            info = soundfile.info(source)
        except Exception as err:  # noqa: BLE001 - libsndfile errors come in several classes
            raise _libsndfile_error(err, source) from None
        frames, sr = info.frames, info.samplerate
    if frames <= 0:
        raise BadAudio("empty", "audio file is empty (0 samples)")
    return math.ceil(frames * target_sr / sr)  # the length torchaudio's resample gives


def decode(entry: AudioEntry, target_sr: int = TARGET_SR, start: int = 0, frames: int | None = None) -> Tensor:
    """Samples ``[start, start + frames)`` at ``target_sr`` (mono float32, 1-D). Only that span is decoded, at
    the file's own rate: whole blocks of ``sr/g`` source samples (``g = gcd``) plus a margin for the resampling
    filter, so the crop equals the same span of the fully decoded and resampled clip."""
    source = _open(entry)
    if isinstance(source, Tensor):
        wave = source.float().reshape(-1)
        return wave[start:None if frames is None else start + frames].clone()
    try:
        with soundfile.SoundFile(source) as f:
            sr, total = f.samplerate, f.frames
            g = math.gcd(sr, target_sr)
            a, b = sr // g, target_sr // g              # a source samples <-> b target samples
            margin = 0 if a == b else math.ceil(64 / a)  # blocks of context for the resampling filter
            first = max(0, start // b - margin)
            end = total if frames is None else min(total, (math.ceil((start + frames) / b) + margin) * a)
            f.seek(first * a)
            wave = f.read(max(0, end - first * a), dtype="float32", always_2d=True)
    except Exception as err:  # noqa: BLE001
        raise _libsndfile_error(err, source) from None
    wave = torch.from_numpy(wave).mean(dim=1)
    if a != b:
        import torchaudio.functional as AF

        wave = AF.resample(wave, sr, target_sr)
    offset = start - first * b
    return wave[offset:None if frames is None else offset + frames].contiguous()


def read_audio(path_or_bytes: str | Path | bytes, target_sr: int = TARGET_SR, start: int = 0,
               frames: int | None = None) -> Tensor:
    """A 1-D float32 waveform at ``target_sr``: channels averaged, resampled if the file's rate differs;
    optionally only ``frames`` samples from ``start`` (both at ``target_sr``). One-line error if unusable."""
    entry = AudioEntry("audio bytes", data=path_or_bytes) if isinstance(path_or_bytes, bytes) \
        else AudioEntry(str(path_or_bytes))
    try:
        wave = decode(entry, target_sr, start, frames)
    except BadAudio as err:
        raise SelfsupError(f"{entry.path}: {err.reason}") from None
    if wave.numel() == 0:
        raise SelfsupError(f"{entry.path}: " + (f"audio ends before sample {start}" if start else
                                                "audio file is empty (0 samples)"))
    return wave


# -- the data set ------------------------------------------------------------------------------------------------
class AudioDataset(Dataset):
    """Map-style speech data: ``{"input_values": (T,) float32 at 16 kHz, "length": T, "index": i, "start": s,
    "label": int}``: ``index`` is the clip actually returned (the next good one when clip ``index`` fails to
    decode), ``start`` the sample where its crop begins, ``seed`` the seed of the objective's random draws for
    this clip (:meth:`example_seed`), ``label`` only when known.

    Every clip is checked once here (``soundfile.info``: header, length, rate). Clips shorter than
    ``min_duration`` s are skipped and counted; clips longer than ``max_duration`` s are cropped, at a random
    place drawn from ``(seed, epoch, index)`` when ``random_crop`` (training; call :meth:`set_epoch`), else from
    the start. ``on_bad_audio``: ``"error"`` raises a one-line :class:`SelfsupError`; ``"skip"`` leaves the clip
    out and counts it in ``skipped``; a clip that fails to decode later is replaced by the next good one.
    ``lengths``/``durations`` (samples / seconds, after cropping) serve length grouping.
    """

    def __init__(self, items: Sequence[Any], target_sr: int = TARGET_SR, max_duration: float | None = 15.0,
                 min_duration: float = 0.1, random_crop: bool = True, seed: int = 0, on_bad_audio: str = "error",
                 source: str = "audio data") -> None:
        if on_bad_audio not in BAD_AUDIO_POLICIES:
            raise SelfsupError(f"{source}: on_bad_audio must be one of {', '.join(BAD_AUDIO_POLICIES)}, "
                               f"not {on_bad_audio!r}")
        self.target_sr, self.random_crop, self.seed, self.on_bad_audio = target_sr, random_crop, seed, on_bad_audio
        self.max_samples = None if max_duration is None else max(1, int(max_duration * target_sr))
        self.min_samples = int(min_duration * target_sr)
        self.epoch = 0
        self.entries, self.full_lengths, self.skipped = self._scan(to_entries(items))
        self._bad: set[int] = set()
        if not self.entries:
            raise SelfsupError(f"{source}: no usable audio ({self.skipped}; "
                               f"first: {next(iter(self.skipped.first.values()), 'no clips given')})")
        if self.skipped.skipped:
            print(f"warning: {source}: {self.skipped}")

    def _scan(self, entries: list[AudioEntry]) -> tuple[list[AudioEntry], list[int], SkipStats]:
        stats, good, lengths = SkipStats(total=len(entries)), [], []
        for entry in entries:
            try:
                n = probe_audio(entry, self.target_sr)
                if n < self.min_samples:
                    raise BadAudio("too short", f"shorter than min_duration ({n / self.target_sr:.3f} s)")
            except BadAudio as err:
                if self.on_bad_audio == "error" and err.kind != "too short":
                    raise SelfsupError(f"{entry.path}: {err.reason}") from None
                stats.add(err, entry.path)
                continue
            good.append(entry)
            lengths.append(n)
        return good, lengths, stats

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def lengths(self) -> list[int]:
        """Samples each example has after cropping (what ``__getitem__`` returns)."""
        cap = self.max_samples or max(self.full_lengths)
        return [min(n, cap) for n in self.full_lengths]

    @property
    def durations(self) -> list[float]:
        return [n / self.target_sr for n in self.lengths]

    def set_epoch(self, epoch: int) -> None:
        """Random crops depend on (seed, epoch, index) only: call before each epoch, also when resuming."""
        self.epoch = epoch

    def crop_start(self, index: int) -> int:
        excess = self.full_lengths[index] - (self.max_samples or self.full_lengths[index])
        if excess <= 0 or not self.random_crop:
            return 0
        return int(example_rng(self.seed, self.epoch, index).integers(0, excess + 1))

    def example_seed(self, index: int) -> int:
        """The seed of clip ``index``'s random draws this epoch (masks, negatives, noise): from (seed, epoch,
        index) only, so that they do not depend on which process or batch the clip lands in."""
        return example_seed(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for k in range(len(self)):
            i = (index + k) % len(self)
            if i in self._bad:
                continue
            entry, start = self.entries[i], self.crop_start(i)
            try:
                wave = decode(entry, self.target_sr, start, self.max_samples)
                if wave.numel() == 0 or not torch.isfinite(wave).all():
                    raise BadAudio("unreadable", "decoded to no samples or to non-finite values")
            except BadAudio as err:
                if self.on_bad_audio == "error":
                    raise SelfsupError(f"{entry.path}: {err.reason}") from None
                self._bad.add(i)
                self.skipped.add(err, entry.path)  # counted in this process (a DataLoader worker keeps its own)
                continue
            example = {"input_values": wave, "length": wave.numel(), "index": i, "start": start,
                       "seed": self.example_seed(i)}
            if entry.label is not None:
                example["label"] = entry.label
            return example
        raise SelfsupError(f"{self.entries[index].path}: no clip of the data set could be decoded ({self.skipped})")


# -- batching ------------------------------------------------------------------------------------------------------
def collate_audio(examples: Sequence[dict[str, Any]], normalize: bool = True,
                  pad_to_multiple_of: int | None = None) -> dict[str, Tensor]:
    """``input_values`` (B, T) float32 zero-padded to the longest clip (rounded up to ``pad_to_multiple_of``),
    ``attention_mask`` (B, T) long (1 = real sample), ``labels`` (B,) when every example has one and
    ``example_seeds`` (B,) when every example has a ``seed`` (objectives then draw per example).

    ``normalize``: each clip's real samples become ``(x - mean) / sqrt(var + 1e-7)``, as
    ``Wav2Vec2FeatureExtractor(do_normalize=True)``; padding stays 0.
    """
    waves = [e["input_values"].float().reshape(-1) for e in examples]
    longest = max(w.numel() for w in waves)
    if pad_to_multiple_of:
        longest = math.ceil(longest / pad_to_multiple_of) * pad_to_multiple_of
    values = torch.zeros(len(waves), longest)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for row, w in enumerate(waves):
        if normalize:
            w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)
        values[row, : w.numel()] = w
        mask[row, : w.numel()] = 1
    batch = {"input_values": values, "attention_mask": mask}
    if all("label" in e for e in examples):
        batch["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    if all("seed" in e for e in examples):
        batch["example_seeds"] = torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)
    return batch
