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
    from selfsup.objectives.builders import backbone_config, size_of

    assert backbone_config("bert_mlm", "base").hidden_size == 768
    assert backbone_config("wav2vec2", "small", num_layers=2).num_layers == 2
    assert size_of("hubert", "tiny")["adapter"]["conv_stride"] == (5, 2, 2, 2, 2)
    with pytest.raises(ValueError, match="unknown model size"):
        size_of("bert_mlm", "huge")
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
