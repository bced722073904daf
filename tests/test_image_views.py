"""Augmented views: each example's views come from its own seed (same in any order, process or worker, new
each epoch), the pipelines hold the papers' numbers, BYOL's and DINO's views differ as the papers say, and
the collate functions give the documented shapes."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from selfsup.modalities.image_data import ImageEntry, ImageSet
from selfsup.modalities.image_views import (IMAGENET_MEAN, IMAGENET_STD, ViewDataset, blur_kernel, byol_transforms,
                                            collate_images, collate_views, denormalize, eval_transform,
                                            mae_transform, multicrop_transforms, simclr_transform)


def image_set(n: int = 12, same: bool = False, size: int = 32) -> ImageSet:
    """``n`` random RGB images (all the same one if ``same``: then views differ only by their randomness)."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    pixels = [first if same else rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    return ImageSet([ImageEntry(f"img[{i}]", p, i % 3) for i, p in enumerate(pixels)])


def steps(transform) -> list:
    """Every transform inside a pipeline, depth first (Compose / RandomApply hold plain lists)."""
    out = []
    for t in getattr(transform, "transforms", []):
        out += [t] + steps(t)
    return out


def find(transform, kind) -> list:
    return [t for t in steps(transform) if isinstance(t, kind)]


def applied(kind) -> tuple[list[int], Callable[[], None]]:
    """A counter of calls to transforms of ``kind`` (a RandomApply calls its inner transform only when it
    applies it); returns (counter, remove)."""
    calls = [0]
    original = kind.forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    kind.forward = counting
    return calls, lambda: setattr(kind, "forward", original)


# -- determinism --------------------------------------------------------------------------------------------------
def test_views_depend_only_on_seed_and_index():
    images = image_set()
    one, two = ViewDataset(images, byol_transforms(), seed=7), ViewDataset(images, byol_transforms(), seed=7)
    forward = [one[i] for i in range(len(images))]
    backward = [two[i] for i in reversed(range(len(images)))][::-1]
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    one[5]                                  # the caller's RNG and thread count are left as they were
    assert torch.equal(torch.rand(3), expected) and torch.get_num_threads() == threads
    for a, b in zip(forward, backward):
        assert a["seed"] == b["seed"] and a["label"] == b["label"]
        assert all(torch.equal(x, y) for x, y in zip(a["views"], b["views"]))
    assert not torch.equal(ViewDataset(images, byol_transforms(), seed=8)[0]["views"][0], forward[0]["views"][0])


def test_dataloader_workers_give_the_same_views():
    images = image_set(8)
    data = ViewDataset(images, [simclr_transform()] * 2, seed=3)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate_views,
                            sampler=[7, 1, 4, 0, 2, 6, 5, 3])
        batches[workers] = list(loader)
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["example_seeds"], b["example_seeds"])
        assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(a["views"], b["views"]))
    assert torch.equal(batches[0][0]["views"][0]["pixel_values"][0], data[7]["views"][0])


def test_index_epoch_and_view_change_the_draws():
    data = ViewDataset(image_set(4, same=True), [simclr_transform(blur_p=0.0)] * 2, seed=0)
    first = data[0]["views"]
    assert not torch.equal(first[0], data[1]["views"][0])   # same picture, other index
    assert not torch.equal(first[0], first[1])              # the two views have streams of their own
    data.set_epoch(1)
    assert not torch.equal(first[0], data[0]["views"][0])   # another epoch
    assert data[0]["seed"] != ViewDataset(data.images, data.transforms, seed=0)[0]["seed"]
    data.set_epoch(0)
    assert torch.equal(first[0], data[0]["views"][0])


# -- the papers' numbers ------------------------------------------------------------------------------------------
def test_simclr_pipeline():
    t = simclr_transform(32)
    crop, = find(t, v2.RandomResizedCrop)
    assert crop.size == (32, 32) and crop.scale == (0.08, 1.0)
    jitter, = find(t, v2.ColorJitter)
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == \
        ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    applies = find(t, v2.RandomApply)
    assert [a.p for a in applies] == [0.8, 0.5]
    assert find(t, v2.RandomGrayscale)[0].p == 0.2 and find(t, v2.RandomHorizontalFlip)[0].p == 0.5
    blur, = find(t, v2.GaussianBlur)
    assert blur.kernel_size == (3, 3) and list(blur.sigma) == [0.1, 2.0]
    norm, = find(t, v2.Normalize)
    assert norm.mean == list(IMAGENET_MEAN) and norm.std == list(IMAGENET_STD)
    assert find(simclr_transform(32, blur_p=0.0), v2.GaussianBlur) == []
    assert find(simclr_transform(224), v2.GaussianBlur)[0].kernel_size == (23, 23)
    assert [blur_kernel(s) for s in (32, 64, 96, 224)] == [3, 7, 9, 23]
    assert find(simclr_transform(mean=(0.5,) * 3, std=(0.25,) * 3), v2.Normalize)[0].std == [0.25] * 3


def test_byol_views_are_asymmetric():
    first, second = byol_transforms(32)
    for t in (first, second):
        jitter, = find(t, v2.ColorJitter)
        assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == \
            ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
        assert find(t, v2.RandomApply)[0].p == 0.8 and find(t, v2.RandomGrayscale)[0].p == 0.2
    assert [a.p for a in find(first, v2.RandomApply)] == [0.8, 1.0] and find(first, v2.RandomSolarize) == []
    assert [a.p for a in find(second, v2.RandomApply)] == [0.8, 0.1]
    assert find(second, v2.RandomSolarize)[0].p == 0.2 and find(second, v2.RandomSolarize)[0].threshold == 128

    data, n = ViewDataset(image_set(1), byol_transforms(32), seed=0), 200
    blurred = []
    for v in (0, 1):
        calls, undo = applied(v2.GaussianBlur)
        try:
            for epoch in range(n):
                data.set_epoch(epoch)
                data.view(data.images[0]["image"], 0, v)
        finally:
            undo()
        blurred.append(calls[0])
    assert blurred[0] == n               # view 1: always blurred
    assert 5 <= blurred[1] <= 40         # view 2: about 10 % of the time


def test_byol_second_view_solarizes_about_a_fifth():
    data, n = ViewDataset(image_set(1), byol_transforms(32), seed=0), 200
    solarize, = find(data.transforms[1], v2.RandomSolarize)
    original = solarize.transform
    hits = [0]

    def counting(inpt, params):
        hits[0] += 1
        return original(inpt, params)

    solarize.transform = counting  # RandomSolarize's p decides whether transform() runs
    for epoch in range(n):
        data.set_epoch(epoch)
        data[0]
    assert 20 <= hits[0] <= 65


def test_multicrop_views():
    views = multicrop_transforms(32, local_size=16, num_local=3)
    assert len(views) == 5
    assert [find(t, v2.RandomResizedCrop)[0].size for t in views] == [(32, 32)] * 2 + [(16, 16)] * 3
    assert [find(t, v2.RandomResizedCrop)[0].scale for t in views] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 3
    assert [[a.p for a in find(t, v2.RandomApply)][1] for t in views] == [1.0, 0.1, 0.5, 0.5, 0.5]
    assert [len(find(t, v2.RandomSolarize)) for t in views] == [0, 1, 0, 0, 0]
    assert find(views[1], v2.RandomSolarize)[0].p == 0.2
    example = ViewDataset(image_set(2), views, seed=0)[1]
    assert [tuple(x.shape) for x in example["views"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    default = multicrop_transforms(224)
    assert len(default) == 8 and find(default[2], v2.RandomResizedCrop)[0].size == (96, 96)
    swav = multicrop_transforms(32, global_scale=(0.14, 1.0), local_scale=(0.05, 0.14))
    assert find(swav[0], v2.RandomResizedCrop)[0].scale == (0.14, 1.0)


def test_mae_and_eval_pipelines():
    mae = mae_transform(32)
    crop, = find(mae, v2.RandomResizedCrop)
    assert crop.scale == (0.2, 1.0) and crop.interpolation == v2.InterpolationMode.BICUBIC
    assert len(find(mae, v2.RandomHorizontalFlip)) == 1 and find(mae, v2.ColorJitter) == []
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    out = eval_transform(32)(picture)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out, eval_transform(32)(picture))
    assert find(eval_transform(224, crop_fraction=0.875), v2.Resize)[0].size == [256]


def test_eval_transform_keeps_a_same_size_image_and_denormalize_inverts_it():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = eval_transform(32)(Image.fromarray(pixels))
    back = denormalize(out)
    assert torch.allclose(back, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, atol=1e-6)
    assert denormalize(out[None].repeat(2, 1, 1, 1)).shape == (2, 3, 32, 32)


# -- batches ------------------------------------------------------------------------------------------------------
def test_collate_views_and_images():
    data = ViewDataset(image_set(4), multicrop_transforms(32, local_size=16, num_local=2), seed=0)
    batch = collate_views([data[i] for i in range(4)])
    assert [tuple(v["pixel_values"].shape) for v in batch["views"]] == [(4, 3, 32, 32)] * 2 + [(4, 3, 16, 16)] * 2
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long
    assert batch["example_seeds"].tolist() == [data[i]["seed"] for i in range(4)]
    single = ViewDataset(image_set(4), mae_transform(32), seed=0)
    batch = collate_images([single[i] for i in range(3)])
    assert tuple(batch["pixel_values"].shape) == (3, 3, 32, 32) and type(batch["pixel_values"]) is torch.Tensor
    assert batch["labels"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="one view per example"):
        collate_images([data[0]])


def test_lab_holds_known_colours_and_round_trips():
    """sRGB -> L*a*b* (D65) at colours whose values are published (e.g. brucelindbloom.com), and back."""
    from selfsup.modalities.image_views import lab_to_rgb, rgb_to_lab

    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]]).T.reshape(3, 6, 1)
    lab = rgb_to_lab(rgb.double()).reshape(3, 6).T
    expected = torch.tensor([[53.24, 80.09, 67.20], [87.73, -86.18, 83.18], [32.30, 79.19, -107.86],
                             [100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.39, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(lab, expected, atol=0.02), lab
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lab_to_rgb(rgb_to_lab(pixels)), pixels, atol=1e-5)
    assert lab_to_rgb(torch.tensor([50.0, 120.0, 0.0]).view(3, 1, 1), clamp=False).max() > 1   # out of gamut
