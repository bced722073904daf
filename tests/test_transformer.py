import pytest
import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder

TINY = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256)


def preset(**kw) -> TransformerConfig:
    return TransformerConfig(**{**TINY, **kw})


def make(**kw) -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(TransformerConfig(**{**TINY, "dropout": 0.0, "attention_dropout": 0.0,
                                                   **kw})).eval()


def nine_tokens(with_padding: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(3, 9, 64) inputs; with padding, the first example's last two tokens are padded."""
    x, pad = torch.randn(3, 9, 64), None
    if with_padding:
        pad = torch.zeros(3, 9, dtype=torch.bool)
        pad[0, 7:] = True
    return x, pad


def test_shapes_and_hidden_states():
    enc = make(final_norm=True, norm_first=True)
    x = torch.randn(3, 7, 64)
    out = enc(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 7, 64)
    assert len(out.hidden_states) == 3 and out.hidden_states[0] is x
    # last hidden state is the final norm of the last layer's output
    assert torch.allclose(out.last_hidden_state, enc.norm(out.hidden_states[-1]))
    assert enc(x).hidden_states is None


def test_padding_mask_hides_padded_tokens():
    enc = make()
    x = torch.randn(2, 6, 64)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    y1 = enc(x, pad).last_hidden_state
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, 64) * 10
    y2 = enc(x2, pad).last_hidden_state
    assert torch.allclose(y1[0, :4], y2[0, :4], atol=1e-5)
    assert torch.allclose(y1[1], y2[1])
    # without the mask the change leaks into the real tokens
    assert not torch.allclose(enc(x).last_hidden_state[0, :4], enc(x2).last_hidden_state[0, :4], atol=1e-3)


@pytest.mark.parametrize("with_padding", [False, True])
def test_causal_attention_sees_only_the_past(with_padding):
    enc = make(causal=True, norm_first=True, final_norm=True)
    x = torch.randn(1, 8, 64)
    pad = torch.zeros(1, 8, dtype=torch.bool) if with_padding else None
    x2 = x.clone()
    x2[0, 5:] += torch.randn(3, 64)
    y1, y2 = enc(x, pad).last_hidden_state, enc(x2, pad).last_hidden_state
    assert torch.allclose(y1[0, :5], y2[0, :5], atol=1e-5)
    assert not torch.allclose(y1[0, 5:], y2[0, 5:], atol=1e-3)


def test_pre_and_post_ln_differ():
    x = torch.randn(2, 5, 64)
    torch.manual_seed(0)
    post = make(norm_first=False)
    pre = make(norm_first=True)
    pre.load_state_dict(post.state_dict())
    assert not torch.allclose(pre(x).last_hidden_state, post(x).last_hidden_state, atol=1e-3)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 5, 64)
    grads = []
    for ckpt in (False, True):
        enc = make(gradient_checkpointing=ckpt).train()
        enc(x).last_hidden_state.square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_family_sizes_and_bad_configs():
    from selfsup.backbones.transformer import transformer_config
    from selfsup.objectives.masked.sizes import size_of

    assert transformer_config("base").hidden_size == 768
    assert transformer_config("small", "speech", num_layers=2).num_layers == 2
    assert transformer_config("tiny", "gpt2").causal and not transformer_config("tiny").causal
    assert size_of("data2vec_audio", "tiny")["adapter"]["conv_pos_kernel_size"] == 5
    with pytest.raises(ValueError, match="unknown model size"):
        transformer_config("huge")
    with pytest.raises(ValueError, match="unknown Transformer wiring"):
        transformer_config("tiny", "gpt9")
    with pytest.raises(ValueError, match="unknown family"):
        size_of("gpt9", "tiny")
    with pytest.raises(ValueError):
        TransformerConfig(hidden_size=65, num_heads=2)
    with pytest.raises(ValueError):
        TransformerConfig(activation="nope")


def test_bf16_autocast_runs_on_cpu():
    enc = make()
    x = torch.randn(2, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = enc.layers[0].attn(x, None)
        y = enc(x).last_hidden_state
    assert attn.dtype == torch.bfloat16  # the matmuls really ran in bf16
    assert torch.isfinite(y.float()).all()
    assert (y.float() - enc(x).last_hidden_state).abs().max() < 0.1


def test_layerdrop_skips_layers_only_in_training():
    torch.manual_seed(0)
    enc = TransformerEncoder(preset(dropout=0.0, attention_dropout=0.0, final_norm=True, norm_first=True,
                                    layerdrop=1.0))
    x = torch.randn(2, 5, 64)
    out = enc.train()(x, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, enc.norm(x))          # every layer skipped
    assert all(torch.equal(h, x) for h in out.hidden_states)
    assert not torch.allclose(enc.eval()(x).last_hidden_state, enc.norm(x))  # none in eval
    enc.set_regularization(layerdrop=0.5)
    enc.train()
    ran = {torch.allclose(enc(x).last_hidden_state, enc.norm(x)) for _ in range(40)}
    assert ran == {True, False}, "some forwards skip every layer, others do not"


def test_activation_dropout_is_set_and_checked():
    enc = TransformerEncoder(preset(activation_dropout=0.2))
    assert all(layer.act_drop.p == 0.2 for layer in enc.layers)
    enc.set_regularization(activation_dropout=0.0)
    assert enc.config.activation_dropout == 0.0 and all(layer.act_drop.p == 0.0 for layer in enc.layers)
    with pytest.raises(ValueError, match="layerdrop"):
        enc.set_regularization(layerdrop=1.5)
    with pytest.raises(ValueError, match="activation_dropout"):
        preset(activation_dropout=-0.1)


@pytest.mark.parametrize("norm_first,causal,with_padding", [(True, False, False), (True, False, True),
                                                            (False, False, True), (True, True, False),
                                                            (False, True, True)])
def test_outputs_from_computes_the_same_last_tokens(norm_first, causal, with_padding):
    """outputs_from: the last layer runs only the queries it is asked for; numbers and gradients are unchanged."""
    enc = make(norm_first=norm_first, final_norm=norm_first, causal=causal, num_layers=3)
    x, pad = nine_tokens(with_padding)
    grads = []
    for start in (0, 4):
        xi = x.clone().requires_grad_()
        out = enc(xi, pad, output_hidden_states=True, outputs_from=start)
        y = out.last_hidden_state
        assert y.shape == (3, 9 - start, 64) and out.hidden_states[-1].shape == (3, 9 - start, 64)
        if start:
            torch.testing.assert_close(y, full[:, start:], rtol=0, atol=1e-5)
        else:
            full = y.detach()
        (y[:, -5:] * torch.linspace(-1, 1, 64)).sum().backward()
        grads.append(torch.cat([xi.grad.flatten(), *(p.grad.flatten() for p in enc.parameters())]))
        enc.zero_grad()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5)
    # every layer skipped (layerdrop) or none at all: the output is still only the tokens asked for
    skipping = TransformerEncoder(preset(layerdrop=1.0, final_norm=True, norm_first=True)).train()
    torch.testing.assert_close(skipping(x, outputs_from=4).last_hidden_state, skipping.norm(x[:, 4:]))
    assert TransformerEncoder(preset(num_layers=0))(x, outputs_from=4).last_hidden_state.shape == (3, 5, 64)



@pytest.mark.parametrize("norm_first,causal,with_padding", [(True, False, False), (True, True, False),
                                                            (True, True, True), (False, False, True)])
def test_outputs_at_computes_the_same_tokens_per_example(norm_first, causal, with_padding):
    """outputs_at: per example the positions wanted (CLIP's end-of-text token, a class token): the last layer runs
    only those queries, with the causal and padding masks of their rows; outputs and gradients are those of the
    full run at the same positions."""
    enc = make(norm_first=norm_first, final_norm=norm_first, causal=causal, num_layers=3)
    x, pad = nine_tokens(with_padding)
    at = torch.tensor([[6], [0], [8]]) if not with_padding else torch.tensor([[6, 2], [0, 5], [8, 8]])
    weights = torch.linspace(-1, 1, 64)
    xi = x.clone().requires_grad_()
    full = enc(xi, pad).last_hidden_state
    picked = full[torch.arange(3)[:, None], at]
    (picked * weights).sum().backward()
    want = torch.cat([xi.grad.flatten(), *(p.grad.flatten() for p in enc.parameters() if p.grad is not None)])
    enc.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_()
    out = enc(xi, pad, output_hidden_states=True, outputs_at=at)
    assert out.last_hidden_state.shape == (3, at.shape[1], 64) and out.hidden_states[-1].shape == (3, at.shape[1], 64)
    torch.testing.assert_close(out.last_hidden_state, picked.detach(), rtol=0, atol=1e-5)
    (out.last_hidden_state * weights).sum().backward()
    got = torch.cat([xi.grad.flatten(), *(p.grad.flatten() for p in enc.parameters() if p.grad is not None)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        enc(x, outputs_from=1, outputs_at=at)

@pytest.mark.parametrize("norm_first", [True, False])
def test_key_value_cache_gives_the_full_runs_outputs(norm_first):
    """A prompt, then a chunk of 3 tokens, then 1 and 1 more through the cache: each output equals the same
    position of one causal run over all the tokens."""
    enc = make(norm_first=norm_first, final_norm=norm_first, causal=True, num_layers=3)
    x = torch.randn(2, 11, 64)
    with torch.no_grad():
        full = enc(x).last_hidden_state
        cache = enc.new_cache()
        pieces = [enc(x[:, a:b], cache=cache).last_hidden_state for a, b in ((0, 6), (6, 9), (9, 10), (10, 11))]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-5)
    assert cache[0]["k"].shape == (2, 2, 11, 32)
    with pytest.raises(ValueError, match="causal"):
        make(causal=False)(x, cache=make(causal=False).new_cache())
    with pytest.raises(ValueError, match="padding"):
        enc(x, torch.zeros(2, 11, dtype=torch.bool), cache=enc.new_cache())
    with pytest.raises(ValueError, match="inference"):
        enc.train()(x, cache=enc.new_cache())
    with pytest.raises(ValueError, match="inference"):
        enc.eval()(x, outputs_from=3, cache=enc.new_cache())


def test_first_qkv_replaces_the_first_layers_projection():
    enc = make(norm_first=True, final_norm=True)
    x = torch.randn(2, 6, 64)
    first = enc.layers[0]
    qkv = first.attn.qkv(first.norm1(x))
    torch.testing.assert_close(enc(x, first_qkv=qkv).last_hidden_state, enc(x).last_hidden_state, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pre-LN"):
        make(norm_first=False)(x, first_qkv=qkv)


def test_attention_kernel_choice_keeps_the_results():
    """On a CPU in bf16, short sequences attend with SDPA's math kernel (faster there than the flash kernel) with
    the flash kernel's results up to bf16 rounding; fp32 and long sequences keep torch's choice, untouched."""
    import contextlib

    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from selfsup.backbones.transformer import SHORT_SEQUENCE, attention_kernels

    q16, k16, v16 = torch.randn(3, 2, 2, 17, 32).to(torch.bfloat16).unbind(0)
    assert not isinstance(attention_kernels(q16, 17), contextlib.nullcontext)
    for q, n in ((q16.float(), 17), (q16, SHORT_SEQUENCE)):
        assert isinstance(attention_kernels(q, n), contextlib.nullcontext)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        flash = F.scaled_dot_product_attention(q16, k16, v16)
    with attention_kernels(q16, 17):
        ours = F.scaled_dot_product_attention(q16, k16, v16)
    exact = F.scaled_dot_product_attention(q16.float(), k16.float(), v16.float())
    assert (ours.float() - exact).abs().max() <= (flash.float() - exact).abs().max() + 1e-2
    torch.testing.assert_close(ours.float(), flash.float(), rtol=0, atol=2e-2)
    # a bf16 step (autocast) of a whole encoder: close to fp32, gradients finite
    enc = make(norm_first=True, final_norm=True)
    x = torch.randn(2, 17, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile(acc_events=True) as prof:
        y = enc(x).last_hidden_state
    kernels = {e.name for e in prof.events() if "scaled_dot_product" in e.name}
    assert "aten::_scaled_dot_product_attention_math" in kernels and not any("flash" in k for k in kernels), kernels
    assert (y.float() - enc(x).last_hidden_state).abs().max() < 0.1
    y.float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters())
    # fp32: exactly torch's own SDPA call
    attn = enc.layers[0].attn
    h = torch.randn(2, 17, 64)
    q, k, v = (t.transpose(1, 2) for t in attn.qkv(h).view(2, 17, 3, 2, 32).unbind(2))
    plain = attn.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 17, 64))
    assert torch.equal(attn(h, None), plain)


def test_quick_gelu_mlp_equals_the_formula():
    """CLIP's MLP, computed as silu(1.702 z) / 1.702 with the scales in the GEMMs: outputs and gradients equal
    fc2(z * sigmoid(1.702 z)), z = fc1(x), the plain way."""
    layer = make(activation="quick_gelu", norm_first=True).layers[0]
    x = torch.randn(3, 7, 64, requires_grad=True)
    fused = layer.mlp(x)
    plain = layer.fc2(layer.fc1(x) * torch.sigmoid(1.702 * layer.fc1(x)))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad((y * torch.linspace(-1, 1, 64)).sum(), [x, *layer.parameters()], allow_unused=True)
             for y in (fused, plain)]
    for a, b in zip(*grads):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert layer.quick_gelu and not make(activation="gelu").layers[0].quick_gelu


@pytest.mark.parametrize("norm,final_norm,with_padding", [("batchnorm", False, False), ("layernorm", True, True),
                                                          ("layernorm", False, False)])
def test_outputs_where_runs_the_last_mlp_on_the_chosen_tokens_only(norm, final_norm, with_padding):
    """outputs_where (a masked model's masked tokens): in training, under batch norm too, outputs, gradients and
    the batch-norm running statistics are those of the full run at the chosen tokens."""
    x, pad = nine_tokens(with_padding)
    where = torch.rand(3, 9, generator=torch.Generator().manual_seed(2)) < 0.4
    where[0, 0] = True
    if pad is not None:
        where &= ~pad
    weights = torch.linspace(-1, 1, 64)
    runs = []
    for chosen in (False, True):
        enc = make(norm=norm, norm_first=True, final_norm=final_norm, num_layers=3).train()
        xi = x.clone().requires_grad_()
        out = enc(xi, pad, outputs_where=where).last_hidden_state if chosen else enc(xi, pad).last_hidden_state[where]
        (out * weights).sum().backward()
        grads = torch.cat([xi.grad.flatten(), *(p.grad.flatten() for p in enc.parameters())])
        runs.append((out.detach(), grads, [b.clone() for b in enc.buffers()]))
    (full, want, stats), (got_out, got, got_stats) = runs
    assert got_out.shape == (int(where.sum()), 64)
    torch.testing.assert_close(got_out, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for a, b in zip(stats, got_stats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert make(norm_first=True).takes_outputs_where() and not make(norm_first=False).takes_outputs_where()
    with pytest.raises(ValueError, match="pre-LN"):
        make(norm_first=False)(x, outputs_where=where)
    with pytest.raises(ValueError, match="pre-LN"):
        make(norm="batchnorm", norm_first=True, final_norm=True)(x, outputs_where=where)
    with pytest.raises(ValueError, match=r"\(B, N\) = \(3, 9\) bool mask, got \(3, 8\)"):
        make(norm_first=True)(x, outputs_where=where[:, :8])
    with pytest.raises(ValueError, match="no cache"):
        make(norm_first=True)(x, outputs_where=where, output_hidden_states=True)
