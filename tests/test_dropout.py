"""The CPU dropout (selfsup/dropout.py): the statistics of nn.Dropout, its gradient, repeatability, and attention
with it equal to SDPA's."""
import pytest
import torch
import torch.nn.functional as F

from selfsup.dropout import LEVELS, Dropout, attention_with_dropout, dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_scale_and_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1_000_003)     # not a multiple of 4 (four numbers per 64-bit draw)
    y = dropout(x, p)
    kept = y != 0
    q = (LEVELS - round(p * LEVELS)) / LEVELS
    sd = (q * (1 - q) / x.numel()) ** 0.5
    assert abs(float(kept.float().mean()) - q) < 5 * sd
    assert torch.all(y[kept] == y[kept][0]) and float(y[kept][0]) == pytest.approx(1 / q, rel=1e-6)
    assert abs(float(y.mean()) - 1.0) < 5 * sd / q       # the expectation is the input
    # neighbours are independent: the four numbers of one draw are not correlated
    pairs = kept[: 1_000_000].view(-1, 4).float()
    corr = torch.corrcoef(pairs.t())
    assert (corr - torch.eye(4)).abs().max() < 0.01


def test_gradient_is_the_mask_times_the_scale_and_eval_is_identity():
    torch.manual_seed(1)
    x = torch.randn(7, 33, requires_grad=True)
    y = dropout(x, 0.3)
    g = torch.randn_like(y)
    y.backward(g)
    keep = y.detach() != 0
    scale = LEVELS / (LEVELS - round(0.3 * LEVELS))
    torch.testing.assert_close(y.detach(), torch.where(keep, x.detach() * scale, 0.0), rtol=0, atol=0)
    torch.testing.assert_close(x.grad, torch.where(keep, g * scale, 0.0), rtol=0, atol=0)
    layer = Dropout(0.3).eval()
    assert layer(x) is x and dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout(x, 1.5)
    assert isinstance(Dropout(0.1), torch.nn.Dropout) and Dropout(0.1).state_dict() == {}


def test_same_seed_same_mask_next_call_another():
    x = torch.randn(4, 64)
    torch.manual_seed(5)
    a, b = dropout(x, 0.5), dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.5), a) and not torch.equal(a, b)
    g = torch.Generator().manual_seed(2)
    mask, _ = keep_mask((4, 64), 0.5, generator=g)
    assert torch.equal(mask, keep_mask((4, 64), 0.5, generator=torch.Generator().manual_seed(2))[0])


@pytest.mark.parametrize("mask_kind", ["none", "causal", "padding", "padding+causal", "rows"])
def test_attention_without_dropout_equals_sdpa(mask_kind):
    """The math path itself (p = 0): output and gradients equal SDPA's, masks and causality included; a query
    that may attend to nothing gets zeros."""
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 9, 8
    q, k, v = (torch.randn(b, h, n, d, generator=g, requires_grad=True) for _ in range(3))
    mask, causal = None, mask_kind in ("causal", "padding+causal")
    if "padding" in mask_kind:
        mask = torch.ones(b, 1, 1, n, dtype=torch.bool)
        mask[1, ..., 6:] = False
    if mask_kind == "rows":   # other queries' rows, and one query with no key at all
        mask = torch.rand(b, 1, n, n, generator=g) > 0.4
        mask[0, 0, 3] = False
    grads = []
    outs = []
    for f in (lambda: attention_with_dropout(q, k, v, mask, causal, 0.0),
              lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)):
        y = f()
        if mask_kind == "rows":
            y = torch.nan_to_num(y)   # SDPA: NaN or 0 for the empty row, by version
        outs.append(y)
        (y * torch.linspace(-1, 1, d)).sum().backward()
        grads.append(torch.cat([t.grad.flatten() for t in (q, k, v)]))
        for t in (q, k, v):
            t.grad = None
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-5)
    if mask_kind == "rows":
        assert torch.equal(outs[0][0, :, 3], torch.zeros(h, d))


def test_attention_dropout_drops_probabilities():
    """With p > 0: the output is (mask · scale · softmax) @ v with the mask the same seed draws."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 4, generator=g) for _ in range(3))
    torch.manual_seed(3)
    y = attention_with_dropout(q, k, v, None, True, 0.25)
    torch.manual_seed(3)
    keep, scale = keep_mask((2, 2, 5, 5), 0.25)
    probs = torch.softmax((q @ k.transpose(-2, -1) / 2).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(),
                                                                  float("-inf")), -1)
    torch.testing.assert_close(y, (probs * keep * scale) @ v, rtol=0, atol=1e-6)
    assert not torch.equal(y, attention_with_dropout(q, k, v, None, True, 0.0))
    assert torch.equal(attention_with_dropout(q, k, v, None, True, 1.0), torch.zeros_like(y))


def test_torch_dropout_mode_draws_what_torch_draws():
    """Within torch_dropout(): F.dropout's draws, and a training Transformer layer equal to one whose attention
    runs through SDPA with its own dropout (the same seed); outside it, the cheap mask."""
    from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
    from selfsup.dropout import fast_dropout, torch_dropout

    x = torch.randn(3, 10, 16)
    enc = TransformerEncoder(TransformerConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                                               dropout=0.2, attention_dropout=0.3, causal=True, norm_first=True,
                                               final_norm=False)).train()
    assert fast_dropout()
    with torch_dropout():
        assert not fast_dropout()
        torch.manual_seed(0)
        ours = dropout(x, 0.2)
        torch.manual_seed(0)
        assert torch.equal(ours, F.dropout(x, 0.2, True))
        torch.manual_seed(1)
        a = enc(x).last_hidden_state
    assert fast_dropout()
    torch.manual_seed(0)
    assert not torch.equal(dropout(x, 0.2), ours)

    # the same layer by hand with SDPA's dropout, drawing in the same order
    layer = enc.layers[0]
    torch.manual_seed(1)
    h = layer.norm1(x)
    q, k, v = layer.attn.qkv(h).view(3, 10, 3, 2, 8).unbind(2)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.3,
                                       is_causal=True)
    h = x + F.dropout(layer.attn.out(y.transpose(1, 2).reshape(3, 10, 16)), 0.2, True)
    h = h + F.dropout(layer.fc2(layer.act(layer.fc1(layer.norm2(h)))), 0.2, True)
    torch.testing.assert_close(a, h, rtol=0, atol=1e-6)
