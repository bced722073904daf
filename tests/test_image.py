"""The image adapters: patch tokens, 2-D sin-cos positions and the patch order, against transformers' ViTMAE."""
import pytest
import torch

from selfsup.modalities.image import ImageAdapter, ImageConfig, PixelAdapter, patchify, sincos_2d, unpatchify

vit_mae = pytest.importorskip("transformers.models.vit_mae.modeling_vit_mae")


def test_sincos_table_is_vit_maes():
    table = vit_mae.build_2d_sinusoidal_position_embedding(height=8, width=8, embed_dim=64, cls_token=True)
    half = table.shape[-1] // 2      # transformers rotates the halves to MAE's (column, row) layout
    table = torch.cat([table[..., half:], table[..., :half]], dim=-1).squeeze(0)
    torch.testing.assert_close(sincos_2d(64, 8, class_token=True), table, rtol=0, atol=1e-6)
    assert not sincos_2d(64, 8, class_token=True)[0].any(), "the class token's position is zero"


def test_patch_order_is_vit_maes_and_unpatchify_inverts_it():
    from transformers import ViTMAEConfig

    cfg = ViTMAEConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=64)
    model = vit_mae.ViTMAEForPreTraining(cfg)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(patchify(x, 4), model.patchify(x))
    assert torch.equal(unpatchify(patchify(x, 4), 4), x)
    assert torch.equal(patchify(x, 4)[0, 1, :3], x[0, :, 0, 4]), "patch 1 starts at row 0, column 4, RGB last"


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_adapter_stages(positions):
    adapter = ImageAdapter(ImageConfig(image_size=16, patch_size=4, positions=positions), hidden_size=32)
    x = torch.randn(3, 3, 16, 16)
    tokens = adapter.embed({"pixel_values": x})
    assert tokens.x.shape == (3, 16, 32) and tokens.targets["pixels"].shape == (3, 16, 48)
    with_pos = adapter.add_positions(tokens.x)
    torch.testing.assert_close(with_pos - tokens.x, adapter.position_embeddings[:, 1:].expand(3, -1, -1))
    full = adapter({"pixel_values": x}).x
    assert full.shape == (3, 17, 32)
    torch.testing.assert_close(full[:, 0], (adapter.cls_token + adapter.position_embeddings[:, :1])[0].expand(3, -1))
    assert adapter.position_embeddings.requires_grad == (positions == "learned")


def test_adapters_reject_the_wrong_shape():
    adapter = ImageAdapter(ImageConfig(image_size=16, patch_size=4), hidden_size=32)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):             # MAE's patches: the configured size
        adapter.patches({"pixel_values": torch.randn(1, 3, 32, 32)})
    for shape in ((1, 3, 16, 12), (1, 3, 18, 18), (1, 1, 16, 16)):       # not square, not whole patches, not RGB
        with pytest.raises(ValueError, match=r"S a multiple of 4"):
            adapter.embed({"pixel_values": torch.randn(*shape)})
    assert adapter({"pixel_values": torch.randn(2, 3, 8, 8)}).x.shape == (2, 5, 32)   # 2x2 patches + class token
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ImageConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="num_channels|shape"):
        PixelAdapter().embed({"pixel_values": torch.randn(1, 1, 8, 8)})
    assert PixelAdapter().embed({"pixel_values": torch.ones(1, 3, 8, 8)}).x.shape == (1, 3, 8, 8)


def test_patch_embedding_is_the_stride_p_convolution():
    """embed: the patch convolution as one matmul on the patch pixels, the same numbers as the Conv2d (whose
    (D, C, P, P) weight and bias are the parameters, so exports keep their names and shapes)."""
    torch.manual_seed(0)
    adapter = ImageAdapter(ImageConfig(image_size=16, patch_size=4), hidden_size=32)
    assert adapter.patch_embed.weight.shape == (32, 3, 4, 4) and adapter.patch_embed.bias.shape == (32,)
    with torch.no_grad():
        adapter.patch_embed.bias.normal_()
    x = torch.randn(3, 3, 16, 16)
    conv = adapter.patch_embed(x).flatten(2).transpose(1, 2)
    tokens = adapter.embed({"pixel_values": x})
    torch.testing.assert_close(tokens.x, conv, rtol=0, atol=1e-5)
    assert torch.equal(tokens.targets["pixels"], adapter.patches({"pixel_values": x}))
    ids = torch.tensor([[3, 0, 15], [1, 2, 4], [9, 9, 8]])
    some = adapter.embed_patches(torch.gather(tokens.targets["pixels"], 1, ids[..., None].expand(-1, -1, 48)))
    torch.testing.assert_close(some, torch.gather(conv, 1, ids[..., None].expand(-1, -1, 32)), rtol=0, atol=1e-5)
    assert torch.equal(adapter.patch_positions(ids), adapter.patch_positions()[0][ids])


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_smaller_views_get_interpolated_positions_as_vit_does(positions):
    """A multi-crop view smaller than the configured size: the position table is resized by bicubic
    interpolation, which is what ViTModel(interpolate_pos_encoding=True) computes on the exported encoder; at the
    configured size nothing is interpolated."""
    from selfsup.recipes.builders.two_view import image_encoder as two_view_encoder
    from selfsup.backbones.hf_vit import encoder_to_vit

    torch.manual_seed(0)
    encoder = two_view_encoder("vit", "tiny", image_size=16, image=dict(positions=positions)).eval()
    vit = encoder_to_vit(encoder).eval()
    for size in (16, 8, 12):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            ours = encoder({"pixel_values": x})[0].last_hidden_state
            theirs = vit(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        assert ours.shape == (2, 1 + (size // 4) ** 2, encoder.adapter.hidden_size)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    table = encoder.adapter.patch_positions(grid_size=4)
    assert torch.equal(table, encoder.adapter.position_embeddings[:, 1:])
    assert not torch.allclose(encoder.adapter.patch_positions(grid_size=2), table[:, :4])
