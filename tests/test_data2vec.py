"""data2vec audio: parity of the student with transformers' Data2VecAudioModel, export round trip, teacher targets
and loss against plain references, the EMA teacher and its schedule, a training step (also under DDP)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from tests.speech_helpers import NO_DROPOUT, assert_close, jitter, padded_batch
from torch import nn

from selfsup.objectives.ema import linear_momentum, update_momentum
from selfsup.recipes.builders.masked import data2vec_audio as build
from selfsup.objectives.masked.data2vec import masked_instance_norm
from selfsup.objectives.masked.hf_data2vec_audio import from_transformers, to_transformers

transformers = pytest.importorskip("transformers")

def make(seed: int = 0, audio: dict | None = None, **kw):
    """A tiny objective without dropout, every weight (the teacher's independently) moved away from the init, so
    that teacher and student differ and every weight matters."""
    torch.manual_seed(seed)
    return jitter(build("tiny", audio=audio, backbone=NO_DROPOUT, **kw))


def inputs(obj, seed: int = 0, mask_prob: float = 0.5):
    """Three waveforms, the second zero-padded after 2500 of 4000 samples, and a fixed span mask."""
    batch, padding, _ = padded_batch(obj, seed, mask_prob, min_masks=1)
    return batch, padding


def teacher_as_hf(obj):
    """The teacher's weights in a Data2VecAudioModel: an independent implementation of the teacher."""
    twin = make(audio=obj.adapter.config.to_dict(), **obj.config.to_dict())
    twin.adapter.load_state_dict(obj.teacher.adapter.state_dict())
    twin.backbone.load_state_dict(obj.teacher.backbone.state_dict())
    return to_transformers(twin)


def reference_targets(obj, batch, padding):
    """Plain reference: HF layer outputs of the teacher on the unmasked input, top K, each instance-normed over
    the real frames of its sequence (F.instance_norm on a slice), averaged."""
    hf, c = teacher_as_hf(obj), obj.config
    outs = []
    modules = [layer.feed_forward.output_dense if c.target_layer == "ffn" else layer for layer in hf.encoder.layers]
    handles = [m.register_forward_hook(lambda _m, _i, out: outs.append(out)) for m in modules]
    with torch.no_grad():
        if c.ema_transformer_only:  # the teacher Transformer on the student's projected conv features
            x = obj.adapter.embed(batch).x
            hf.encoder(x.clone(), attention_mask=~padding)
        else:
            hf(batch["input_values"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    y = torch.zeros_like(outs[0])
    for h in outs[-c.average_top_k_layers:]:
        for b in range(len(h)):
            n = int((~padding[b]).sum())
            y[b, :n] += F.instance_norm(h[b:b + 1, :n].transpose(1, 2)).transpose(1, 2)[0]
    return y / c.average_top_k_layers


# -- (a) parity of the student with transformers --------------------------------------------------------------
@pytest.mark.parametrize("audio", [{}, {"conv_bias": True, "conv_pos_kernel_size": 4}],
                         ids=["odd-pos-kernel", "conv-bias-even-pos-kernel"])
def test_student_equals_data2vec_audio_model(audio):
    obj = make(audio=audio)
    hf = to_transformers(obj)
    assert type(hf).__name__ == "Data2VecAudioModel"
    batch, padding = inputs(obj)
    lengths = torch.tensor([399, 400, 2500, 4000, 12345])
    assert torch.equal(obj.adapter.feature_lengths(lengths), hf._get_feat_extract_output_lengths(lengths))
    assert torch.equal(~padding, hf._get_feature_vector_attention_mask(padding.shape[1], batch["attention_mask"]))
    with torch.no_grad():
        tokens = obj.adapter.embed(batch)
        for mask in (None, batch["mask_time_indices"]):
            ours = obj.student(tokens, mask, output_hidden_states=True)
            ref = hf(batch["input_values"], attention_mask=batch["attention_mask"], mask_time_indices=mask,
                     output_hidden_states=True)
            assert len(ours.hidden_states) == len(ref.hidden_states) == 3
            for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
                assert_close(a, b, f"hidden state {i}, mask={mask is not None}")
            assert_close(ours.last_hidden_state, ref.last_hidden_state, "last hidden state")
            assert_close(tokens.targets["features"], ref.extract_features, "LayerNorm-ed conv features")
        unmasked = obj.encoder()(batch)[0].last_hidden_state
        assert (unmasked - ours.last_hidden_state).abs().max() > 0.1, "the mask embedding changes the output"
        assert_close(unmasked, hf(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state,
                     "Encoder (what evaluation uses)")


# -- (b) export round trip ------------------------------------------------------------------------------------
def test_export_round_trip(tmp_path):
    from transformers import AutoFeatureExtractor, AutoModel, Data2VecAudioModel

    from selfsup.objectives.masked.hf_data2vec_audio import feature_extractor_for

    obj = make(average_top_k_layers=1, loss_beta=0.25, audio={"conv_bias": True})
    to_transformers(obj).save_pretrained(tmp_path)
    feature_extractor_for(obj).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is Data2VecAudioModel
    assert loaded.config.mask_time_prob == 0.05, "HF's fine-tuning SpecAugment rate, not the pre-training one"
    assert AutoFeatureExtractor.from_pretrained(tmp_path).sampling_rate == 16000
    batch, padding = inputs(obj)
    back = from_transformers(tmp_path).eval()
    assert back.config == obj.config and back.adapter.config == obj.adapter.config
    assert back.backbone.config == obj.backbone.config
    with torch.no_grad():
        ours = obj.encoder()(batch)[0].last_hidden_state
        theirs = loaded(batch["input_values"], attention_mask=batch["attention_mask"]).last_hidden_state
        assert_close(ours, theirs, "exported hidden states")
        masked = loaded(batch["input_values"], attention_mask=batch["attention_mask"],
                        mask_time_indices=batch["mask_time_indices"]).last_hidden_state
        assert_close(obj.student(obj.adapter.embed(batch), batch["mask_time_indices"]).last_hidden_state, masked,
                     "exported mask embedding")
        assert_close(back.encoder()(batch)[0].last_hidden_state, ours, "re-imported hidden states")
    for (name, t), (_, s) in zip(back.teacher.named_parameters(), back.encoder().named_parameters()):
        assert torch.equal(t, s), f"imported teacher is a copy of the student ({name})"
    assert not any(p.requires_grad for p in back.teacher.parameters())
    from_transformers(loaded, mask_prob=0.3)  # from a model object, with overrides
    with pytest.raises(Exception, match="unknown data2vec settings"):
        from_transformers(loaded, no_such_setting=1)


# -- (c) targets and loss -------------------------------------------------------------------------------------
def test_masked_instance_norm_is_instance_norm_over_the_real_frames():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 8, generator=g) * 3 + 1
    padding = torch.arange(20)[None] >= torch.tensor([20, 13, 5])[:, None]
    ours = masked_instance_norm(x, padding)
    for b, n in enumerate((20, 13, 5)):
        ref = F.instance_norm(x[b:b + 1, :n].transpose(1, 2)).transpose(1, 2)[0]
        assert_close(ours[b, :n], ref, f"sequence {b}", atol=1e-5)
        assert (ours[b, n:] == 0).all()
    assert_close(masked_instance_norm(x), F.instance_norm(x.transpose(1, 2)).transpose(1, 2), "no padding", 1e-6)


@pytest.mark.parametrize("transformer_only,target_layer", [(True, "ffn"), (False, "ffn"), (True, "block")],
                         ids=["fairseq-default", "full-teacher", "block-outputs"])
def test_targets_equal_a_plain_reference(transformer_only, target_layer):
    obj = make(ema_transformer_only=transformer_only, ema_layers_only=transformer_only, target_layer=target_layer)
    batch, padding = inputs(obj)
    with torch.no_grad():
        ours = obj.targets(batch, obj.adapter.embed(batch))
    ref = reference_targets(obj, batch, padding)
    assert_close(ours[~padding], ref[~padding], "targets at every real frame")
    assert ours[~padding].std() > 0.5, "instance-normed layers averaged: not degenerate"
    # the targets come from the teacher: with the student's weights they would differ
    obj.reset_teacher()
    with torch.no_grad():
        assert (obj.targets(batch, obj.adapter.embed(batch)) - ours)[~padding].abs().max() > 0.01


@pytest.mark.parametrize("beta", [0.0, 0.25], ids=["l2", "smooth-l1"])
def test_loss_equals_a_plain_reference_and_the_teacher_gets_no_gradient(beta):
    obj = make(loss_beta=beta)
    hf = to_transformers(obj)
    batch, padding = inputs(obj)
    mask = batch["mask_time_indices"]
    out = obj(batch)
    with torch.no_grad():
        h = hf(batch["input_values"], attention_mask=batch["attention_mask"], mask_time_indices=mask)
        pred = h.last_hidden_state[mask] @ obj.regression_head.weight.T + obj.regression_head.bias
        y = reference_targets(obj, batch, padding)[mask]
        per_dim = (pred - y) ** 2 if beta == 0 else F.smooth_l1_loss(pred, y, reduction="none", beta=beta)
        ref = per_dim.sum() / 64 ** 0.5  # fairseq: sum over frames and dims, loss_scale None = 1 / sqrt(D)
    n = int(mask.sum())
    assert out.num_targets == n > 10
    assert_close(out.loss.detach() / n, ref / n, "loss per masked frame")
    assert_close(out.metrics["regression_loss"], ref / n, "logged loss")
    assert_close(out.metrics["target_var"], torch.sqrt(y.var(dim=0) + 1e-6).mean(), "target std (fairseq)")
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in obj.teacher.parameters())
    assert obj.regression_head.weight.grad.abs().sum() > 0


# -- (d) EMA teacher ------------------------------------------------------------------------------------------
def test_momentum_schedule():
    obj = build("tiny")
    c = obj.config
    assert (c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step) == (0.999, 0.9999, 30000)
    assert obj.momentum(0) == 0.999
    assert obj.momentum(15000) == pytest.approx(0.99945, abs=1e-12)
    assert obj.momentum(30000) == obj.momentum(10 ** 6) == 0.9999
    assert linear_momentum(5, 0.99, 0.99, 10) == 0.99
    assert linear_momentum(5, 0.9, 1.0, 0) == 1.0


def test_update_momentum_is_a_plain_ema_with_copied_prefixes():
    torch.manual_seed(0)
    student, teacher = (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)) for _ in range(2))
    student[1].running_mean.fill_(2.0)
    t0, s0 = teacher[0].weight.clone(), student[0].weight.clone()
    update_momentum(teacher, student, 0.9, copy_prefixes=("1.",))
    assert_close(teacher[0].weight, 0.9 * t0 + 0.1 * s0, "EMA", atol=1e-7)
    assert torch.equal(teacher[1].weight, student[1].weight), "copied prefix"
    assert torch.equal(teacher[1].running_mean, student[1].running_mean), "buffers are copied"


@pytest.mark.parametrize("layers_only", [True, False], ids=["fairseq-default", "full-teacher"])
def test_on_step_end_moves_the_teacher_by_the_scheduled_momentum(layers_only, tmp_path):
    obj = make(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=100, ema_transformer_only=layers_only,
               ema_layers_only=layers_only)
    names = ["backbone.layers.0.fc1.weight", "adapter.norm.weight", "adapter.pos_conv.convs.0.weight",
             "adapter.conv_layers.0.conv.weight"]
    teacher, student = dict(obj.teacher.named_parameters()), dict(obj.encoder().named_parameters())
    t0, s0 = {k: teacher[k].clone() for k in names}, {k: student[k].clone() for k in names}
    obj.on_step_end(50)
    m = 0.945
    assert obj.ema_decay.item() == pytest.approx(m)
    averaged = names if not layers_only else names[:2]  # fairseq copies pos-conv (and the shared conv encoder)
    for k in names:
        want = m * t0[k] + (1 - m) * s0[k] if k in averaged else s0[k]
        assert_close(teacher[k], want, k, atol=1e-6)  # float32 rounding; the move itself is ~1e-3
        assert (teacher[k] - t0[k]).abs().max() > 1e-4, f"{k} moved"
    # the teacher and the decay survive state_dict / load_state_dict (and safetensors, as in checkpoints)
    fresh = build("tiny", backbone=NO_DROPOUT, ema_transformer_only=layers_only, ema_layers_only=layers_only)
    fresh.load_state_dict(obj.state_dict())
    assert fresh.ema_decay.item() == pytest.approx(m)
    for (name, a), (_, b) in zip(fresh.teacher.named_parameters(), obj.teacher.named_parameters()):
        assert torch.equal(a, b), name
    assert "teacher.backbone.layers.0.fc1.weight" in obj.state_dict()
    save_model(obj, str(tmp_path / "model.safetensors"))
    again = build("tiny", backbone=NO_DROPOUT, ema_transformer_only=layers_only, ema_layers_only=layers_only)
    load_model(again, str(tmp_path / "model.safetensors"))
    assert torch.equal(again.teacher.backbone.layers[0].fc1.weight, teacher[names[0]])
    assert again.ema_decay.item() == pytest.approx(m)


# -- (e) training ---------------------------------------------------------------------------------------------
def test_training_step_gives_finite_loss_and_gradients_only_to_the_student():
    from selfsup.train import TrainingSettings, make_optimizer

    torch.manual_seed(0)
    obj = build("tiny").train()
    assert obj.training and not obj.teacher.training and not obj.teacher.adapter.dropout.training
    batch, _ = inputs(obj)
    batch = {k: batch[k] for k in ("input_values", "attention_mask")}  # the objective draws its own mask
    out = obj(batch)
    assert torch.isfinite(out.loss) and out.num_targets > 0
    m = out.metrics
    assert m["ema_decay"] == pytest.approx(0.999) and m["target_var"] > 0.1 and m["pred_var"] > 0
    out.loss.backward()
    params = dict(obj.named_parameters())
    for name in ("adapter.conv_layers.0.conv.weight", "adapter.pos_conv.convs.0.weight", "mask_embedding",
                 "backbone.layers.0.attn.qkv.weight", "regression_head.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for p in obj.teacher.parameters())
    args = TrainingSettings(weight_decay=0.01, learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.98, adam_epsilon=1e-6)
    optimized = {id(p) for g in make_optimizer(obj, args, torch.device("cpu")).param_groups for p in g["params"]}
    assert not any(id(p) in optimized for p in obj.teacher.parameters())
    assert all(id(p) in optimized for p in obj.encoder().parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: targets and loss stay float32
        out = obj(batch)
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


def test_ddp_accepts_the_frozen_teacher(tmp_path):
    """Two DDP steps (gloo, one process): no complaint about the teacher's parameters, which take no gradient."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        obj = build("tiny").train()
        model = DistributedDataParallel(obj)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        batch, _ = inputs(obj)
        batch = {k: batch[k] for k in ("input_values", "attention_mask")}
        before = obj.teacher.backbone.layers[0].fc1.weight.clone()
        for step in (1, 2):
            out = model(batch)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            obj.on_step_end(step)
            assert torch.isfinite(out.loss)
        assert not torch.equal(before, obj.teacher.backbone.layers[0].fc1.weight), "the teacher follows"
    finally:
        dist.destroy_process_group()


def test_collapse_warning_is_given_once():
    obj = build("tiny", collapse_after_steps=100).train()
    obj._last_target_var = torch.tensor(0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.on_step_end(50)  # too early to judge
    with pytest.warns(RuntimeWarning, match="min_target_var"):
        obj.on_step_end(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obj.on_step_end(201)  # once per run
