"""wav2vec 2.0: span masking and negatives, parity with transformers' Wav2Vec2ForPreTraining, export round trip,
Gumbel temperature, a training step."""
import warnings

import numpy as np
import pytest
import torch
from tests.speech_helpers import NO_DROPOUT, assert_close, audio_overrides, jitter, padded_batch
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from selfsup.dropout import torch_dropout
from selfsup.objectives.masking import compute_span_mask, sample_negatives
from selfsup.recipes.builders.speech_quantised import wav2vec2 as build
from selfsup.objectives.speech_quantised.hf_wav2vec2 import feature_extractor_for, from_transformers, to_transformers



def make(stable: bool = False, seed: int = 0, **kw):
    """A tiny objective without dropout, its weights moved away from the init so that every weight matters."""
    torch.manual_seed(seed)
    return jitter(build("tiny", stable_layer_norm=stable, dropout_features=0.0, num_negatives=8,
                        audio=audio_overrides(stable), backbone=NO_DROPOUT, **kw))


def inputs(obj, seed: int = 0, mask_prob: float = 0.5):
    """Three waveforms, the second zero-padded after 2500 of 4000 samples; fixed masks and negatives."""
    batch, padding, g = padded_batch(obj, seed, mask_prob)
    batch["sampled_negative_indices"] = sample_negatives(batch["mask_time_indices"], obj.config.num_negatives, g)
    return batch, padding


# -- (a) masking -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prob,length,min_masks", [(0.65, 10, 2), (0.2, 3, 0), (0.05, 10, 2)])
def test_span_mask_fraction_matches_transformers(prob, length, min_masks):
    b, f, calls = 64, 200, 40
    lengths = torch.randint(50, f + 1, (b,), generator=torch.Generator().manual_seed(0))
    attention = (torch.arange(f)[None] < lengths[:, None]).long()
    ours = torch.stack([compute_span_mask((b, f), prob, length, lengths, min_masks, torch.Generator().manual_seed(s))
                        for s in range(calls)])
    np.random.seed(0)
    ref = np.stack([_compute_mask_indices((b, f), prob, length, attention, min_masks) for _ in range(calls)])
    assert abs(ours.float().mean().item() - ref.mean()) < 0.01
    assert not (ours & ~attention.bool()).any(), "padded frames are never masked"


def test_span_mask_spans_min_masks_and_seed():
    lengths = torch.tensor([100, 60, 3, 80])
    mask = compute_span_mask((4, 100), 0.0, 4, lengths, min_masks=2, generator=torch.Generator().manual_seed(1))
    assert not mask[2].any(), "a sequence shorter than a span gets none"
    for row, n in zip(mask, lengths):
        assert not row[n:].any()
        if n >= 4:
            assert 4 <= row.sum() <= 8, "min_masks=2 spans of 4 frames, possibly overlapping"
        runs = torch.diff(torch.cat([torch.tensor([0]), row.int(), torch.tensor([0])])).nonzero().view(-1, 2)
        assert ((runs[:, 1] - runs[:, 0]) >= 4).all(), "every masked run is at least one whole span"
    again = compute_span_mask((4, 100), 0.0, 4, lengths, min_masks=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)
    a = compute_span_mask((8, 300), 0.65, 10, generator=torch.Generator().manual_seed(2))
    b = compute_span_mask((8, 300), 0.65, 10, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError):
        compute_span_mask((2, 5), 0.5, 10)


def test_negatives_come_from_the_same_utterances_masked_frames():
    g = torch.Generator().manual_seed(0)
    b, f, k = 6, 120, 30
    mask = compute_span_mask((b, f), 0.65, 10, torch.tensor([120, 90, 120, 40, 120, 70]), 2, g)
    mask[5] = False
    mask[5, 7] = True  # one masked frame: no other frame to draw
    neg = sample_negatives(mask, k, g)
    assert neg.shape == (b, f, k) and neg.dtype == torch.long
    flat = mask.flatten()
    own = (torch.arange(b)[:, None] * f + torch.arange(f)[None, :])[:, :, None]
    for i in range(b - 1):
        rows = neg[i][mask[i]]
        assert ((rows >= i * f) & (rows < (i + 1) * f)).all(), "same utterance"
        assert flat[rows].all(), "masked frames only"
        assert (rows != own[i][mask[i]]).all(), "never the frame itself"
        assert len(rows.unique()) == mask[i].sum(), "every other masked frame can be drawn"
        assert (neg[i][~mask[i]] == i * f).all(), "unmasked frames point at the utterance start, as in HF"
    assert (neg[5, 7] == 5 * f + 7).all()


# -- (b) parity with transformers ------------------------------------------------------------------------------
@pytest.mark.parametrize("stable", [False, True], ids=["group-postLN", "layer-stableLN"])
def test_loss_and_hidden_states_equal_transformers(stable):
    obj = make(stable)
    hf = to_transformers(obj)
    batch, padding = inputs(obj)
    n = batch["mask_time_indices"].sum()
    lengths = torch.tensor([399, 400, 401, 2500, 4000, 12345])
    assert torch.equal(obj.adapter.feature_lengths(lengths), hf._get_feat_extract_output_lengths(lengths))
    assert obj.adapter.feature_lengths(4000) == padding.shape[1]
    assert torch.equal(~padding, hf._get_feature_vector_attention_mask(padding.shape[1], batch["attention_mask"]))
    with torch.no_grad():
        out = obj(batch)
        ref = hf(**batch)
        assert out.num_targets == n > 10
        assert_close(out.loss / n, ref.loss / n, "loss per masked frame")
        assert_close(out.loss, ref.loss, "summed loss", atol=1e-6 * ref.loss.abs().item())
        assert_close(out.metrics["contrastive_loss"], ref.contrastive_loss / n, "contrastive")
        assert_close(out.metrics["diversity_loss"] * n, ref.diversity_loss, "diversity")
        assert_close(out.metrics["codebook_perplexity"], ref.codevector_perplexity, "perplexity")
        hidden = obj.encoder()(batch)[0].last_hidden_state
        ref_hidden = hf.wav2vec2(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
        assert_close(hidden[~padding], ref_hidden[~padding], "last hidden state")


def test_negatives_equal_to_the_positive_are_masked_like_transformers():
    obj = make()
    with torch.no_grad():  # a nearly collapsed codebook: the argmax follows the bias, few codes in use
        obj.quantizer.weight_proj.weight.mul_(1e-3)
        obj.quantizer.weight_proj.bias.copy_(torch.arange(64.0).remainder(3) * 0.01)
        obj.quantizer.weight_proj.weight[:3].normal_(std=1.0)
    hf = to_transformers(obj)
    batch, _ = inputs(obj)
    with torch.no_grad():
        out, ref = obj(batch), hf(**batch)
        q = ref.projected_quantized_states.flatten(0, 1)
        mask = batch["mask_time_indices"]
        same = (q[batch["sampled_negative_indices"][mask]] == q[mask.flatten()][:, None]).all(-1)
    assert 0 < same.sum() < same.numel(), "the -inf path is exercised"
    assert torch.isfinite(out.loss)
    assert_close(out.loss / mask.sum(), ref.loss / mask.sum(), "loss per masked frame")


@pytest.mark.parametrize("regularised", [False, True])
def test_training_mode_equals_transformers_under_the_same_seed(regularised):
    """Same Gumbel noise (drawn in the same order), soft-distribution perplexity; with activation dropout and
    layerdrop, the same layers skipped and the same activations dropped (the draws come in transformers' order)."""
    obj = make(True)
    if regularised:
        obj.backbone.set_regularization(activation_dropout=0.3, layerdrop=0.5)
    hf = to_transformers(obj).train()
    back = from_transformers(hf).backbone.config
    assert (back.layerdrop, back.activation_dropout) == (hf.config.layerdrop, hf.config.activation_dropout) == (
        (0.5, 0.3) if regularised else (0.0, 0.0))
    obj.train()
    batch, _ = inputs(obj)
    with torch_dropout():   # torch's dropout draws what transformers draws (selfsup's CPU dropout does not)
        torch.manual_seed(5)
        out = obj(batch)
        torch.manual_seed(5)
        ref = hf(**batch)
    n = batch["mask_time_indices"].sum()
    assert_close(out.loss.detach() / n, ref.loss.detach() / n, "training loss per masked frame")
    assert_close(out.metrics["codebook_perplexity"], ref.codevector_perplexity.detach(), "soft perplexity")
    if regularised:                                     # ... and the regularisation changed the result
        obj.backbone.set_regularization(activation_dropout=0.0, layerdrop=0.0)
        torch.manual_seed(5)
        assert (obj(batch).loss - out.loss).abs() > 1e-4 * out.loss.abs()


# -- (c) export round trip -------------------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    from transformers import AutoFeatureExtractor, AutoModelForPreTraining, Wav2Vec2ForPreTraining

    obj = make()
    to_transformers(obj).save_pretrained(tmp_path)
    feature_extractor_for(obj).save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(loaded) is Wav2Vec2ForPreTraining
    fe = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert fe.sampling_rate == 16000 and fe.return_attention_mask and fe.do_normalize
    batch, padding = inputs(obj)
    back = from_transformers(tmp_path).eval()
    assert back.config == obj.config
    with torch.no_grad():
        ours = obj.encoder()(batch)[0].last_hidden_state
        theirs = loaded.wav2vec2(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
        assert_close(ours[~padding], theirs[~padding], "exported hidden states")
        again = back.encoder()(batch)[0].last_hidden_state
        assert_close(again, ours, "re-imported hidden states")
        n = batch["mask_time_indices"].sum()
        assert_close(back(batch).loss / n, obj(batch).loss / n, "re-imported loss")
        assert_close(loaded(**batch).loss / n, obj(batch).loss / n, "exported loss")


# -- (d) Gumbel temperature ------------------------------------------------------------------------------------
def test_gumbel_temperature_anneals_and_is_checkpointed():
    obj = build("tiny", gumbel_temperature_decay=0.999)
    assert obj.quantizer.temperature.item() == 2.0
    obj.on_step_end(1000)
    assert obj.quantizer.temperature.item() == pytest.approx(2.0 * 0.999 ** 1000)
    state = obj.state_dict()
    fresh = build("tiny", gumbel_temperature_decay=0.999)
    fresh.load_state_dict(state)
    assert fresh.quantizer.temperature.item() == pytest.approx(2.0 * 0.999 ** 1000)
    obj.on_step_end(10 ** 6)
    assert obj.quantizer.temperature.item() == 0.5, "floored at min_gumbel_temperature"


# -- (e) training ----------------------------------------------------------------------------------------------
def test_training_step_gives_finite_loss_sane_metrics_and_gradients():
    torch.manual_seed(0)
    obj = build("tiny", feature_penalty_weight=10.0).train()
    batch, _ = inputs(obj)
    batch = {k: batch[k] for k in ("input_values", "attention_mask")}  # the objective draws its own masks
    out = obj(batch)
    assert torch.isfinite(out.loss) and out.num_targets > 0
    m, gv = out.metrics, 2 * 32
    assert 0 <= m["contrastive_accuracy"] <= 1 and m["contrastive_loss"] > 0
    assert 1 <= m["codebook_perplexity"] <= gv and 0 <= m["diversity_loss"] < 1
    assert m["gumbel_temperature"] == 2.0 and m["feature_penalty"] > 0
    out.loss.backward()
    for name in ("quantizer.codevectors", "quantizer.weight_proj.weight", "mask_embedding",
                 "adapter.conv_layers.0.conv.weight", "adapter.pos_conv.conv.parametrizations.weight.original0",
                 "project_q.weight", "project_hid.weight"):
        grad = dict(obj.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_collapse_warning_is_given_once():
    obj = build("tiny").train()
    obj._last_perplexity = torch.tensor(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.on_step_end(50)  # too early to judge
    with pytest.warns(RuntimeWarning, match="diversity_loss_weight"):
        obj.on_step_end(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.on_step_end(201)  # once per run


def test_feature_grad_mult_scales_only_the_feature_encoder_gradient():
    obj = make(feature_penalty_weight=10.0)     # the penalty's gradient also passes through the multiplier
    batch, _ = inputs(obj)
    grads, losses = [], []
    for mult in (1.0, 0.1):
        obj.zero_grad()
        obj.adapter.config.feature_grad_mult = mult
        loss = obj(batch).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None})
    assert torch.equal(losses[0], losses[1])
    conv = [n for n in grads[0] if n.startswith("adapter.conv_layers.")]
    assert conv and set(grads[0]) == set(grads[1])
    for name, g in grads[0].items():
        want = g * 0.1 if name in conv else g
        torch.testing.assert_close(grads[1][name], want, rtol=1e-4, atol=1e-5, msg=name)
    obj.zero_grad()
    obj.adapter.config.feature_grad_mult = 0.0                  # frozen: no gradient at all, the rest unchanged
    obj(batch).loss.backward()
    for name, p in obj.named_parameters():
        if name in conv:
            assert p.grad is None, name
        elif name in grads[0]:
            torch.testing.assert_close(p.grad, grads[0][name], rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(ValueError, match="feature_grad_mult"):
        build("tiny", audio={"feature_grad_mult": -1.0})
