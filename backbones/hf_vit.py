"""Conversion between selfsup's ViT image encoders (``ImageAdapter`` + the pre-LN :class:`TransformerEncoder`) and
``transformers``' ``ViTModel``, plus the matching ``ViTImageProcessor``; the MAE conversion
(``objectives/masked/hf_mae.py``) builds on it.

Names (transformers 5): our fused ``attn.qkv`` is split into ``attention.{q,k,v}_proj`` on export and joined on
import; ``attn.out`` is ``attention.o_proj``, ``norm1`` / ``norm2`` are ``layernorm_before`` / ``layernorm_after``,
``fc1`` / ``fc2`` are ``mlp.fc1`` / ``mlp.fc2``; the encoder's final norm is ``layernorm``. The ViT embeddings hold
our adapter's patch convolution, class token and position table (class row first: zero for sin-cos, as MAE). The
adapter's settings ride along under ``selfsup_image`` in the config (HF ignores them; the import reads them back).

The pooler: ``ViTModel`` always builds one (its config has no switch for it), so an export without pooler weights
loads with a "newly initialized" report and a random ``pooler_output``. The export writes a defined one instead:
the identity matrix with a zero bias and ``pooler_act="linear"``, so ``pooler_output`` is the class token's final
hidden state, ``last_hidden_state[:, 0]`` (what ``ViTForImageClassification`` classifies; the features of a
two-view ViT, whose encoder pools the class token). The import drops it, like any pooler.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import (check_close, check_encoder, export_state, fill_model, import_state, load_into, load_model,
                             max_abs_diff)
from selfsup.errors import SelfsupError
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.types import Encoder


QKV = ("q_proj", "k_proj", "v_proj")


LAYER_MAP = {"attn.out": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
             "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def stack_pairs(layer: str, norm: str) -> list[tuple[str, str]]:
    """(ours, HF) prefixes of a ViT layer stack under our ``backbone.`` (but QKV); ``layer`` = HF's layer prefix
    with ``{i}``, ``norm`` = HF's name of the final norm."""
    return [*((f"backbone.layers.{{i}}.{ours}.", f"{layer}{theirs}.") for ours, theirs in LAYER_MAP.items()),
            ("backbone.norm.", f"{norm}.")]


def encoder_pairs(prefix: str) -> list[tuple[str, str]]:
    """(ours, HF) names of the adapter and the encoder stack; ``prefix`` = ``"vit."`` (ViTMAE) or ``""`` (ViT)."""
    return [("adapter.patch_embed.", f"{prefix}embeddings.patch_embeddings.projection."),
            ("adapter.cls_token", f"{prefix}embeddings.cls_token"),
            ("adapter.position_embeddings", f"{prefix}embeddings.position_embeddings"),
            *stack_pairs(f"{prefix}layers.{{i}}.", f"{prefix}layernorm")]


def check_vit(adapter: ImageAdapter, backbone: TransformerEncoder, target: str) -> None:
    """A one-line error unless adapter + backbone are what a HF ViT computes."""
    check_encoder(SimpleNamespace(backbone=backbone), target, pre_ln=True)
    if not backbone.config.norm_first:
        raise SelfsupError(f"only pre-LN encoders with a final norm export as {target}")
    if not isinstance(adapter, ImageAdapter) or adapter.cls_token is None:
        raise SelfsupError(f"only image adapters with a class token export as {target}")


def vit_fields(adapter: ImageAdapter, cfg: TransformerConfig) -> dict[str, Any]:
    """The fields ViTConfig and ViTMAEConfig share, from our adapter and encoder."""
    a = adapter.config
    return dict(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size, hidden_act=cfg.activation, hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.attention_dropout, layer_norm_eps=cfg.layer_norm_eps,
                image_size=a.image_size, patch_size=a.patch_size, num_channels=a.num_channels, qkv_bias=cfg.bias,
                selfsup_image=a.to_dict())


def vit_config(encoder: Encoder):
    """The ``ViTConfig`` of our image encoder (with the class-token pooler: module docstring)."""
    from transformers import ViTConfig

    check_vit(encoder.adapter, encoder.backbone, "ViTModel")
    return ViTConfig(**vit_fields(encoder.adapter, encoder.backbone.config), pooler_act="linear")


def class_token_pooler(hidden_size: int) -> dict[str, torch.Tensor]:
    """``ViTPooler`` weights that, with ``pooler_act="linear"``, return the class token's state unchanged."""
    return {"pooler.dense.weight": torch.eye(hidden_size), "pooler.dense.bias": torch.zeros(hidden_size)}


def configs_from(hf_cfg, decoder: bool, dropout: float | None = None, image_defaults: dict | None = None
                 ) -> tuple[ImageConfig, TransformerConfig, TransformerConfig | None]:
    """(image config, encoder config, decoder config or None) read from a ViTConfig / ViTMAEConfig; the image
    adapter's settings are the ones a selfsup export stored, else ``image_defaults`` (learned positions)."""
    size = hf_cfg.image_size if isinstance(hf_cfg.image_size, int) else tuple(hf_cfg.image_size)
    patch = hf_cfg.patch_size if isinstance(hf_cfg.patch_size, int) else tuple(hf_cfg.patch_size)
    if not isinstance(size, int) or not isinstance(patch, int):
        raise SelfsupError(f"only square images and patches are supported (image {size}, patch {patch})")
    if not getattr(hf_cfg, "qkv_bias", True):
        raise SelfsupError("ViTs without QKV biases are not supported")
    stored = getattr(hf_cfg, "selfsup_image", None)
    stored = stored if isinstance(stored, dict) else dict(image_defaults or {"positions": "learned"})
    image = ImageConfig(**{**stored, "image_size": size, "patch_size": patch, "num_channels": hf_cfg.num_channels,
                           "class_token": True})
    drop = (lambda v: v) if dropout is None else (lambda v: dropout)
    shared = dict(activation=hf_cfg.hidden_act, layer_norm_eps=hf_cfg.layer_norm_eps, norm_first=True,
                  final_norm=True, dropout=drop(hf_cfg.hidden_dropout_prob),
                  attention_dropout=drop(hf_cfg.attention_probs_dropout_prob))
    enc = TransformerConfig(hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers,
                            num_heads=hf_cfg.num_attention_heads, intermediate_size=hf_cfg.intermediate_size, **shared)
    dec = None if not decoder else TransformerConfig(
        hidden_size=hf_cfg.decoder_hidden_size, num_layers=hf_cfg.decoder_num_hidden_layers,
        num_heads=hf_cfg.decoder_num_attention_heads, intermediate_size=hf_cfg.decoder_intermediate_size, **shared)
    return image, enc, dec


def encoder_to_vit(encoder: Encoder):
    """A ``ViTModel`` computing our encoder's features (float32, eval mode): its ``last_hidden_state``
    (B, 1 + N, D) is ours, class token first, sin-cos or learned positions alike; its ``pooler_output`` (B, D) is
    the class token's (module docstring)."""
    from transformers import ViTModel

    model = ViTModel(vit_config(encoder))
    state = export_state({f"adapter.{k}": v for k, v in encoder.adapter.state_dict().items()}
                         | {f"backbone.{k}": v for k, v in encoder.backbone.state_dict().items()},
                         encoder_pairs(""), "layers.{i}.attention.", QKV, "ViT")
    return fill_model(model, state | class_token_pooler(encoder.backbone.config.hidden_size), "ViT")


def vit_to_encoder(path_or_model, dropout: float | None = None) -> Encoder:
    """Our image :class:`Encoder` from a ``ViTModel`` (or a checkpoint folder / Hub name of a ViT); positions are
    learned unless the checkpoint is a selfsup export of sin-cos ones (the table is the checkpoint's either way)."""
    model, where = load_model(path_or_model, "vit", "ViTModel")
    try:
        image, enc, _ = configs_from(model.config, decoder=False, dropout=dropout)
        encoder = Encoder(ImageAdapter(image, enc.hidden_size), TransformerEncoder(enc))
        ours = import_state(model.state_dict(), encoder_pairs(""), "layers.{i}.attention.", QKV)
        load_into(encoder, ours, optional=lambda k: False)
    except (ValueError, TypeError, SelfsupError) as err:
        raise SelfsupError(f"{where}: {err}") from None
    return encoder


def vit_image_processor(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """A ``ViTImageProcessor``: resize to ``image_size`` squared (bilinear), scale to [0, 1], normalise by
    ``mean`` / ``std`` (what our training transforms do; the ``pixel_values`` our encoder reads)."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": image_size, "width": image_size}, resample=2,
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean),
                             image_std=list(std))


def export_vit_encoder(encoder: Encoder, out_dir: str | Path, processor=None,
                       pixel_values: torch.Tensor | None = None, atol: float = 1e-4) -> dict[str, float]:
    """Write a ViT image encoder (a two-view method's) as ``ViTModel`` (+ ``processor``) at ``out_dir``, reload it
    with ``AutoModel`` and compare the last hidden states (class token included) with ours, and the pooled output
    with the class token's state."""
    from transformers import AutoModel

    out = Path(out_dir)
    encoder = encoder.float().cpu().eval()
    encoder_to_vit(encoder).save_pretrained(str(out))
    if processor is not None:
        processor.save_pretrained(str(out))
    c = encoder.adapter.config
    if pixel_values is None:
        pixel_values = torch.randn(2, c.num_channels, c.image_size, c.image_size,
                                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = encoder({"pixel_values": pixel_values.float()})[0].last_hidden_state
        theirs = AutoModel.from_pretrained(str(out)).eval()(pixel_values=pixel_values.float())
    check_close(max_abs_diff(ours[:, 0], theirs.pooler_output), "ViT pooled output (the class token)", atol)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours, theirs.last_hidden_state),
                                                      "ViT hidden states", atol)}


__all__ = ["QKV", "LAYER_MAP", "stack_pairs", "encoder_pairs", "check_vit", "vit_fields", "vit_config",
           "class_token_pooler", "configs_from",
           "encoder_to_vit", "vit_to_encoder", "vit_image_processor", "export_vit_encoder"]
