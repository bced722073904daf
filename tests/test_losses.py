"""Shared losses against plain references written from their definitions."""
import torch

from selfsup.objectives.losses import feature_penalty, regression_loss


def test_feature_penalty_is_the_mean_square_over_real_frames():
    x = torch.randn(2, 5, 3)
    padding = torch.tensor([[False] * 5, [False, False, True, True, True]])
    ref = torch.cat([x[0].flatten(), x[1, :2].flatten()]).pow(2).mean()
    assert torch.allclose(feature_penalty(x, padding), ref)
    assert torch.allclose(feature_penalty(x), x.pow(2).mean())
    assert torch.allclose(feature_penalty(x, padding, across_processes=True), ref)  # one process: the same


def test_regression_loss_l2_and_smooth_l1():
    pred, target = torch.randn(4, 6), torch.randn(4, 6)
    d = pred - target
    assert torch.allclose(regression_loss(pred, target, 0.0, 0.5), 0.5 * d.pow(2).sum(-1))
    beta = 0.7
    smooth = torch.where(d.abs() < beta, 0.5 * d.pow(2) / beta, d.abs() - 0.5 * beta).sum(-1)
    assert torch.allclose(regression_loss(pred, target, beta, 2.0), 2.0 * smooth)
