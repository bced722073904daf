"""Conversion between MAE / ViT encoders and ``transformers``: ``ViTMAEForPreTraining`` (the whole MAE: encoder,
decoder, heads) and ``ViTModel`` (the encoder alone), plus the matching ``ViTImageProcessor``.

Names (transformers 5): our fused ``attn.qkv`` is split into ``attention.{q,k,v}_proj`` on export and joined on
import; ``attn.out`` is ``attention.o_proj``, ``norm1`` / ``norm2`` are ``layernorm_before`` / ``layernorm_after``,
``fc1`` / ``fc2`` are ``mlp.fc1`` / ``mlp.fc2``; the encoder's final norm is ``layernorm``, the decoder's
``decoder.decoder_norm``; the decoder layers are ``decoder.decoder_layers.{i}``. The ViT embeddings hold our
adapter's patch convolution, class token and position table (class row first: zero for sin-cos, as MAE).

**The export layout** (:func:`export_mae`)::

    OUT/                 ViTModel (the encoder, no pooler) + ViTImageProcessor  -> AutoModel, AutoImageProcessor,
                         pipeline("image-feature-extraction", model=OUT): the features we probe
    OUT/pretraining/     ViTMAEForPreTraining + ViTImageProcessor -> AutoModelForPreTraining (reconstructions,
                         continued pre-training: mae_from_transformers(OUT) finds it here)

The encoder sits at the top because ``AutoModel`` on a ViTMAE checkpoint gives ``ViTMAEModel``, which drops 75 %
of the patches in random order, not an encoder's features. ``AutoModel.from_pretrained(OUT)`` adds a pooler that
MAE never trained (HF warns that it is newly initialised); ``last_hidden_state`` does not use it.

Our pre-training and adapter settings ride along under ``selfsup_mae`` / ``selfsup_image`` in the configs (HF
ignores them; the imports read them back).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import (check_close, check_encoder, export_state, fill_model, import_state, load_into,
                             load_model, max_abs_diff)
from selfsup.errors import SelfsupError
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.objectives.builders import MAE_IMAGE, VIT_SHARED, compose_mae, vit_backbone
from selfsup.objectives.mae import MAEConfig, MAEObjective
from selfsup.types import Encoder

QKV = ("q_proj", "k_proj", "v_proj")
LAYER_MAP = {"attn.out": "attention.o_proj", "norm1": "layernorm_before", "norm2": "layernorm_after",
             "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
PRETRAINING_DIR = "pretraining"


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


HEAD_PAIRS = [("decoder_embed.", "decoder.decoder_embed."), ("mask_token", "decoder.mask_token"),
              ("decoder_pos_embed", "decoder.decoder_pos_embed"), ("decoder_pred.", "decoder.decoder_pred.")]
DECODER_PAIRS = stack_pairs("decoder.decoder_layers.{i}.", "decoder.decoder_norm")
DECODER_QKV = "decoder.decoder_layers.{i}.attention."


def rebase(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``old``, renamed to start with ``new``."""
    return {new + k[len(old):]: v for k, v in state.items() if k.startswith(old)}


# -- checks and configs ----------------------------------------------------------------------------------------
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


def vitmae_config(objective: MAEObjective):
    """The ``ViTMAEConfig`` of our MAE (a clear error when the decoder differs where HF shares settings)."""
    from transformers import ViTMAEConfig

    check_vit(objective.adapter, objective.backbone, "ViTMAEForPreTraining")
    enc, dec = objective.backbone.config, objective.decoder.config
    check_encoder(SimpleNamespace(backbone=objective.decoder), "the ViTMAE decoder", pre_ln=True)
    if not dec.norm_first:
        raise SelfsupError("only a pre-LN decoder with a final norm exports as ViTMAEForPreTraining")
    if differ := [k for k in VIT_SHARED if getattr(enc, k) != getattr(dec, k)]:
        raise SelfsupError(f"ViTMAEForPreTraining shares {differ} between encoder and decoder; ours differ")
    return ViTMAEConfig(**vit_fields(objective.adapter, enc), decoder_hidden_size=dec.hidden_size,
                        decoder_num_hidden_layers=dec.num_layers, decoder_num_attention_heads=dec.num_heads,
                        decoder_intermediate_size=dec.intermediate_size, mask_ratio=objective.config.mask_ratio,
                        norm_pix_loss=objective.config.norm_pix_loss, selfsup_mae=objective.config.to_dict())


def vit_config(encoder: Encoder):
    """The ``ViTConfig`` of our image encoder."""
    from transformers import ViTConfig

    check_vit(encoder.adapter, encoder.backbone, "ViTModel")
    return ViTConfig(**vit_fields(encoder.adapter, encoder.backbone.config))


def configs_from(hf_cfg, decoder: bool, dropout: float | None = None
                 ) -> tuple[ImageConfig, TransformerConfig, TransformerConfig | None]:
    """(image config, encoder config, decoder config or None) read from a ViTConfig / ViTMAEConfig."""
    size = hf_cfg.image_size if isinstance(hf_cfg.image_size, int) else tuple(hf_cfg.image_size)
    patch = hf_cfg.patch_size if isinstance(hf_cfg.patch_size, int) else tuple(hf_cfg.patch_size)
    if not isinstance(size, int) or not isinstance(patch, int):
        raise SelfsupError(f"only square images and patches are supported (image {size}, patch {patch})")
    if not getattr(hf_cfg, "qkv_bias", True):
        raise SelfsupError("ViTs without QKV biases are not supported")
    stored = getattr(hf_cfg, "selfsup_image", None)
    stored = stored if isinstance(stored, dict) else (dict(MAE_IMAGE) if decoder else {"positions": "learned"})
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


# -- weights ---------------------------------------------------------------------------------------------------
def to_vitmae_state_dict(objective: MAEObjective) -> dict[str, torch.Tensor]:
    """Our MAE's weights under ``ViTMAEForPreTraining``'s names."""
    state = objective.state_dict()
    top = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    out = export_state(top, [*encoder_pairs("vit."), *HEAD_PAIRS], "vit.layers.{i}.attention.", QKV, "ViTMAE")
    out.update(export_state(rebase(state, "decoder.", "backbone."), DECODER_PAIRS, DECODER_QKV, QKV,
                            "ViTMAE decoder"))
    return out


def from_vitmae_state_dict(objective: MAEObjective, hf: dict[str, torch.Tensor]) -> None:
    """Load ``ViTMAEForPreTraining`` weights into our MAE (every weight must fit)."""
    ours = import_state(hf, [*encoder_pairs("vit."), *HEAD_PAIRS], "vit.layers.{i}.attention.", QKV)
    ours.update(rebase(import_state(hf, DECODER_PAIRS, DECODER_QKV, QKV), "backbone.", "decoder."))
    load_into(objective, ours, optional=lambda k: False)


def mae_to_transformers(objective: MAEObjective):
    """A ``ViTMAEForPreTraining`` holding our MAE's weights (float32, eval mode)."""
    from transformers import ViTMAEForPreTraining

    model = ViTMAEForPreTraining(vitmae_config(objective))
    return fill_model(model, to_vitmae_state_dict(objective), "ViTMAE")


def encoder_to_vit(encoder: Encoder):
    """A ``ViTModel`` (no pooling layer) computing our encoder's features (float32, eval mode): its
    ``last_hidden_state`` (B, 1 + N, D) is ours, class token first; sin-cos or learned positions alike."""
    from transformers import ViTModel

    model = ViTModel(vit_config(encoder), add_pooling_layer=False)
    state = export_state({f"adapter.{k}": v for k, v in encoder.adapter.state_dict().items()}
                         | {f"backbone.{k}": v for k, v in encoder.backbone.state_dict().items()},
                         encoder_pairs(""), "layers.{i}.attention.", QKV, "ViT")
    return fill_model(model, state, "ViT")


def mae_from_transformers(path_or_model, dropout: float | None = None, **overrides: Any) -> MAEObjective:
    """Our MAE from a ``ViTMAEForPreTraining`` (or a checkpoint folder / Hub name of one, loaded without remote
    code; an :func:`export_mae` folder is read from its ``pretraining/``): ``--init_from``. MAE settings: ours
    when the checkpoint is a selfsup export, else its ``mask_ratio`` / ``norm_pix_loss``; ``overrides``
    (:class:`MAEConfig` fields) win. ``dropout``, when given, sets the hidden and attention dropout rates."""
    if isinstance(path_or_model, (str, Path)) and (Path(path_or_model) / PRETRAINING_DIR / "config.json").is_file():
        path_or_model = Path(path_or_model) / PRETRAINING_DIR
    model, where = load_model(path_or_model, "vit_mae", "ViTMAEForPreTraining")
    hf_cfg = model.config
    stored = getattr(hf_cfg, "selfsup_mae", None)
    settings = dict(stored) if isinstance(stored, dict) else {}
    settings.update(mask_ratio=hf_cfg.mask_ratio, norm_pix_loss=hf_cfg.norm_pix_loss)
    try:
        image, enc, dec = configs_from(hf_cfg, decoder=True, dropout=dropout)
        objective = compose_mae(image, enc, dec, MAEConfig(**{**settings, **overrides}))
        from_vitmae_state_dict(objective, model.state_dict())
    except (ValueError, TypeError, SelfsupError) as err:
        raise SelfsupError(f"{where}: {err}") from None
    return objective


def vit_to_encoder(path_or_model, dropout: float | None = None) -> Encoder:
    """Our image :class:`Encoder` from a ``ViTModel`` (or a checkpoint folder / Hub name of a ViT); positions are
    learned unless the checkpoint is a selfsup export of sin-cos ones (the table is the checkpoint's either way)."""
    model, where = load_model(path_or_model, "vit", "ViTModel")
    try:
        image, enc, _ = configs_from(model.config, decoder=False, dropout=dropout)
        encoder = Encoder(ImageAdapter(image, enc.hidden_size), vit_backbone(enc))
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


# -- export ----------------------------------------------------------------------------------------------------
def sample_pixels(objective: MAEObjective, n: int = 2, seed: int = 0) -> torch.Tensor:
    """A fixed (n, C, H, W) batch of normalised-looking pixels, for the export check when none is given."""
    c = objective.adapter.config
    return torch.randn(n, c.num_channels, c.image_size, c.image_size, generator=torch.Generator().manual_seed(seed))


def export_mae(objective: MAEObjective, out_dir: str | Path, processor=None,
               pixel_values: torch.Tensor | None = None) -> dict[str, float]:
    """Write the export (layout in the module docstring), reload it with the Auto classes and compare with
    ours; returns the figures (``export/max_abs_hidden_diff``, ``export/max_abs_logit_diff``,
    ``export/loss_diff``). ``processor`` (a ``ViTImageProcessor``) is saved in both folders when given;
    ``pixel_values`` is the check's batch (default: :func:`sample_pixels`). The objective is left in float32 on
    the CPU in eval mode (as the other families' exports leave theirs). The model card is the recipe's."""
    out = Path(out_dir)
    objective = objective.float().cpu().eval()
    encoder_to_vit(objective.encoder()).save_pretrained(str(out))
    mae_to_transformers(objective).save_pretrained(str(out / PRETRAINING_DIR))
    if processor is not None:
        processor.save_pretrained(str(out))
        processor.save_pretrained(str(out / PRETRAINING_DIR))
    return check_mae_export(objective, out, sample_pixels(objective) if pixel_values is None else pixel_values)


def export_vit_encoder(encoder: Encoder, out_dir: str | Path, processor=None,
                       pixel_values: torch.Tensor | None = None, atol: float = 1e-4) -> dict[str, float]:
    """Write a ViT image encoder (a two-view method's) as ``ViTModel`` (+ ``processor``) at ``out_dir``, reload it
    with ``AutoModel`` and compare the last hidden states (class token included) with ours."""
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
        theirs = AutoModel.from_pretrained(str(out), add_pooling_layer=False).eval()(pixel_values=pixel_values.float())
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours, theirs.last_hidden_state),
                                                      "ViT hidden states", atol)}


@torch.no_grad()
def check_mae_export(objective: MAEObjective, out_dir: str | Path, pixel_values: torch.Tensor,
                     atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` (``AutoModel``) and ``out_dir/pretraining`` (``AutoModelForPreTraining``) and compare
    with ours: the encoder's last hidden state (class token included), and the MAE's logits and loss on the same
    noise; an error past ``atol``."""
    from transformers import AutoModel, AutoModelForPreTraining

    out = Path(out_dir)
    objective = objective.float().cpu().eval()
    pixel_values = pixel_values.float().cpu()
    vit = AutoModel.from_pretrained(str(out), add_pooling_layer=False).eval()
    mae = AutoModelForPreTraining.from_pretrained(str(out / PRETRAINING_DIR)).eval()
    ours_h = objective.encoder()({"pixel_values": pixel_values})[0].last_hidden_state
    noise = torch.rand(len(pixel_values), objective.adapter.config.num_patches, generator=torch.Generator().manual_seed(0))
    ours = objective.predict({"pixel_values": pixel_values, "noise": noise})
    theirs = mae(pixel_values=pixel_values, noise=noise)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours_h, vit(pixel_values=pixel_values)
                                                                   .last_hidden_state), "ViT hidden states", atol),
            "export/max_abs_logit_diff": check_close(max_abs_diff(ours["logits"], theirs.logits), "MAE logits", atol),
            "export/loss_diff": check_close(abs(float(ours["loss"]) - float(theirs.loss)), "MAE loss", atol)}


__all__ = ["mae_to_transformers", "mae_from_transformers", "encoder_to_vit", "vit_to_encoder",
           "vit_image_processor", "export_mae", "export_vit_encoder", "check_mae_export", "vitmae_config", "vit_config",
           "to_vitmae_state_dict", "from_vitmae_state_dict", "PRETRAINING_DIR"]
