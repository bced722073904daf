"""Conversion between MAE and ``transformers``' ``ViTMAEForPreTraining`` (the whole MAE: encoder, decoder, heads);
the encoder alone exports as ``ViTModel`` through ``backbones/hf_vit.py``.

Names: the encoder's as ``backbones/hf_vit.py`` (under ``vit.``); the decoder layers are
``decoder.decoder_layers.{i}``, its final norm ``decoder.decoder_norm``; ``decoder_embed``, ``mask_token``,
``decoder_pos_embed`` and ``decoder_pred`` sit under ``decoder.``.

**The export layout** (:func:`export_mae`)::

    OUT/                 ViTModel (the encoder) + ViTImageProcessor  -> AutoModel, AutoImageProcessor,
                         pipeline("image-feature-extraction", model=OUT): the features we probe (our probe
                         averages last_hidden_state over the tokens; pooler_output is the class token's state,
                         backbones/hf_vit.py)
    OUT/pretraining/     ViTMAEForPreTraining + ViTImageProcessor -> AutoModelForPreTraining (reconstructions,
                         continued pre-training: mae_from_transformers(OUT) finds it here)

The encoder sits at the top because ``AutoModel`` on a ViTMAE checkpoint gives ``ViTMAEModel``, which drops 75 %
of the patches in random order, not an encoder's features. Our pre-training settings ride along under
``selfsup_mae`` in the config (HF ignores them; the import reads them back).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from selfsup.backbones.hf_vit import (QKV, check_vit, configs_from, encoder_pairs, encoder_to_vit, stack_pairs,
                                      vit_fields)
from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import (check_close, check_encoder, export_state, fill_model, import_state, load_into, load_model,
                             max_abs_diff)
from selfsup.errors import SelfsupError
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.objectives.masked.mae import MAEConfig, MAEObjective, xavier_init
from selfsup.objectives.masked.sizes import MAE_IMAGE, VIT_SHARED


def compose_mae(image: ImageConfig, backbone: TransformerConfig, decoder: TransformerConfig,
                config: MAEConfig) -> MAEObjective:
    """MAE from configs: an :class:`ImageAdapter`, the ViT encoder and the decoder, xavier-initialised as MAE."""
    adapter = ImageAdapter(image, backbone.hidden_size)
    encoder, decoder_stack = xavier_init(TransformerEncoder(backbone)), xavier_init(TransformerEncoder(decoder))
    return MAEObjective(adapter, encoder, decoder_stack, config)

PRETRAINING_DIR = "pretraining"


HEAD_PAIRS = [("decoder_embed.", "decoder.decoder_embed."), ("mask_token", "decoder.mask_token"),
              ("decoder_pos_embed", "decoder.decoder_pos_embed"), ("decoder_pred.", "decoder.decoder_pred.")]


DECODER_PAIRS = stack_pairs("decoder.decoder_layers.{i}.", "decoder.decoder_norm")


DECODER_QKV = "decoder.decoder_layers.{i}.attention."


def rebase(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``old``, renamed to start with ``new``."""
    return {new + k[len(old):]: v for k, v in state.items() if k.startswith(old)}


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
        image, enc, dec = configs_from(hf_cfg, decoder=True, dropout=dropout, image_defaults=MAE_IMAGE)
        objective = compose_mae(image, enc, dec, MAEConfig(**{**settings, **overrides}))
        from_vitmae_state_dict(objective, model.state_dict())
    except (ValueError, TypeError, SelfsupError) as err:
        raise SelfsupError(f"{where}: {err}") from None
    return objective


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


@torch.no_grad()
def check_mae_export(objective: MAEObjective, out_dir: str | Path, pixel_values: torch.Tensor,
                     atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` (``AutoModel``) and ``out_dir/pretraining`` (``AutoModelForPreTraining``) and compare
    with ours: the encoder's last hidden state (class token included) and pooled output (the class token's state),
    and the MAE's logits and loss on the same noise; an error past ``atol``."""
    from transformers import AutoModel, AutoModelForPreTraining

    out = Path(out_dir)
    objective = objective.float().cpu().eval()
    pixel_values = pixel_values.float().cpu()
    vit = AutoModel.from_pretrained(str(out)).eval()
    mae = AutoModelForPreTraining.from_pretrained(str(out / PRETRAINING_DIR)).eval()
    ours_h = objective.encoder()({"pixel_values": pixel_values})[0].last_hidden_state
    noise = torch.rand(len(pixel_values), objective.adapter.config.num_patches, generator=torch.Generator().manual_seed(0))
    ours = objective.predict({"pixel_values": pixel_values, "noise": noise})
    theirs, encoded = mae(pixel_values=pixel_values, noise=noise), vit(pixel_values=pixel_values)
    check_close(max_abs_diff(ours_h[:, 0], encoded.pooler_output), "ViT pooled output (the class token)", atol)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours_h, encoded.last_hidden_state),
                                                      "ViT hidden states", atol),
            "export/max_abs_logit_diff": check_close(max_abs_diff(ours["logits"], theirs.logits), "MAE logits", atol),
            "export/loss_diff": check_close(abs(float(ours["loss"]) - float(theirs.loss)), "MAE loss", atol)}


__all__ = ["mae_to_transformers", "mae_from_transformers", "export_mae", "check_mae_export", "vitmae_config",
           "to_vitmae_state_dict", "from_vitmae_state_dict", "PRETRAINING_DIR"]
