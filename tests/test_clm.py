"""Causal LM: the fused head + loss against plain cross-entropy, parity with GPT2LMHeadModel (loss, logits,
gradients, greedy decoding), sampling, and the export / import round trip."""
import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import SelfsupError
from selfsup.objectives.autoregressive.hf_gpt2 import compose_gpt
from selfsup.recipes.builders.autoregressive import gpt
from selfsup.objectives.autoregressive.clm import IGNORE_INDEX, CausalLanguageModeling, generate, linear_cross_entropy
from selfsup.objectives.autoregressive.hf_gpt2 import from_transformers, to_transformers

VOCAB = 300


def make(vocab: int = VOCAB, positions: int = 64, **kw) -> CausalLanguageModeling:
    torch.manual_seed(0)
    obj = gpt("tiny", vocab, max_positions=positions, dropout=0.0, attention_dropout=0.0, **kw).eval()
    for p in obj.parameters():  # move away from the init so that every weight matters
        p.data.add_(torch.randn_like(p) * 0.02)
    return obj


@pytest.mark.parametrize("chunk", [7, 1024])
def test_fused_head_and_loss_equal_plain_cross_entropy(chunk):
    torch.manual_seed(0)
    h = torch.randn(30, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    target = torch.randint(0, 50, (30,))
    target[[3, 11, 29]] = IGNORE_INDEX
    loss, correct = linear_cross_entropy(h, w, target, chunk)
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    logits = h2 @ w2.t()
    ref = F.cross_entropy(logits, target, reduction="sum", ignore_index=IGNORE_INDEX)
    assert torch.allclose(loss, ref, atol=1e-4, rtol=1e-6)
    valid = target != IGNORE_INDEX
    assert int(correct) == int(((logits.argmax(-1) == target) & valid).sum())
    (2.5 * loss).backward()
    (2.5 * ref).backward()
    assert torch.allclose(h.grad, h2.grad, atol=1e-5) and torch.allclose(w.grad, w2.grad, atol=1e-5)
    assert h.grad[3].abs().max() == 0  # an ignored row gets no gradient
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, target, chunk)[0], ref, atol=1e-4)


def test_loss_logits_and_gradients_equal_gpt2():
    obj = make()
    hf = to_transformers(obj)
    ids = torch.randint(0, VOCAB, (3, 40))
    out = obj({"input_ids": ids})
    ref = hf(input_ids=ids, labels=ids)
    assert out.num_targets == 3 * 39
    assert torch.allclose(out.loss / out.num_targets, ref.loss, atol=1e-5, rtol=0)
    assert torch.allclose(obj.logits({"input_ids": ids}), ref.logits, atol=1e-5, rtol=0)
    (out.loss / out.num_targets).backward()
    ref.loss.backward()
    h = hf.transformer
    pairs = [(obj.adapter.word_embeddings.weight, h.wte.weight.grad),  # embedding + tied head
             (obj.adapter.position_embeddings.weight, h.wpe.weight.grad),
             (obj.backbone.layers[0].attn.qkv.weight, h.h[0].attn.c_attn.weight.grad.t()),  # Conv1D: transposed
             (obj.backbone.layers[1].fc2.weight, h.h[1].mlp.c_proj.weight.grad.t()),
             (obj.backbone.norm.weight, h.ln_f.weight.grad)]
    for ours, theirs in pairs:
        assert torch.allclose(ours.grad, theirs, atol=1e-6), ours.shape


def test_padding_and_labels_match_gpt2():
    obj = make()
    hf = to_transformers(obj)
    ids = torch.randint(0, VOCAB, (3, 20))
    attention = torch.ones_like(ids)
    attention[1, 12:] = 0  # right padding
    attention[2, 5:] = 0
    labels = ids.masked_fill(attention == 0, IGNORE_INDEX)
    out = obj({"input_ids": ids, "attention_mask": attention})
    ref = hf(input_ids=ids, attention_mask=attention, labels=labels)
    assert out.num_targets == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(out.loss / out.num_targets, ref.loss, atol=1e-5, rtol=0)
    real = attention.bool()
    logits = obj.logits({"input_ids": ids, "attention_mask": attention})
    assert torch.allclose(logits[real], ref.logits[real], atol=1e-5, rtol=0)
    # explicit labels are taken as given
    labels2 = ids.clone()
    labels2[:, :10] = IGNORE_INDEX
    out2 = obj({"input_ids": ids, "labels": labels2})
    ref2 = hf(input_ids=ids, labels=labels2)
    assert out2.num_targets == 3 * 10 and torch.allclose(out2.loss / out2.num_targets, ref2.loss, atol=1e-5)


def test_last_id_is_never_an_input():
    """The backbone sees the first N - 1 ids; changing the last changes only its own target's loss."""
    obj = make()
    seen = []
    obj.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    ids = torch.randint(0, VOCAB, (2, 16))
    out = obj({"input_ids": ids})
    assert seen == [15]
    other = ids.clone()
    other[:, -1] = (ids[:, -1] + 1) % VOCAB
    h = obj.hidden_of_ids(ids[:, :-1])
    assert torch.equal(h, obj.hidden_of_ids(other[:, :-1]))
    assert not torch.equal(out.loss, obj({"input_ids": other}).loss)


def test_greedy_decoding_equals_gpt2_generate():
    obj = make(positions=32)
    hf = to_transformers(obj, eos_token_id=None)
    prompt = torch.randint(0, VOCAB, (2, 5))
    ours = generate(obj, prompt, max_new_tokens=12, greedy=True)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                         pad_token_id=0)
    assert torch.equal(ours, theirs)
    # beyond the context: the window slides and the output still grows
    assert generate(obj, prompt, max_new_tokens=40, greedy=True).shape == (2, 45)


def test_cached_generation_equals_recomputing_the_context():
    """The key/value cache changes no token: greedy and sampled, up to the context and past it (the window
    slides and is recomputed), against generate(use_cache=False) and the cached logits against the full ones."""
    obj = make(positions=32)
    prompt = torch.randint(0, VOCAB, (2, 5))
    for kwargs in (dict(greedy=True), dict(temperature=0.9, top_k=20)):
        runs = [generate(obj, prompt, 40, use_cache=c, generator=torch.Generator().manual_seed(3), **kwargs)
                for c in (True, False)]
        assert runs[0].shape == (2, 45) and torch.equal(runs[0], runs[1])
    ids = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        cache = obj.backbone.new_cache()
        steps = [obj.hidden_of_ids(ids[:, :8], cache=cache)] + [obj.hidden_of_ids(ids[:, i:i + 1], cache=cache)
                                                                 for i in range(8, 20)]
        torch.testing.assert_close(torch.cat(steps, 1), obj.hidden_of_ids(ids), rtol=0, atol=1e-5)
        with pytest.raises(ValueError, match="at least one token"):
            generate(obj, torch.zeros(2, 0, dtype=torch.long), 4)
        with pytest.raises(ValueError, match="exceed max_positions 32"):   # 20 cached + 13 > the 32 positions
            obj.hidden_of_ids(torch.randint(0, VOCAB, (2, 13)), cache=cache)


def test_sampling_respects_top_k_and_temperature():
    obj = make()
    prompt = torch.randint(0, VOCAB, (1, 6))
    with torch.no_grad():
        top5 = set(torch.topk(obj.logits({"input_ids": prompt})[0, -1], 5).indices.tolist())
    firsts = {int(generate(obj, prompt, 1, temperature=1.5, top_k=5, generator=torch.Generator().manual_seed(s))[0, -1])
              for s in range(40)}
    assert firsts <= top5 and len(firsts) > 1
    greedy = generate(obj, prompt, 8, greedy=True)
    assert torch.equal(generate(obj, prompt, 8, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)
    assert torch.equal(generate(obj, prompt, 8, temperature=0.0), greedy)
    a, b = (generate(obj, prompt, 8, generator=torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b)  # the same generator seed draws the same continuation


def test_bf16_autocast_loss_is_close_to_fp32():
    obj = make()
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        fp32 = obj({"input_ids": ids}).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj({"input_ids": ids})
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and abs(float(out.loss.detach() - fp32)) / float(fp32) < 0.02
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in obj.parameters())
    assert obj.adapter.word_embeddings.weight.grad.dtype == torch.float32


def test_export_reloads_with_auto_classes_and_imports_back(tmp_path):
    from transformers import AutoModelForCausalLM

    obj = make()
    to_transformers(obj, eos_token_id=0).save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "GPT2LMHeadModel"
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()  # still tied
    ids = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        assert float((reloaded(input_ids=ids).logits - obj.logits({"input_ids": ids})).abs().max()) < 1e-4
    back = from_transformers(str(tmp_path), dropout=0.0)
    assert back.state_dict().keys() == obj.state_dict().keys()
    for k, v in obj.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert back.max_positions == obj.max_positions and back.config.activation == "gelu_new"


def test_import_refuses_an_untied_head_and_other_models(tmp_path):
    hf = to_transformers(make())
    hf.config.tie_word_embeddings = False
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1.0)
    with pytest.raises(SelfsupError, match="not tied"):
        from_transformers(hf)
    with pytest.raises(SelfsupError, match="expected a GPT2LMHeadModel"):
        from_transformers(torch.nn.Linear(2, 2))


def test_export_refuses_what_gpt2_cannot_hold():
    from selfsup.backbones.transformer import TransformerConfig

    with pytest.raises(ValueError, match="causal"):
        compose_gpt(TransformerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), 50)
    post_ln = compose_gpt(TransformerConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                            causal=True), 50)
    with pytest.raises(SelfsupError, match="pre-LN"):
        to_transformers(post_ln)


def test_gpt2_layout_of_the_builder():
    obj = gpt("tiny", 100)
    cfg = obj.config
    assert cfg.causal and cfg.norm_first and cfg.final_norm and cfg.activation == "gelu_new"
    assert obj.adapter.token_type_embeddings is None and obj.adapter.word_embeddings.padding_idx is None
    # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 x layers)
    std = float(torch.cat([layer.fc2.weight.detach().flatten() for layer in obj.backbone.layers]).std())
    assert abs(std - 0.02 / (2 * cfg.num_layers) ** 0.5) < 0.002
