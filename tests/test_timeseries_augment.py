"""Series augmentations: each does what it says, keeps the shape, and is drawn from the example's own generator
(the same views in any batch or process)."""
import torch

from selfsup.modalities.timeseries.augment import (SeriesAugment, SeriesViewDataset, collate_series_views,
                                                   crop_resize, jitter, permute_segments, scaling, time_warp)
from selfsup.modalities.timeseries.data import generated_series


def g(seed=0):
    return torch.Generator().manual_seed(seed)


def ramp(length=100, channels=2):
    return torch.arange(length, dtype=torch.float32)[:, None].repeat(1, channels) * torch.tensor([1.0, -2.0])


def test_jitter_adds_noise_of_the_given_share_of_each_channels_std():
    x = ramp(4000)
    noise = jitter(x, g(), sigma=0.1) - x
    ratio = noise.std(0) / x.std(0)
    assert torch.allclose(ratio, torch.tensor([0.1, 0.1]), atol=0.01)


def test_scaling_multiplies_each_channel_by_one_factor():
    x = ramp() + 1
    factors = scaling(x, g(), sigma=0.5) / x
    assert torch.allclose(factors, factors[:1].expand_as(factors), atol=1e-6)
    assert not torch.allclose(factors[0, 0], factors[0, 1])


def test_permuted_segments_hold_the_same_steps_in_runs():
    x = ramp(50)
    for seed in range(20):
        y = permute_segments(x, g(seed), max_segments=5)
        assert torch.equal(y[:, 0].sort().values, x[:, 0])
        runs = int((y[1:, 0] - y[:-1, 0] != 1).sum()) + 1
        assert 1 <= runs <= 5


def test_crop_resize_and_time_warp_keep_length_order_and_range():
    x = ramp(80)
    for seed in range(10):
        c = crop_resize(x, g(seed), min_ratio=0.5)
        assert c.shape == x.shape and (c[1:, 0] >= c[:-1, 0]).all()
        assert c[-1, 0] - c[0, 0] >= 0.5 * 79 - 1
        w = time_warp(x, g(seed), sigma=0.5)
        assert w.shape == x.shape and (w[1:, 0] >= w[:-1, 0] - 1e-4).all()
        assert torch.allclose(w[[0, -1], 0], x[[0, -1], 0], atol=1e-3), "a warp keeps the end points"


def test_views_are_the_examples_own_whatever_the_batch():
    data = generated_series(12, 64, seed=0)
    views = SeriesViewDataset(data, SeriesAugment(), seed=3)
    views.set_epoch(2)
    batch = collate_series_views([views[i] for i in range(6)])
    again = collate_series_views([views[4], views[1]])
    assert batch["views"][0]["past_values"].shape == (6, 64, 1)
    assert torch.equal(again["views"][0]["past_values"][0], batch["views"][0]["past_values"][4])
    assert torch.equal(again["views"][1]["past_values"][1], batch["views"][1]["past_values"][1])
    assert not torch.equal(batch["views"][0]["past_values"], batch["views"][1]["past_values"]), "two different views"
    views.set_epoch(3)
    assert not torch.equal(views[4]["views"][0], again["views"][0]["past_values"][0]), "new views each epoch"
