"""The MFU parts of selfsup.benchmarking: FLOP counts against the formula on tiny shapes (linear layers and CPU
flash attention, forward and backward), the matmul peak and the ratio."""
import pytest
import torch
import torch.nn.functional as F

from selfsup.benchmarking import count_flops, matmul_peak, mfu


def test_linear_forward_and_backward_flops_follow_the_formula():
    x = torch.randn(8, 16)
    lin = torch.nn.Linear(16, 4)
    assert count_flops(lambda: lin(x)) == 2 * 8 * 16 * 4
    # backward: the weight's gradient (the input needs none) -- one more matmul of the same size
    assert count_flops(lambda: lin(x).sum().backward()) == 2 * (2 * 8 * 16 * 4)


def test_cpu_flash_attention_is_counted():
    b, h, n, d = 2, 3, 5, 4
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 2 * (2 * b * h * n * n * d), "QK^T and AV"
    both = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + 5 * (2 * b * h * n * n * d), "the flash backward: QK^T again, dV, dP, dQ, dK"


def test_matmul_peak_and_mfu():
    peak = matmul_peak(size=128, repeats=2)
    assert peak > 1e6
    assert mfu(2e9, 10.0, 4e10) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        mfu(1.0, 1.0, 0.0)
