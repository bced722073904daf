"""The time-major GEMM feature encoder equals the layers' own (B, C, T) ``nn.Conv1d`` definition."""
import pytest
import torch

from selfsup.modalities.audio import AudioAdapter, AudioConfig


def plain(adapter: AudioAdapter, wav: torch.Tensor) -> torch.Tensor:
    x = wav[:, None]
    for layer in adapter.conv_layers:
        x = layer(x)
    return x.transpose(1, 2)


CASES = {
    "base kernels, group norm": dict(conv_dim=(24,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2),
                                     conv_stride=(5, 2, 2, 2, 2, 2, 2)),
    "layer norm, bias": dict(conv_dim=(16, 24, 20), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2),
                             feat_extract_norm="layer", conv_bias=True),
    "group norm, bias, kernel > 2 strides, kernel < stride": dict(
        conv_dim=(16, 12, 20, 8), conv_kernel=(4, 7, 1, 3), conv_stride=(3, 2, 3, 1), conv_bias=True),
    "relu": dict(conv_dim=(8, 8), conv_kernel=(5, 4), conv_stride=(2, 2), activation="relu"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("length", [1603, 3200])
def test_feature_encoder_equals_the_plain_layers_with_gradients(case, length):
    torch.manual_seed(0)
    adapter = AudioAdapter(AudioConfig(**CASES[case], num_conv_pos_embedding_groups=2), hidden_size=8).double()
    for layer in adapter.conv_layers:              # non-trivial affine norms
        if layer.norm is not None:
            torch.nn.init.normal_(layer.norm.weight, 1.0, 0.3), torch.nn.init.normal_(layer.norm.bias, 0.0, 0.3)
    wav = torch.randn(3, length, dtype=torch.float64)
    wav[2, length // 2:] = 0                        # a zero-padded clip
    ours, ref = adapter.conv_features(wav), plain(adapter, wav)
    assert ours.shape == ref.shape and ours.shape[1] == adapter.feature_lengths(length)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(ref)
    grads = []
    for out in (ours, ref):
        params = [p for p in adapter.conv_layers.parameters()]
        grads.append(torch.autograd.grad((out * weights).sum(), params, retain_graph=True, allow_unused=True))
    for name, a, b in zip([n for n, _ in adapter.conv_layers.named_parameters()], *grads):
        if b is None or (a is None and b.abs().max() < 1e-9):
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


def test_feature_encoder_waveform_gradient_and_bf16_autocast():
    torch.manual_seed(0)
    adapter = AudioAdapter(AudioConfig(**CASES["base kernels, group norm"], num_conv_pos_embedding_groups=2),
                           hidden_size=8)
    wav = torch.randn(2, 3200, requires_grad=True)
    (adapter.conv_features(wav) ** 2).sum().backward()
    ours = wav.grad.clone()
    wav.grad = None
    (plain(adapter, wav) ** 2).sum().backward()
    torch.testing.assert_close(ours, wav.grad, rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, ref = adapter.conv_features(wav[:, :1600]), plain(adapter, wav[:, :1600])
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - ref.float()).abs().max() < 0.05 * ref.float().abs().max()
    fast.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in adapter.conv_layers.parameters())


def test_wrong_shapes_and_too_short_clips_are_clear_errors():
    adapter = AudioAdapter(AudioConfig(**CASES["base kernels, group norm"], num_conv_pos_embedding_groups=2),
                           hidden_size=8)
    with pytest.raises(ValueError, match="batch, samples"):
        adapter.conv_features(torch.randn(3200))
    with pytest.raises(ValueError, match="batch, samples"):
        adapter.conv_features(torch.randn(2, 1, 3200))
    with pytest.raises(ValueError, match="receptive field"):
        adapter.conv_features(torch.randn(2, adapter.receptive_field - 1))
    assert adapter.conv_features(torch.randn(2, adapter.receptive_field)).shape == (2, 1, 24)
