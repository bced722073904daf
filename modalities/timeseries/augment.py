"""Series augmentations for two-view methods, each drawn from a ``torch.Generator`` (seeded per example and view,
``selfsup.data.view_generator``), on one series (L, C):

* :func:`jitter`: Gaussian noise of std ``sigma`` (times each channel's std) added at every step;
* :func:`scaling`: each channel multiplied by a draw of N(1, sigma^2);
* :func:`permute_segments`: cut at 1 to ``max_segments - 1`` random points, the segments put in a random order;
* :func:`crop_resize`: a random contiguous ``ratio`` of the steps (``min_ratio``..1), stretched back to L;
* :func:`time_warp`: the time axis bent by a smooth random speed curve (``knots`` knots of N(1, sigma^2)), then
  resampled at L steps (linear interpolation).

:class:`SeriesAugment` composes them (each with its probability); the length and channels are kept, so views of
equal-length series batch without padding. :class:`SeriesViewDataset` yields the views of every example;
:func:`collate_series_views` gives the two-view batch (``{"views": [batch, batch], "example_seeds", "labels"}``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from selfsup.data import example_seed, view_generator
from selfsup.modalities.timeseries.data import LABELS, SeriesSet, collate_series
from selfsup.types import EXAMPLE_SEEDS, VIEWS


def _channel_std(x: Tensor) -> Tensor:
    return x.std(dim=0, keepdim=True, unbiased=False).clamp_min(1e-8)


def jitter(x: Tensor, g: torch.Generator, sigma: float = 0.03) -> Tensor:
    return x + sigma * _channel_std(x) * torch.randn(x.shape, generator=g)


def scaling(x: Tensor, g: torch.Generator, sigma: float = 0.1) -> Tensor:
    return x * (1.0 + sigma * torch.randn(1, x.shape[1], generator=g))


def permute_segments(x: Tensor, g: torch.Generator, max_segments: int = 5) -> Tensor:
    length = x.shape[0]
    pieces = int(torch.randint(1, max(2, min(max_segments, length)) + 1, (), generator=g))
    if pieces < 2:
        return x
    cuts = torch.randperm(length - 1, generator=g)[: pieces - 1].add(1).sort().values.tolist()
    segments = torch.tensor_split(x, cuts)
    order = torch.randperm(len(segments), generator=g).tolist()
    return torch.cat([segments[i] for i in order])


def resample(x: Tensor, positions: Tensor) -> Tensor:
    """x (L, C) read at fractional step ``positions`` (M,) in [0, L - 1], linearly interpolated."""
    low = positions.floor().long().clamp(0, x.shape[0] - 1)
    high = (low + 1).clamp(max=x.shape[0] - 1)
    w = (positions - low.to(positions.dtype))[:, None]
    return x[low] * (1 - w) + x[high] * w


def crop_resize(x: Tensor, g: torch.Generator, min_ratio: float = 0.8) -> Tensor:
    length = x.shape[0]
    ratio = min_ratio + (1 - min_ratio) * float(torch.rand((), generator=g))
    span = max(2, int(round(ratio * length)))
    start = int(torch.randint(0, length - span + 1, (), generator=g))
    return resample(x, torch.linspace(start, start + span - 1, length))


def time_warp(x: Tensor, g: torch.Generator, sigma: float = 0.2, knots: int = 4) -> Tensor:
    length = x.shape[0]
    speeds = (1.0 + sigma * torch.randn(knots + 2, generator=g)).clamp_min(0.1)
    curve = F.interpolate(speeds[None, None], size=length, mode="linear", align_corners=True)[0, 0]
    warped = torch.cumsum(curve, 0)
    warped = (warped - warped[0]) / (warped[-1] - warped[0]).clamp_min(1e-8) * (length - 1)
    return resample(x, warped)


@dataclass
class SeriesAugment:
    """A random chain of the augmentations (module docstring): crop (``crop_p``), warp (``warp_p``), segment
    permutation (``permute_p``), then scaling and jitter (always, of the given strengths; 0 turns one off)."""

    crop_p: float = 0.5
    min_crop: float = 0.8
    warp_p: float = 0.5
    warp_sigma: float = 0.2
    permute_p: float = 0.5
    max_segments: int = 5
    scale_sigma: float = 0.1
    jitter_sigma: float = 0.03

    def __call__(self, x: Tensor, g: torch.Generator) -> Tensor:
        x = x.float()
        if float(torch.rand((), generator=g)) < self.crop_p:
            x = crop_resize(x, g, self.min_crop)
        if float(torch.rand((), generator=g)) < self.warp_p:
            x = time_warp(x, g, self.warp_sigma)
        if float(torch.rand((), generator=g)) < self.permute_p:
            x = permute_segments(x, g, self.max_segments)
        if self.scale_sigma:
            x = scaling(x, g, self.scale_sigma)
        if self.jitter_sigma:
            x = jitter(x, g, self.jitter_sigma)
        return x


class SeriesViewDataset(Dataset):
    """``num_views`` augmented views of every series of a :class:`SeriesSet`, view ``v`` of example ``i`` from
    ``view_generator(seed, epoch, i, v)``; call :meth:`set_epoch` each epoch."""

    def __init__(self, data: SeriesSet, augment: SeriesAugment, seed: int = 0, num_views: int = 2) -> None:
        self.data, self.augment, self.seed, self.num_views, self.epoch = data, augment, seed, num_views, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        views = [self.augment(item["values"], view_generator(self.seed, self.epoch, index, v))
                 for v in range(self.num_views)]
        return {**item, "views": views, "seed": example_seed(self.seed, self.epoch, index)}


def collate_series_views(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"views": [one series batch per view], "example_seeds": (B,), "labels": (B,) when labelled}``."""
    num_views = len(examples[0]["views"])
    batch: dict[str, Any] = {
        VIEWS: [collate_series([{"values": e["views"][v]} for e in examples]) for v in range(num_views)],
        EXAMPLE_SEEDS: torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)}
    if all("label" in e for e in examples):
        batch[LABELS] = torch.tensor([e["label"] for e in examples], dtype=torch.long)
    return batch


__all__ = ["jitter", "scaling", "permute_segments", "crop_resize", "time_warp", "resample", "SeriesAugment",
           "SeriesViewDataset", "collate_series_views"]
