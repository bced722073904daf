"""PatchTST as the MAE class on series: loss, reconstruction and gradients equal transformers'
``PatchTSTForPretraining`` on the same series and the same mask (its own masking code, fed our noise), for batch
norm and LayerNorm, pre-LN and post-LN; the export reloads with the Auto classes; the adapter's pieces."""
from unittest import mock

import pytest
import torch

from selfsup.backbones.transformer import transformer_config
from selfsup.modalities.timeseries import SeriesAdapter, SeriesConfig, patchify, std_scale
from selfsup.objectives.masked.hf_patchtst import compose_patchtst, export_patchtst, to_patchtst
from selfsup.types import NOISE

B, L, C = 4, 35, 3


def objective(norm="batchnorm", pre=True, positions="sincos", mask_ratio=0.4, patch=6, stride=4):
    torch.manual_seed(0)
    series = SeriesConfig(num_channels=C, context_length=L, patch_length=patch, stride=stride, positions=positions)
    backbone = transformer_config(dict(hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32), "bert",
                                  norm=norm, norm_first=pre, final_norm=False, layer_norm_eps=1e-5, dropout=0.0,
                                  attention_dropout=0.0)
    return compose_patchtst(series, backbone, mask_ratio)


def series(seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L, dtype=torch.float32)[None, :, None]
    return 3.0 + torch.sin(t / 3 + torch.rand(B, 1, C, generator=g) * 6) * 2 + 0.3 * torch.randn(B, L, C, generator=g)


def hf_with_noise(model, values, noise):
    """``PatchTSTForPretraining`` whose own ``random_masking`` draws ``noise`` (B, C, N)."""
    with mock.patch("transformers.models.patchtst.modeling_patchtst.torch.rand", lambda *a, **k: noise.clone()):
        return model(past_values=values)


@pytest.mark.parametrize("norm, pre, positions", [("batchnorm", True, "sincos"), ("layernorm", True, "learned"),
                                                  ("batchnorm", False, "sincos")])
def test_loss_reconstruction_and_gradients_equal_patchtst_for_pretraining(norm, pre, positions):
    ours = objective(norm, pre, positions).train()
    theirs = to_patchtst(ours).train()
    values = series()
    n = ours.adapter.config.num_patches
    noise = torch.rand(B, C, n, generator=torch.Generator().manual_seed(5))
    mine = ours.predict({"past_values": values, NOISE: noise.reshape(B * C, n)})
    out = hf_with_noise(theirs, values, noise)
    torch.testing.assert_close(mine["loss"], out.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine["logits"].reshape(B, C, n, -1), out.prediction_output, rtol=1e-5, atol=1e-5)
    keep = int(n * (1 - 0.4))
    assert int(mine["mask"].sum()) == B * C * (n - keep), "int(N (1 - ratio)) patches stay visible, as PatchTST"
    mine["loss"].backward()
    out.loss.backward()
    torch.testing.assert_close(ours.adapter.patch_embed.weight.grad,
                               theirs.model.encoder.embedder.input_embedding.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.backbone.layers[0].fc1.weight.grad,
                               theirs.model.encoder.layers[0].ff[0].weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.decoder_pred.weight.grad, theirs.head.linear.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm, pre", [("batchnorm", True), ("layernorm", True), ("batchnorm", False)])
def test_the_training_step_equals_patchtst_for_pretraining(norm, pre):
    """The training forward (pre-LN: the last MLP on the masked patches alone, batch-norm statistics over every
    patch) gives PatchTST's loss, gradients and batch-norm running statistics."""
    ours = objective(norm, pre).train()
    theirs = to_patchtst(ours).train()
    values = series(2)
    n = ours.adapter.config.num_patches
    noise = torch.rand(B, C, n, generator=torch.Generator().manual_seed(6))
    out = ours({"past_values": values, NOISE: noise.reshape(B * C, n)})
    ref = hf_with_noise(theirs, values, noise)
    torch.testing.assert_close(out.loss / out.num_targets, ref.loss, rtol=1e-5, atol=1e-6)
    (out.loss / out.num_targets).backward()
    ref.loss.backward()
    for layer in (0, 1):
        torch.testing.assert_close(ours.backbone.layers[layer].fc1.weight.grad,
                                   theirs.model.encoder.layers[layer].ff[0].weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.decoder_pred.weight.grad, theirs.head.linear.weight.grad, rtol=1e-4, atol=1e-6)
    if norm == "batchnorm":
        torch.testing.assert_close(ours.backbone.layers[1].norm2.running_var,
                                   theirs.model.encoder.layers[1].norm_sublayer3.batchnorm.running_var)


def test_forward_scores_the_masked_patches_only():
    ours = objective().eval()
    values = series()
    n = ours.adapter.config.num_patches
    noise = torch.rand(B * C, n, generator=torch.Generator().manual_seed(3))
    out = ours({"past_values": values, NOISE: noise})
    pred = ours.predict({"past_values": values, NOISE: noise})
    torch.testing.assert_close(out.loss / out.num_targets, pred["loss"])
    assert out.num_targets == int(pred["mask"].sum())


def test_each_channel_row_draws_its_own_mask_from_its_example_seed():
    ours = objective()
    values = series()
    seeds = torch.tensor([11, 12, 13, 14])
    tokens = ours.adapter.embed({"past_values": values})
    mask, _ = ours.replace_masking({"past_values": values, "example_seeds": seeds}, tokens)
    alone = {"past_values": values[2:3], "example_seeds": seeds[2:3]}
    mask1, _ = ours.replace_masking(alone, ours.adapter.embed(alone))
    assert torch.equal(mask1, mask[2 * C:3 * C]), "an example's channel masks do not depend on its batch"
    assert not all(torch.equal(mask[i], mask[i + 1]) for i in range(C - 1)), "channels are masked independently"


def test_patchify_and_scaling_are_patchtsts():
    from transformers import PatchTSTConfig
    from transformers.models.patchtst.modeling_patchtst import PatchTSTPatchify, PatchTSTStdScaler

    values = series()
    config = PatchTSTConfig(num_input_channels=C, context_length=L, patch_length=6, patch_stride=4)
    torch.testing.assert_close(patchify(values, 6, 4), PatchTSTPatchify(config)(values))
    ours = std_scale(values, torch.ones_like(values, dtype=torch.bool), 1e-5)
    theirs = PatchTSTStdScaler(config)(values, torch.ones_like(values))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_adapter_rows_seeds_and_features():
    adapter = SeriesAdapter(SeriesConfig(num_channels=C, context_length=L, patch_length=6, stride=4), 8)
    batch = {"past_values": series(), "example_seeds": torch.tensor([5, 6, 7, 8])}
    tokens = adapter.embed(batch)
    assert tokens.x.shape == (B * C, 8, 8) and tokens.padding_mask is None
    seeds = adapter.row_seeds(batch)
    assert len(seeds) == B * C and len(set(seeds.tolist())) == B * C
    rows = torch.arange(B * C * 2, dtype=torch.float32).reshape(B * C, 2)
    joined = adapter.example_features(rows)
    assert joined.shape == (B, C * 2) and torch.equal(joined[1], rows[C:2 * C].flatten())
    back = adapter.unscale(tokens.targets["patches"], tokens.structure)
    torch.testing.assert_close(back, patchify(batch["past_values"], 6, 4))


@pytest.mark.parametrize("bad, message", [
    (lambda v: v[:, :5], "shorter than one patch"),
    (lambda v: torch.cat([v, v], dim=1), "longer than context_length"),
    (lambda v: v.index_fill(1, torch.tensor([3]), float("nan")), "NaN or inf"),
    (lambda v: v[..., :2], "channels"),
])
def test_bad_series_stop_with_one_line(bad, message):
    adapter = SeriesAdapter(SeriesConfig(num_channels=C, context_length=L, patch_length=6, stride=4), 8)
    with pytest.raises(ValueError, match=message):
        adapter.embed({"past_values": bad(series())})


def test_constant_series_scale_without_dividing_by_zero():
    adapter = SeriesAdapter(SeriesConfig(num_channels=C, context_length=L, patch_length=6, stride=4), 8)
    tokens = adapter.embed({"past_values": torch.full((B, L, C), 7.0)})
    assert torch.isfinite(tokens.x).all() and tokens.targets["patches"].abs().max() == 0


def test_export_reloads_as_patchtst_model_and_pretraining(tmp_path):
    from transformers import AutoModel, PatchTSTForPretraining, PatchTSTModel

    ours = objective()
    with torch.no_grad():
        ours.train()({"past_values": series(2)})   # batch-norm statistics that are not the initial ones
    batch = {"past_values": series()}
    figures = export_patchtst(ours, tmp_path / "export", batch)
    assert figures["export/max_abs_hidden_diff"] <= 1e-4
    model = AutoModel.from_pretrained(tmp_path / "export")
    assert isinstance(model, PatchTSTModel)
    assert isinstance(PatchTSTForPretraining.from_pretrained(tmp_path / "export" / "pretraining"),
                      PatchTSTForPretraining)
