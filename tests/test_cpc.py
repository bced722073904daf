"""CPC: the patch grid is cut in row-major order with overlap, the loss is InfoNCE of W_k c_t against every real
latent of the batch (a plain loop over sequences, t and k), a context reads only the past, padding is neither a
target nor a negative, and the image recipe trains it."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.modalities.image_views import PatchGrid, ViewDataset
from selfsup.objectives.predictive.cpc import CPC, CPCConfig, info_nce
from selfsup.recipes.builders.two_view import image_encoder, two_view
from tests.test_image_recipes import two_view_argv


def reference_loss(z, context, predictors, real, first_offset, temperature=1.0):
    """Loops: for every sequence s, step t and offset k with z[s, t] and z[s, t + k] real, the cross-entropy of
    the target z[s, t + k] among every real latent of the batch, scored by z' . W_k c[s, t] / temperature."""
    bank = [(s, t) for s in range(z.shape[0]) for t in range(z.shape[1]) if real[s, t]]
    total, count = 0.0, 0
    for i, predictor in enumerate(predictors):
        k = first_offset + i
        for s in range(z.shape[0]):
            for t in range(z.shape[1] - k):
                if not (real[s, t] and real[s, t + k]):
                    continue
                prediction = predictor(context[s, t])
                scores = torch.stack([z[a, b] @ prediction for a, b in bank]) / temperature
                total = total - (scores[bank.index((s, t + k))] - torch.logsumexp(scores, 0))
                count += 1
    return total, count


def test_the_grid_is_overlapping_patches_in_row_major_order():
    grid = PatchGrid(32, grayscale_p=0.0)
    assert (grid.grid, grid.patch, grid.stride) == (7, 8, 4)
    x = torch.arange(3 * 32 * 32, dtype=torch.float32).view(3, 32, 32)
    for index in (0, 6, 7, 24, 48):
        row, col = divmod(index, 7)
        assert torch.equal(grid.cut(x, row, col), x[:, 4 * row:4 * row + 8, 4 * col:4 * col + 8])
    assert torch.equal(grid.cut(x, 0, 1)[:, :, :4], grid.cut(x, 0, 0)[:, :, 4:])     # neighbours share half
    small = PatchGrid(32, subcrop=0.75)                     # a 6-pixel window kept, zero around it
    torch.manual_seed(0)
    kept = small.cut(x + 1, 3, 3)
    assert int((kept != 0).sum()) == 3 * 6 * 6
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = ViewDataset([{"image": noise}], PatchGrid(32), seed=0)[0]["views"]
    assert len(out) == 49 and out[0].shape == (3, 8, 8)
    grey = out[10] * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[1], grey[2], atol=1e-5)   # the paper's


def test_the_loss_is_info_nce_against_every_real_latent_of_the_batch():
    torch.manual_seed(0)
    obj = CPC(image_encoder("resnet_tiny", "tiny", 32), CPCConfig(context_dim=6, num_offsets=3, first_offset=1))
    obj = obj.double()
    z = torch.randn(3, 6, obj.context.input_size, dtype=torch.float64)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True                                       # the second sequence has 4 real latents
    context = obj.contexts(z)
    loss, count, _ = info_nce(z, context, obj.predictors, padding, 1, temperature=0.5)
    ref, ref_count = reference_loss(z, context, obj.predictors, ~padding, 1, temperature=0.5)
    assert count == ref_count == (5 + 4 + 3) * 2 + (3 + 2 + 1)
    assert torch.allclose(loss.double(), ref, rtol=1e-6, atol=1e-6)
    moved = z.clone()
    moved[1, 4:] += 10.0                                        # padding: no target, no negative
    assert torch.allclose(info_nce(moved, context, obj.predictors, padding, 1, 0.5)[0], loss, rtol=1e-6)
    assert not torch.allclose(info_nce(moved, context, obj.predictors, None, 1, 0.5)[0], loss, rtol=1e-3)


def test_on_a_patch_grid_each_column_is_a_sequence_down_the_rows():
    torch.manual_seed(0)
    obj = two_view("cpc", "resnet_tiny", size="tiny", image_size=32).double().eval()
    assert (obj.config.first_offset, obj.config.num_offsets) == (2, 5)
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(3, 3, 2, 3, 8, 8, generator=g, dtype=torch.float64)   # (row, column, example, ...)
    views = [{"pixel_values": patches[i, j]} for i in range(3) for j in range(3)]
    out = obj({"views": views})
    encoder = obj.encoder()
    z = torch.stack([torch.stack([encoder.features({"pixel_values": patches[i, j]})[b] for i in range(3)])
                     for b in range(2) for j in range(3)])      # sequence b * 3 + j: column j of example b
    ref, count = reference_loss(z, obj.contexts(z), obj.predictors, torch.ones(6, 3, dtype=torch.bool), 2)
    assert out.num_targets == count == 6                        # offset 2 only: row 0 -> row 2, every column
    assert torch.allclose(out.loss.double(), ref, rtol=1e-6, atol=1e-6)
    columns = [views[3 * i + j] for j in range(3) for i in range(3)]   # the grid transposed: rows become columns
    assert not torch.allclose(obj({"views": columns}).loss.double(), ref, rtol=1e-4)
    with pytest.raises(ValueError, match="square grid"):
        obj({"views": views[:8]})


def test_a_context_reads_only_the_past():
    torch.manual_seed(0)
    obj = CPC(image_encoder("resnet_tiny", "tiny", 32), CPCConfig(context_dim=8, num_offsets=4))
    z = torch.randn(2, 10, obj.context.input_size)
    c = obj.contexts(z)
    for t in (0, 4, 8):
        later = z.clone()
        later[:, t + 1:] = torch.randn_like(later[:, t + 1:])
        moved = obj.contexts(later)
        assert torch.allclose(moved[:, :t + 1], c[:, :t + 1], atol=1e-6)
        assert not torch.allclose(moved[:, t + 1:], c[:, t + 1:], atol=1e-3)
    # on the grid: a patch below row i changes no context of rows <= i
    grid_obj = two_view("cpc", "resnet_tiny", size="tiny", image_size=32).eval()
    views = [{"pixel_values": torch.randn(2, 3, 8, 8)} for _ in range(16)]
    changed = list(views)
    changed[4 * 2 + 1] = {"pixel_values": torch.randn(2, 3, 8, 8)}          # row 2, column 1
    with torch.no_grad():
        before = grid_obj.contexts(grid_obj.latents({"views": views})[0])
        after = grid_obj.contexts(grid_obj.latents({"views": changed})[0])
    assert torch.allclose(before[:, :2], after[:, :2], atol=1e-6)
    assert not torch.allclose(before[:, 2:], after[:, 2:], atol=1e-4)


@pytest.mark.long
def test_the_image_recipe_trains_cpc_and_lists_it(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "cpc" in capsys.readouterr().out
    metrics = recipe.main(two_view_argv("cpc")(tmp_path / "run", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert math.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


def test_on_audio_the_latents_are_the_conv_frames_and_padding_is_left_out():
    from selfsup.recipes.builders.predictive import cpc_speech

    torch.manual_seed(0)
    obj = cpc_speech("tiny").double().eval()
    assert obj.adapter.pos_conv is None and len(obj.backbone.layers) == 0     # nothing mixes the frames
    wav = torch.randn(3, 4000, dtype=torch.float64)
    attention = torch.ones(3, 4000, dtype=torch.long)
    attention[1, 2500:] = 0
    wav[attention == 0] = 0.0
    batch = {"input_values": wav, "attention_mask": attention}
    z, padding = obj.latents(batch)
    assert z.shape[:2] == (3, obj.adapter.feature_lengths(4000)) and int((~padding[1]).sum()) == \
        obj.adapter.feature_lengths(2500)
    out = obj(batch)
    ref, count = reference_loss(z, obj.contexts(z), obj.predictors, ~padding, 1)
    assert out.num_targets == count and torch.allclose(out.loss.double(), ref, rtol=1e-6, atol=1e-6)
    later = wav.clone()
    later[:, 2000:] = torch.randn(3, 2000, dtype=torch.float64)   # a latent reads its receptive field alone
    hop = math.prod(obj.adapter.config.conv_stride)
    assert hop == 160                                                # the paper's strides: a latent per 10 ms
    frames = (2000 - obj.adapter.receptive_field) // hop + 1
    moved, _ = obj.latents({"input_values": later, "attention_mask": attention})
    assert torch.allclose(moved[:, :frames], z[:, :frames], atol=1e-9)
    assert not torch.allclose(moved, z, atol=1e-3)


def test_the_speech_recipe_trains_cpc(tmp_path, capsys):
    import importlib

    from tests.conftest import speech_argv

    recipe = importlib.import_module("selfsup.recipes.wav2vec2")
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "cpc = " in capsys.readouterr().out
    metrics = recipe.main(speech_argv(tmp_path / "run", "--method", "cpc", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert "probe/accuracy" in metrics and metrics["export/max_abs_hidden_diff"] <= 1e-4
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    assert "selfsup_cpc_audio" in (tmp_path / "run" / "export" / "config.json").read_text()
