"""Built-in and reference speech corpora: the generated SYNTHETIC corpus every speech recipe defaults to, and
the Free Spoken Digit Dataset's naming, splits and leave-one-speaker-out folds."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from selfsup.errors import SelfsupError
from selfsup.modalities.audio_data import TARGET_SR, AudioEntry


# -- built-in synthetic corpus ---------------------------------------------------------------------------------
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
          (660, 1720, 2410), (440, 1020, 2240)]  # (F1, F2, F3) Hz, Peterson & Barney (1952) averages
NUM_WORDS, VOCAB_SEED = 10, 1952
SYNTHETIC_NOTE = "SYNTHETIC speech (generated pseudo-words, not real recordings)"


def _vocabulary() -> list[list[dict[str, Any]]]:
    """10 fixed pseudo-words: 2-4 syllables, each a vowel, a pitch contour, a length and maybe a fricative."""
    rng = np.random.default_rng(VOCAB_SEED)
    return [[dict(vowel=VOWELS[rng.integers(len(VOWELS))], f0=tuple(rng.uniform(0.75, 1.35, 2)),
                  dur=rng.uniform(0.12, 0.28), fricative=rng.uniform(2500, 6000) if rng.random() < 0.5 else 0.0)
             for _ in range(rng.integers(2, 5))] for _ in range(NUM_WORDS)]


def _syllable(syl: dict[str, Any], f0: float, tract: float, rate: float, rng: np.random.Generator,
              sr: int) -> np.ndarray:
    """A voiced vowel: harmonics of a gliding f0 weighted by three formant resonances, with an envelope and an
    optional fricative (high-passed noise) before it."""
    n = int(syl["dur"] * rate * sr)
    pitch = np.linspace(syl["f0"][0], syl["f0"][1], n) * f0
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    k = np.arange(1, int(min(0.45 * sr, 4000) / pitch.max()) + 1)[:, None]  # harmonics up to 4 kHz
    gain = sum(1 / (1 + ((k * pitch.mean() - F * tract) / (60 + 0.1 * F)) ** 2) for F in syl["vowel"]) / k ** 0.5
    voiced = (gain * np.sin(k * phase)).sum(0)
    t = np.arange(n) / n
    voiced *= np.minimum(1, t / 0.08) * np.minimum(1, (1 - t) / 0.25)
    if not syl["fricative"]:
        return voiced
    noise = np.diff(rng.standard_normal(int(0.06 * rate * sr) + 1)) * np.hanning(int(0.06 * rate * sr))
    return np.concatenate([0.4 * noise * voiced.std() / max(noise.std(), 1e-8), voiced])


def synthetic_speech_corpus(num_utterances: int = 400, seed: int = 0,
                            sample_rate: int = TARGET_SR) -> list[tuple[Tensor, int]]:
    """``(waveform (T,) float32, word id)`` pairs of SYNTHETIC speech, 0.5-2 s each, 10 classes in turn.

    The 10 pseudo-words are fixed (same for every ``seed``); each utterance varies speaker pitch (90-220 Hz),
    vocal-tract length (formants x0.88-1.15), speaking rate, loudness, pauses and background noise, drawn from
    ``(seed, index)``, so a linear probe on the word id is meaningful and different seeds give held-out data.
    """
    vocab, out = _vocabulary(), []
    for u in range(num_utterances):
        rng, label = np.random.default_rng([seed, u]), u % NUM_WORDS
        f0, tract, rate = rng.uniform(90, 220), rng.uniform(0.88, 1.15), rng.uniform(0.85, 1.2)
        parts = [np.zeros(int(rng.uniform(0.05, 0.2) * sample_rate))]
        for syl in vocab[label]:
            gap = np.zeros(int(rng.uniform(0, 0.05) * sample_rate))
            parts += [_syllable(syl, f0, tract, rate, rng, sample_rate), gap]
        wave = np.concatenate(parts)
        wave = np.pad(wave, (0, max(0, int(0.5 * sample_rate) - wave.size)))[: 2 * sample_rate]
        noise = rng.uniform(0.001, 0.01) * rng.standard_normal(wave.size)
        wave = rng.uniform(0.3, 0.9) * wave / np.abs(wave).max() + noise
        out.append((torch.from_numpy(wave.astype(np.float32)), label))
    return out


def synthetic_entries(num_utterances: int = 400, seed: int = 0) -> list[AudioEntry]:
    """The synthetic corpus as entries named ``synthetic[i]``; prints a line saying that it is synthetic."""
    print(f"no audio data given: using the built-in {SYNTHETIC_NOTE}, {num_utterances} utterances of "
          f"{NUM_WORDS} words")
    return [AudioEntry(f"synthetic[{i}]", label, wave)
            for i, (wave, label) in enumerate(synthetic_speech_corpus(num_utterances, seed))]


# -- Free Spoken Digit Dataset -------------------------------------------------------------------------------------
class FsddClip(NamedTuple):
    path: str
    digit: int
    speaker: str
    take: int


FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def fsdd_entries(folder: str | Path) -> list[FsddClip]:
    """FSDD clips named ``{digit}_{speaker}_{take}.wav`` in ``folder`` (or its ``recordings/``), sorted."""
    root = Path(folder)
    if (root / "recordings").is_dir():
        root = root / "recordings"
    if not root.is_dir():
        raise SelfsupError(f"{folder}: folder not found")
    clips = [FsddClip(str(p), int(m[1]), m[2], int(m[3])) for p in sorted(root.glob("*.wav"))
             if (m := FSDD_NAME.match(p.name))]
    if not clips:
        raise SelfsupError(f"{folder}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) in this folder")
    return clips


def fsdd_split(clips: Sequence[FsddClip], split: str = "official") -> tuple[list[FsddClip], list[FsddClip]]:
    """(train, test): ``"official"`` tests on takes 0-4 (2,700 / 300 clips); ``"speaker:NAME"`` holds NAME out."""
    if split == "official":
        is_test = [c.take < 5 for c in clips]
    elif split.startswith("speaker:") and split[8:] in {c.speaker for c in clips}:
        is_test = [c.speaker == split[8:] for c in clips]
    else:
        speakers = ", ".join(sorted({c.speaker for c in clips}))
        raise SelfsupError(f"{split}: unknown FSDD split; use 'official' or 'speaker:NAME' ({speakers})")
    return [c for c, t in zip(clips, is_test) if not t], [c for c, t in zip(clips, is_test) if t]


def fsdd_speaker_folds(clips: Sequence[FsddClip]) -> list[tuple[str, list[FsddClip], list[FsddClip]]]:
    """Leave-one-speaker-out: ``(speaker, train, test)`` for each speaker, in name order."""
    return [(s, *fsdd_split(clips, f"speaker:{s}")) for s in sorted({c.speaker for c in clips})]
