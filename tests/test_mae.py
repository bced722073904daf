"""MAE: parity with transformers' ViTMAEForPreTraining (loss, logits, mask, latent), the export (ViTModel +
ViTMAEForPreTraining + image processor) through the Auto classes and the feature-extraction pipeline, the import
round trip, the masking, the reconstruction picture, and learning on a fixed batch."""
import numpy as np
import pytest
import torch
from tests.graph_checks import racy_gathers

from selfsup.backbones.hf_vit import encoder_to_vit, vit_image_processor, vit_to_encoder
from selfsup.errors import SelfsupError
from selfsup.modalities.image import unpatchify
from selfsup.modalities.image import reconstruction_grid
from selfsup.recipes.builders.masked import mae as build
from selfsup.objectives.masked.hf_mae import PRETRAINING_DIR, export_mae, mae_from_transformers, mae_to_transformers
from selfsup.objectives.masked.mae import mae_loss, num_visible, patch_targets
from selfsup.objectives.masked.sizes import MAE_TRAINING, mae_learning_rate, size_of
from selfsup.types import Encoder

transformers = pytest.importorskip("transformers")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def make(seed: int = 0, **kw):
    """A tiny MAE (32 x 32 images, patch 8: 16 patches, 4 visible), every weight moved off its init; eval mode."""
    torch.manual_seed(seed)
    obj = build("tiny", **kw)
    with torch.no_grad():
        for p in obj.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return obj.eval()


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def noise(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 16, generator=torch.Generator().manual_seed(seed))


# -- parity with transformers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_logits_and_mask_equal_vitmae(norm_pix_loss):
    obj = make(norm_pix_loss=norm_pix_loss)
    hf = mae_to_transformers(obj)
    assert type(hf).__name__ == "ViTMAEForPreTraining" and hf.config.norm_pix_loss is norm_pix_loss
    assert (hf.config.mask_ratio, hf.config.decoder_num_hidden_layers, hf.config.patch_size) == (0.75, 2, 8)
    batch = {"pixel_values": images(), "noise": noise()}
    with torch.no_grad():
        ref = hf(**batch)
        out = obj(batch)
        full = obj.predict(batch)
        latent = hf.vit(**batch).last_hidden_state
    assert out.num_targets == 3 * 12 == int(ref.mask.sum())
    assert abs(float(out.loss) / out.num_targets - float(ref.loss)) <= 1e-5
    assert abs(float(full["loss"]) - float(ref.loss)) <= 1e-5
    assert (full["logits"] - ref.logits).abs().max() <= 1e-5
    assert torch.equal(full["mask"], ref.mask) and torch.equal(full["ids_restore"], ref.ids_restore)
    assert (full["latent"] - latent).abs().max() <= 1e-5 and full["latent"].shape == (3, 1 + 4, 64)
    # the loss written out: MSE per patch over its (normalised) pixels, averaged over the dropped patches
    target = hf.patchify(batch["pixel_values"])
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    plain = (((ref.logits - target) ** 2).mean(-1) * ref.mask).sum() / ref.mask.sum()
    assert abs(float(plain) - float(out.loss) / out.num_targets) <= 1e-5


@pytest.mark.parametrize("decoder_layers", [2, 1])
def test_training_step_gradients_equal_vitmaes(decoder_layers):
    """forward's shortcuts (visible patches alone embedded, the first decoder layer's QKV of the mask tokens once
    per patch position, the last one's queries only at the dropped patches) leave the loss and every gradient
    of a training step as ``ViTMAEForPreTraining``'s (one layer: first and last at once)."""
    import copy

    from selfsup.objectives.masked.hf_mae import to_vitmae_state_dict

    obj = make(decoder={"num_layers": decoder_layers}).train()
    hf = mae_to_transformers(obj).train()
    batch = {"pixel_values": images(), "noise": noise()}
    out = obj(batch)
    (out.loss / out.num_targets).backward()
    ref = hf(**batch).loss
    ref.backward()
    assert abs(out.loss.item() / out.num_targets - ref.item()) <= 1e-6
    grads = copy.deepcopy(obj)
    with torch.no_grad():
        for g, p in zip(grads.parameters(), obj.parameters()):
            g.copy_(p.grad if p.grad is not None else torch.full_like(p, float("nan")))
    ours = to_vitmae_state_dict(grads)
    compared = 0
    for name, p in hf.named_parameters():
        if p.grad is None:
            assert not p.requires_grad or torch.isnan(ours[name]).all(), name
            continue
        scale = float(p.grad.abs().max()) + 1e-3
        assert (ours[name] - p.grad).abs().max() <= 1e-5 * scale, name
        compared += 1
    layers = obj.backbone.config.num_layers + decoder_layers     # our fused QKV is HF's q, k and v: 4 more each
    assert compared == sum(p.grad is not None for p in obj.parameters()) + 4 * layers


def test_encoder_equals_vit_model_for_sincos_and_learned_positions():
    for positions in ("sincos", "learned"):
        obj = make(image={"positions": positions})
        vit = encoder_to_vit(obj.encoder())
        assert type(vit).__name__ == "ViTModel" and vit.config.pooler_act == "linear"
        x = images()
        with torch.no_grad():
            ours = obj.encoder()({"pixel_values": x})[0].last_hidden_state
            out = vit(pixel_values=x)
            theirs = out.last_hidden_state
        assert ours.shape == (3, 17, 64) and (ours - theirs).abs().max() <= 1e-5, positions
        assert torch.allclose(out.pooler_output, theirs[:, 0], atol=1e-6), "the pooler passes the class token on"
        back = vit_to_encoder(vit)
        assert back.adapter.config.positions == positions
        with torch.no_grad():
            again = back({"pixel_values": x})[0].last_hidden_state
        assert torch.equal(again, ours), positions


# -- export through the Auto classes and the pipeline ---------------------------------------------------------
def test_export_loads_with_auto_classes_and_the_pipeline(tmp_path):
    from PIL import Image

    obj = make()
    processor = vit_image_processor(32, MEAN, STD)
    figures = export_mae(obj, tmp_path, processor, images(2))
    assert set(figures) == {"export/max_abs_hidden_diff", "export/max_abs_logit_diff", "export/loss_diff"}
    assert max(figures.values()) <= 1e-4
    mae = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / PRETRAINING_DIR).eval()
    vit = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert type(mae).__name__ == "ViTMAEForPreTraining" and type(vit).__name__ == "ViTModel"
    loaded = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    assert "ViTImageProcessor" in type(loaded).__name__
    assert list(loaded.image_mean) == list(MEAN) and loaded.size["height"] == 32

    batch = {"pixel_values": images(), "noise": noise()}
    with torch.no_grad():
        ref, out = mae(**batch), obj(batch)
        assert abs(float(out.loss) / out.num_targets - float(ref.loss)) <= 1e-5
        ours = obj.encoder()({"pixel_values": batch["pixel_values"]})[0].last_hidden_state
        assert (ours - vit(pixel_values=batch["pixel_values"]).last_hidden_state).abs().max() <= 1e-4

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))   # resized to 32 x 32
    pixels = loaded(images=picture, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    extract = transformers.pipeline("image-feature-extraction", model=str(tmp_path), device="cpu")
    features = torch.tensor(extract(picture))
    with torch.no_grad():
        ours = obj.encoder()({"pixel_values": pixels})[0].last_hidden_state
    assert features.shape == ours.shape == (1, 17, 64)
    assert (features - ours).abs().max() <= 1e-4


def test_import_round_trip(tmp_path):
    obj = make(norm_pix_loss=False, mask_ratio=0.5)
    export_mae(obj, tmp_path)
    batch = {"pixel_values": images(), "noise": noise()}
    for source in (tmp_path, tmp_path / PRETRAINING_DIR, mae_to_transformers(obj)):
        back = mae_from_transformers(source).eval()
        assert back.config == obj.config
        assert back.backbone.config == obj.backbone.config and back.decoder.config == obj.decoder.config
        assert back.adapter.config == obj.adapter.config
        mine, theirs = obj.state_dict(), back.state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        with torch.no_grad():
            assert float(back(batch).loss) == pytest.approx(float(obj(batch).loss), abs=1e-6)
    back = mae_from_transformers(tmp_path, norm_pix_loss=True, dropout=0.1)
    assert back.config.norm_pix_loss and back.backbone.config.dropout == 0.1
    # a plain transformers ViTMAE (no selfsup settings): its mask_ratio and norm_pix_loss, sin-cos positions
    plain = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16,
        patch_size=4, decoder_hidden_size=16, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
        decoder_intermediate_size=32, mask_ratio=0.6)).eval()
    fresh = mae_from_transformers(plain).eval()
    assert fresh.config.mask_ratio == 0.6 and not fresh.config.norm_pix_loss
    assert fresh.adapter.config.positions == "sincos" and fresh.adapter.config.num_patches == 16
    x, z = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    with torch.no_grad():
        assert abs(float(fresh.predict({"pixel_values": x, "noise": z})["loss"])
                   - float(plain(pixel_values=x, noise=z).loss)) <= 1e-5
    encoder = vit_to_encoder(tmp_path)
    assert isinstance(encoder, Encoder) and encoder.adapter.config.positions == "sincos"
    with torch.no_grad():
        assert torch.equal(encoder({"pixel_values": batch["pixel_values"]})[0].last_hidden_state,
                           obj.encoder()({"pixel_values": batch["pixel_values"]})[0].last_hidden_state)


def test_clear_errors(tmp_path):
    obj = make()
    encoder_to_vit(obj.encoder()).save_pretrained(tmp_path / "vit")
    with pytest.raises(SelfsupError, match="model type 'vit'"):
        mae_from_transformers(tmp_path / "vit")
    with pytest.raises(SelfsupError, match="expected a ViTMAEForPreTraining"):
        mae_from_transformers(encoder_to_vit(obj.encoder()))
    with pytest.raises(SelfsupError, match="shares"):
        mae_to_transformers(make(decoder={"layer_norm_eps": 1e-6}))
    with pytest.raises(SelfsupError, match="class token"):
        encoder_to_vit(make(image={"class_token": False}).encoder())
    with pytest.raises(SelfsupError, match="pre-LN"):
        mae_to_transformers(make(backbone={"norm_first": False, "final_norm": False}))
    with pytest.raises(ValueError, match="noise has shape"):
        obj({"pixel_values": images(), "noise": torch.rand(3, 15)})


# -- masking ---------------------------------------------------------------------------------------------------
def test_masking_keeps_int_n_times_one_minus_ratio_patches():
    x = images(4)
    for ratio in (0.75, 0.6, 0.3, 0.0):
        obj = make(mask_ratio=ratio)
        k = num_visible(16, ratio)
        assert k == int(16 * (1 - ratio))
        masking = obj.draw_masking({"pixel_values": x}, obj.adapter.config.num_patches, torch.device("cpu"))
        assert masking.num_visible == k and torch.equal((~masking.mask).sum(1), torch.full((4,), k))
        with torch.no_grad():
            full = obj.predict({"pixel_values": x})
            out = obj({"pixel_values": x})
        assert full["latent"].shape[1] == 1 + k and out.num_targets == 4 * (16 - k)


def test_per_example_seeds_give_the_same_mask_in_any_batch():
    obj = make()
    x = images(4)
    a = obj.draw_masking({"pixel_values": x, "example_seeds": torch.tensor([11, 12, 13, 14])}, obj.adapter.config.num_patches, torch.device("cpu")).mask
    b = obj.draw_masking({"pixel_values": x[:2], "example_seeds": torch.tensor([13, 11])}, obj.adapter.config.num_patches, torch.device("cpu")).mask
    c = obj.draw_masking({"pixel_values": x[:1], "example_seeds": torch.tensor([14])}, obj.adapter.config.num_patches, torch.device("cpu")).mask
    assert torch.equal(b[0], a[2]) and torch.equal(b[1], a[0]) and torch.equal(c[0], a[3])
    assert not torch.equal(a[0], a[1])
    # a split batch gives the same summed loss as the whole one (what N processes need)
    with torch.no_grad():
        whole = obj({"pixel_values": x, "example_seeds": torch.tensor([11, 12, 13, 14])})
        parts = [obj({"pixel_values": x[i:i + 2], "example_seeds": torch.tensor([11 + i, 12 + i])}) for i in (0, 2)]
    assert float(whole.loss) == pytest.approx(sum(float(p.loss) for p in parts), rel=1e-6)
    assert whole.num_targets == sum(p.num_targets for p in parts)


def test_loss_only_over_dropped_patches():
    obj = make()
    batch = {"pixel_values": images(), "noise": noise()}
    with torch.no_grad():
        full = obj.predict(batch)
        out = obj(batch)
    pixels = obj.adapter.embed(batch).targets["pixels"]
    mask = full["mask"].bool()
    total, count = mae_loss(full["logits"], pixels, mask, norm_pix_loss=True)
    assert count == out.num_targets and abs(float(total) - float(out.loss)) <= 1e-4
    changed = full["logits"].clone()
    changed[~mask] += 100.0 * torch.randn_like(changed[~mask])
    assert torch.equal(mae_loss(changed, pixels, mask, True)[0], total)
    changed[mask] += 0.1
    assert not torch.equal(mae_loss(changed, pixels, mask, True)[0], total)
    # the pixels of visible patches are no target: the decoder's output there gets no gradient
    latent, _, masking = obj.encode(batch)
    h = obj.decode(latent, masking).detach().requires_grad_()
    start = 1 + masking.num_visible
    pred = obj.decoder_pred(h[:, start:])
    target = patch_targets(obj.adapter.embed(batch).targets["pixels"], True)
    loss = (pred - torch.gather(target, 1, masking.ids_shuffle[:, masking.num_visible:, None].expand(
        -1, -1, target.shape[-1]))).pow(2).mean(-1).sum()
    assert abs(float(loss.detach()) - float(out.loss)) <= 1e-4
    loss.backward()
    assert (h.grad[:, :start] == 0).all() and (h.grad[:, start:] != 0).any()


def test_backward_has_no_racy_gathers():
    obj = make().train()
    out = obj({"pixel_values": images(), "example_seeds": torch.tensor([1, 2, 3])})
    assert racy_gathers(out.loss) == []
    out.loss.backward()
    assert obj.mask_token.grad is not None and obj.adapter.position_embeddings.grad is None
    assert obj.backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0


# -- picture ---------------------------------------------------------------------------------------------------
def test_reconstruction_and_grid(tmp_path):
    from PIL import Image

    obj = make()
    x = images(5)
    pics = obj.reconstruct({"pixel_values": x, "noise": noise(5)})
    assert all(pics[k].shape == (5, 3, 32, 32) for k in ("original", "masked", "reconstruction", "pasted"))
    assert torch.equal(pics["original"], x)
    visible = ~pics["mask"]
    keep = visible.view(5, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand(-1, 3, -1, -1)
    assert torch.equal(pics["pasted"][keep], x[keep]) and torch.equal(pics["masked"][keep], x[keep])
    assert (pics["masked"][~keep] == 0).all()
    # norm_pix_loss: the prediction is un-normalised with each patch's own mean and variance
    with torch.no_grad():
        logits = obj.predict({"pixel_values": x, "noise": noise(5)})["logits"]
    patches = obj.adapter.embed({"pixel_values": x}).targets["pixels"]
    expected = logits * (patches.var(-1, keepdim=True) + 1e-6) ** 0.5 + patches.mean(-1, keepdim=True)
    assert torch.allclose(pics["reconstruction"], unpatchify(expected, 8, 3), atol=1e-5)

    grid = reconstruction_grid(pics["original"], pics["masked"], pics["reconstruction"], MEAN, STD,
                               tmp_path / "pics" / "mae.png", max_images=4)
    s, pad = 3, 2                                           # 96 // 32 = 3 times larger
    height, width = 3 * s * 32 + 4 * pad, 4 * s * 32 + 5 * pad
    assert grid.image.shape == (height, width, 3) and grid.image.dtype == np.uint8
    with Image.open(grid.path) as png:
        assert png.format == "PNG" and png.size == (width, height)
        assert np.array_equal(np.asarray(png.convert("RGB")), grid.image)
    first = (x[0] * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]).clamp(0, 1)
    assert abs(int(grid.image[pad, pad, 0]) - round(float(first[0, 0, 0]) * 255)) <= 1
    assert reconstruction_grid(x, x, x, MEAN, STD).path is None


# -- learning, sizes -------------------------------------------------------------------------------------------
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    obj = build("tiny").train()
    batch = {"pixel_values": images(8), "example_seeds": torch.arange(8)}
    opt = torch.optim.AdamW([p for p in obj.parameters() if p.requires_grad], lr=1e-3,
                            betas=(MAE_TRAINING["adam_beta1"], MAE_TRAINING["adam_beta2"]),
                            weight_decay=MAE_TRAINING["weight_decay"])
    losses = []
    for _ in range(30):
        out = obj(batch)
        (out.loss / out.num_targets).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()) / out.num_targets)
    assert losses[-1] < 0.8 * losses[0], losses


def test_sizes_and_recipe_numbers():
    small = build("small")
    assert small.adapter.config.num_patches == 64 and small.backbone.config.hidden_size == 192
    assert (small.backbone.config.num_layers, small.backbone.config.num_heads) == (6, 3)
    assert (small.decoder.config.hidden_size, small.decoder.config.num_layers) == (128, 2)
    assert small.backbone.config.norm_first and small.backbone.config.final_norm
    assert small.backbone.config.layer_norm_eps == small.decoder.config.layer_norm_eps == 1e-12
    assert small.config.mask_ratio == 0.75 and small.config.norm_pix_loss
    base = size_of("mae", "base")
    assert base["image"] == {"image_size": 224, "patch_size": 16}
    assert base["backbone"]["hidden_size"] == 768 and base["decoder"] == dict(
        hidden_size=512, num_layers=8, num_heads=16, intermediate_size=2048)
    assert mae_learning_rate(4096) == pytest.approx(2.4e-3)
    assert build("tiny", backbone={"layer_norm_eps": 1e-6}).decoder.config.layer_norm_eps == 1e-6


def test_bf16_autocast_step_is_close_to_fp32():
    obj = make().train()
    batch = {"pixel_values": images(), "noise": noise()}
    with torch.no_grad():
        full = obj(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = obj(batch)
    assert half.loss.dtype == torch.float32 and half.num_targets == full.num_targets
    assert abs(float(half.loss.detach()) - float(full.loss)) <= 0.02 * float(full.loss)
    half.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in obj.parameters() if p.grad is not None)
