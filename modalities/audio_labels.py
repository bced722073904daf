"""HuBERT's targets: frame features of every clip -> mini-batch k-means -> one cluster id per frame, cached.

Iteration 1 clusters 39-dimensional MFCCs at 100 Hz (:class:`MFCCFeatures`); iteration N > 1 clusters one
Transformer layer of the iteration N-1 model at that model's frame rate (:class:`LayerFeatures`). Labels are
computed once per *whole* clip and stored per clip (:func:`save_labels`); a training example, whatever random
crop :class:`~selfsup.modalities.audio_data.AudioDataset` cut, takes the labels of its own span
(:class:`LabelledAudio`, via ``align_labels(start=...)``), so crops and labels always agree.

Long clips are fed to the previous model in windows of ``window_seconds`` cut at a multiple of its conv stride,
so that window k's frames sit exactly at label positions ``k * W / stride + j``; the few positions a window's
conv edge leaves without a frame get -100 (not scored). Each window is normalised on its own, as a training
crop is.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from selfsup import kmeans
from selfsup.errors import SelfsupError
from selfsup.modalities.audio_data import AudioDataset, BadAudio, collate_audio, decode
from selfsup.modalities.audio_features import MFCC_RATE, align_labels, mfcc_features

IGNORE = -100


def conv_frames(length: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames a conv feature encoder with these kernels and strides makes of ``length`` samples."""
    for k, s in zip(kernels, strides):
        length = (length - k) // s + 1
    return max(length, 0)


class MFCCFeatures:
    """Iteration 1: (F, 39) MFCCs + deltas of the decoded clip, at 100 Hz (fairseq's HuBERT MFCC dump)."""

    rate = float(MFCC_RATE)
    description = "mfcc"

    def num_positions(self, samples: int) -> int:
        return max(0, 1 + (samples - 400) // 160)

    def __call__(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        """(features (N, D), positions (N,)) for a whole clip."""
        feats = mfcc_features(wave)
        return feats, torch.arange(len(feats))


class LayerFeatures:
    """Iteration N > 1: output of Transformer layer ``layer`` of a trained HuBERT objective, per window."""

    def __init__(self, objective, layer: int, window_seconds: float, sample_rate: int = 16000,
                 device: torch.device | str = "cpu") -> None:
        cfg = objective.adapter.config
        self.objective, self.layer, self.device = objective.eval().to(device), layer, torch.device(device)
        self.kernels, self.strides = cfg.conv_kernel, cfg.conv_stride
        self.stride = math.prod(self.strides)
        self.rate = sample_rate / self.stride
        self.window = max(1, int(window_seconds * sample_rate) // self.stride) * self.stride
        self.receptive_field = objective.adapter.receptive_field
        self.description = f"layer {layer}"

    def num_positions(self, samples: int) -> int:
        return math.ceil(samples / self.stride)

    @torch.no_grad()
    def __call__(self, wave: Tensor) -> tuple[Tensor, Tensor]:
        feats, positions = [], []
        for k, start in enumerate(range(0, wave.numel(), self.window)):
            piece = wave[start:start + self.window]
            if piece.numel() < self.receptive_field:
                continue
            batch = collate_audio([{"input_values": piece}])
            batch = {"input_values": batch["input_values"].to(self.device)}     # one clip: no padding
            out = self.objective.layer_features(batch, self.layer)[0].float().cpu()
            feats.append(out)
            positions.append(start // self.stride + torch.arange(len(out)))
        if not feats:
            return torch.zeros(0, self.objective.backbone.config.hidden_size), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(positions)


def whole_clip(data: AudioDataset, index: int) -> Tensor | None:
    """Clip ``index`` decoded whole (what its crops are cut from); None when it cannot be decoded and the data
    set skips bad audio."""
    entry = data.entries[index]
    try:
        wave = decode(entry, data.target_sr)
        if wave.numel() == 0 or not torch.isfinite(wave).all():
            raise BadAudio("unreadable", "decoded to no samples or to non-finite values")
    except BadAudio as err:
        if data.on_bad_audio == "error":
            raise SelfsupError(f"{entry.path}: {err.reason}") from None
        return None
    return wave


def fit_centroids(train: AudioDataset, features: Callable[[Tensor], tuple[Tensor, Tensor]], k: int,
                  max_frames: int = 500_000, iterations: int = 100, batch_size: int = 10_000, seed: int = 0,
                  progress: bool = True) -> tuple[Tensor, float, int, dict[int, tuple[Tensor, Tensor, int]]]:
    """k-means on frames of ``train`` (at most ``max_frames``, whole clips in a seeded random order).

    Returns (centroids (k, D), mean inertia of the fitted frames, fitted frames, the features computed, by clip
    index, for :func:`label_clips` to reuse)."""
    from tqdm.auto import tqdm

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    kept: dict[int, tuple[Tensor, Tensor, int]] = {}
    total = 0
    for i in tqdm(order, desc="k-means features", disable=not progress, leave=False):
        wave = whole_clip(train, i)
        if wave is None:
            continue
        f, pos = features(wave)
        kept[i] = (f, pos, wave.numel())
        total += len(f)
        if total >= max_frames:
            break
    if total < k:
        raise SelfsupError(f"k-means needs at least {k} frames (num_clusters) but the training audio gives {total}")
    fit_x = torch.cat([f for f, _, _ in kept.values()])[:max_frames]
    centroids = kmeans.fit(fit_x, k, batch_size=min(batch_size, len(fit_x)), iterations=iterations, seed=seed)
    return centroids, kmeans.inertia(fit_x, centroids) / len(fit_x), len(fit_x), kept


def label_clips(data: AudioDataset, features: Callable[[Tensor], tuple[Tensor, Tensor]],
                num_positions: Callable[[int], int], centroids: Tensor, indices: Sequence[int] | None = None,
                kept: dict[int, tuple[Tensor, Tensor, int]] | None = None, progress: bool = True) -> list[Tensor]:
    """The label row of each clip in ``indices`` (default: all): (num_positions,) nearest-centroid ids, -100
    where no frame (and an empty row for a clip that cannot be read). ``kept``: features already computed."""
    from tqdm.auto import tqdm

    labels = []
    for i in tqdm(range(len(data)) if indices is None else indices, desc="cluster labels", disable=not progress,
                  leave=False):
        cached = (kept or {}).get(i)
        if cached is None:
            wave = whole_clip(data, i)
            if wave is None:
                labels.append(torch.full((0,), IGNORE, dtype=torch.long))
                continue
            cached = (*features(wave), wave.numel())
        f, pos, samples = cached
        row = torch.full((max(num_positions(samples), int(pos.max()) + 1 if len(pos) else 0),), IGNORE,
                         dtype=torch.long)
        if len(f):
            row[pos] = kmeans.predict(f, centroids)
        labels.append(row)
    return labels


def save_label_part(path: str | Path, indices: Sequence[int], labels: Sequence[Tensor]) -> None:
    """One process's share of a data set's label rows (their clip indices beside them)."""
    save_labels(path, labels, {"indices": list(indices)})


def merge_label_parts(paths: Sequence[str | Path], count: int) -> list[Tensor]:
    """The label rows of all ``count`` clips from the parts :func:`save_label_part` wrote."""
    rows: list[Tensor | None] = [None] * count
    for path in paths:
        labels, meta = load_labels(path)
        for i, row in zip(meta["indices"], labels):
            rows[i] = row
    if missing := [i for i, r in enumerate(rows) if r is None]:
        raise SelfsupError(f"cluster labels: no process labelled clips {missing[:5]} (of {len(missing)})")
    return rows


# -- cache ---------------------------------------------------------------------------------------------------------
def fingerprint(data: AudioDataset, settings: dict[str, Any]) -> str:
    """A hash of the clips (paths and lengths) and of everything that decides their labels."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for entry, n in zip(data.entries, data.full_lengths):
        h.update(f"{entry.path}\t{n}\n".encode())
    return h.hexdigest()


def save_labels(path: str | Path, labels: Sequence[Tensor], metadata: dict[str, Any]) -> None:
    """Per-clip label rows as one int32 tensor + offsets, in safetensors (atomic: written, then renamed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([len(r) for r in labels], dtype=torch.long)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    flat = torch.cat([r.to(torch.int32) for r in labels]) if labels else torch.zeros(0, dtype=torch.int32)
    tmp = path.with_suffix(".tmp")
    save_file({"labels": flat.contiguous(), "offsets": offsets}, str(tmp),
              metadata={k: json.dumps(v) for k, v in metadata.items()})
    tmp.replace(path)


def load_labels(path: str | Path) -> tuple[list[Tensor], dict[str, Any]]:
    """(per-clip label rows, metadata) from :func:`save_labels`' file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            flat, offsets = f.get_tensor("labels").long(), f.get_tensor("offsets")
    except Exception as err:  # noqa: BLE001 - safetensors raises several types
        raise SelfsupError(f"{path}: cannot read cached cluster labels ({err})") from None
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)], meta


def cached_labels(path: str | Path, expected: str) -> tuple[list[Tensor], dict[str, Any]] | None:
    """The cache at ``path`` when its fingerprint is ``expected``, else None."""
    if not Path(path).is_file():
        return None
    labels, meta = load_labels(path)
    return (labels, meta) if meta.get("fingerprint") == expected else None


# -- training data -------------------------------------------------------------------------------------------------
class LabelledAudio(Dataset):
    """An :class:`AudioDataset` whose examples also carry ``cluster_labels``: the clip's cached labels (at
    ``label_rate`` Hz) resampled to the model's frames of the crop actually returned (``frame_rate`` Hz,
    starting at the crop's ``start``)."""

    def __init__(self, data: AudioDataset, labels: Sequence[Tensor], label_rate: float,
                 kernels: Sequence[int], strides: Sequence[int]) -> None:
        if len(labels) != len(data):
            raise SelfsupError(f"{len(labels)} label rows for {len(data)} clips; the label cache does not belong "
                               f"to this data")
        self.data, self.labels, self.label_rate = data, labels, label_rate
        self.kernels, self.strides = tuple(kernels), tuple(strides)
        self.frame_rate = data.target_sr / math.prod(self.strides)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def lengths(self) -> list[int]:
        return self.data.lengths

    def set_epoch(self, epoch: int) -> None:
        self.data.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.data[index]
        frames = conv_frames(example["length"], self.kernels, self.strides)
        example["cluster_labels"] = align_labels(self.labels[example["index"]], frames, self.label_rate,
                                                 self.frame_rate, start=example["start"] / self.data.target_sr)
        return example


class HubertCollator:
    """``collate_audio`` plus ``cluster_labels`` (B, F) padded with -100 to the batch's frame count."""

    def __init__(self, kernels: Sequence[int], strides: Sequence[int]) -> None:
        self.kernels, self.strides = tuple(kernels), tuple(strides)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        batch = collate_audio(examples)
        frames = conv_frames(batch["input_values"].shape[1], self.kernels, self.strides)
        labels = torch.full((len(examples), frames), IGNORE, dtype=torch.long)
        for row, e in enumerate(examples):
            lab = e["cluster_labels"][:frames]
            labels[row, : len(lab)] = lab
        batch["cluster_labels"] = labels
        return batch


__all__ = ["MFCCFeatures", "LayerFeatures", "fit_centroids", "label_clips",
           "save_label_part", "merge_label_parts", "save_labels", "load_labels",
           "cached_labels", "fingerprint", "LabelledAudio", "HubertCollator", "conv_frames", "whole_clip"]
