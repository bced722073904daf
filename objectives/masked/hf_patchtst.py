"""PatchTST (Nie et al., ICLR 2023) as the MAE objective on series, and its conversion to ``transformers``'
``PatchTSTForPretraining`` (the whole pretraining model) and ``PatchTSTModel`` (the encoder).

The mapping: the series adapter is ``PatchTSTModel``'s scaler, patchifier and embedding (``patch_embed`` ->
``encoder.embedder.input_embedding``, ``position_enc`` -> ``encoder.positional_encoder.position_enc``); the
shared Transformer, pre-LN or post-LN, batch norm or LayerNorm, no final norm, is PatchTST's encoder (``attn.qkv``
split into ``self_attn.{q,k,v}_proj``, ``attn.out`` -> ``self_attn.out_proj``, ``norm1`` / ``norm2`` ->
``norm_sublayer1`` / ``norm_sublayer3`` (``.batchnorm`` inside for batch norm), ``fc1`` / ``fc2`` -> ``ff.0`` /
``ff.3``); the MAE objective in replace mode with the adapter's mask embedding (a zeroed patch), no decoder and
``decoder_pred`` -> ``head.linear`` is the pretraining model. ``tests/test_patchtst.py`` checks loss and
reconstruction against ``PatchTSTForPretraining`` on the same series and the same mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import check_close, export_state, fill_model, max_abs_diff
from selfsup.errors import SelfsupError
from selfsup.export import write_model_card
from selfsup.modalities.timeseries.adapter import PAST_VALUES, SeriesAdapter, SeriesConfig
from selfsup.objectives.masked.mae import MAEConfig, MAEObjective

QKV = ("q_proj", "k_proj", "v_proj")
# PatchTST's pretraining settings (the paper's self-supervised ETTh1 configuration; transformers' names)
PATCHTST_MAE = dict(mask_mode="replace", target="patches", norm_pix_loss=False, loss="mse", mask_token="adapter",
                    mask_count="visible", replace_rate=0.0)


def compose_patchtst(series: SeriesConfig, backbone: TransformerConfig, mask_ratio: float = 0.4) -> MAEObjective:
    """PatchTST's pretraining: the series adapter, the Transformer (no final norm), the MAE class with a zeroed
    patch as the mask and a linear head on the encoder (no decoder)."""
    if backbone.final_norm:
        raise SelfsupError("PatchTST's encoder has no final norm (final_norm=False)")
    return MAEObjective(SeriesAdapter(series, backbone.hidden_size), TransformerEncoder(backbone), None,
                        MAEConfig(**{**PATCHTST_MAE, "mask_ratio": mask_ratio}))


def check_encoder(adapter, backbone) -> None:
    """A one-line error for an encoder ``PatchTSTModel`` cannot hold."""
    c = backbone.config if isinstance(backbone, TransformerEncoder) else None
    problems = [(not isinstance(adapter, SeriesAdapter), "a series adapter"),
                (c is None, "the shared Transformer encoder"),
                (c is not None and (c.final_norm or c.causal), "no final norm, not causal"),
                (c is not None and not c.bias, "biases")]
    for bad, needs in problems:
        if bad:
            raise SelfsupError(f"PatchTST export needs {needs}")


def check_patchtst(objective: MAEObjective) -> None:
    """A one-line error for what ``PatchTSTForPretraining`` cannot hold."""
    check_encoder(objective.adapter, objective.backbone)
    if (not isinstance(objective, MAEObjective) or objective.decoder is not None
            or objective.config.mask_mode != "replace" or objective.config.mask_token != "adapter"):
        raise SelfsupError("PatchTST export needs the MAE class in replace mode with a zeroed patch as the mask and "
                           "no decoder")


def patchtst_config(adapter, backbone, mask_ratio: float = 0.4, **extra: Any):
    """The ``PatchTSTConfig`` of a series adapter + Transformer (``check_encoder``'s conditions)."""
    from transformers import PatchTSTConfig

    check_encoder(adapter, backbone)
    s, c = adapter.config, backbone.config
    return PatchTSTConfig(
        num_input_channels=s.num_channels, context_length=s.context_length, patch_length=s.patch_length,
        patch_stride=s.stride, num_hidden_layers=c.num_layers, d_model=c.hidden_size,
        num_attention_heads=c.num_heads, ffn_dim=c.intermediate_size, norm_type=c.norm, norm_eps=c.layer_norm_eps,
        attention_dropout=c.attention_dropout, path_dropout=c.dropout, ff_dropout=c.activation_dropout,
        positional_dropout=s.positional_dropout, activation_function=c.activation, pre_norm=c.norm_first,
        positional_encoding_type="random" if s.positions == "learned" else "sincos", use_cls_token=False,
        scaling="std" if s.scaling == "std" else None, minimum_scale=s.minimum_scale, mask_type="random",
        random_mask_ratio=mask_ratio, channel_consistent_masking=False, mask_value=0, share_embedding=True,
        **extra)


def state_pairs(prefix: str, norm: str) -> list[tuple[str, str]]:
    """(ours, HF) name prefixes; ``prefix`` ``"model."`` (pretraining) or ``""`` (the encoder alone)."""
    inner = ".batchnorm." if norm == "batchnorm" else "."
    layer = f"{prefix}encoder.layers.{{i}}."
    return [("adapter.patch_embed.", f"{prefix}encoder.embedder.input_embedding."),
            ("adapter.position_enc", f"{prefix}encoder.positional_encoder.position_enc"),
            ("backbone.layers.{i}.attn.out.", layer + "self_attn.out_proj."),
            ("backbone.layers.{i}.norm1.", layer + "norm_sublayer1" + inner),
            ("backbone.layers.{i}.norm2.", layer + "norm_sublayer3" + inner),
            ("backbone.layers.{i}.fc1.", layer + "ff.0."), ("backbone.layers.{i}.fc2.", layer + "ff.3."),
            ("decoder_pred.", "head.linear.")]


def to_hf_state(module, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """Our state under ``PatchTSTForPretraining``'s names (the MAE objective), or ``PatchTSTModel``'s
    (``encoder_only``: any module with the series ``adapter`` and the ``backbone``, an Encoder or an objective)."""
    prefix = "" if encoder_only else "model."
    if encoder_only:
        state = {f"{part}.{k}": v for part in ("adapter", "backbone")
                 for k, v in getattr(module, part).state_dict().items()}
    else:
        check_patchtst(module)
        state = module.state_dict()
    return export_state(state, state_pairs(prefix, module.backbone.config.norm),
                        f"{prefix}encoder.layers.{{i}}.self_attn.", QKV, "PatchTST")


def to_patchtst(module, encoder_only: bool = False):
    """A ``PatchTSTForPretraining`` holding our MAE objective's weights, or (``encoder_only``) a
    ``PatchTSTModel`` holding an encoder's (eval)."""
    from transformers import PatchTSTForPretraining, PatchTSTModel

    ratio = module.config.mask_ratio if isinstance(module, MAEObjective) else 0.4
    config = patchtst_config(module.adapter, module.backbone, ratio)
    model = PatchTSTModel(config) if encoder_only else PatchTSTForPretraining(config)
    return fill_model(model, to_hf_state(module, encoder_only), "PatchTST")


@torch.no_grad()
def check_export(objective: MAEObjective, out_dir: str | Path, batch: Mapping[str, Any],
                 atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` (``PatchTSTModel``) with ``AutoModel`` and compare the last hidden state with our
    encoder's on ``batch`` (eval mode, nothing masked)."""
    from transformers import AutoModel

    theirs = AutoModel.from_pretrained(str(out_dir)).eval()
    values = batch[PAST_VALUES].float()
    hf = theirs(past_values=values).last_hidden_state                      # (B, C, N, D)
    ours = objective.encoder().eval()(batch)[0].last_hidden_state
    ours = ours.reshape(hf.shape)
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours, hf), "PatchTST hidden states", atol)}


USAGE = """from transformers import AutoModel, PatchTSTForPretraining

model = AutoModel.from_pretrained("{path}")             # PatchTSTModel: the encoder
out = model(past_values=series)                      # series (B, {length}, {channels}) float
out.last_hidden_state                                # (B, {channels}, {patches}, {width}) patch embeddings
pretraining = PatchTSTForPretraining.from_pretrained("{path}/pretraining")   # PatchTST runs: the head too"""


def export_patchtst(objective, out_dir: str | Path, batch: Mapping[str, Any],
                    metrics: dict | None = None, run: dict | None = None) -> dict[str, float]:
    """``OUT/`` the encoder as ``PatchTSTModel`` and, for PatchTST's MAE objective, ``OUT/pretraining/`` the whole
    ``PatchTSTForPretraining``; the first reloaded and compared on ``batch``. Returns the check's figures."""
    out = Path(out_dir)
    objective = objective.float().cpu().eval()
    to_patchtst(objective, encoder_only=True).save_pretrained(str(out))
    whole = isinstance(objective, MAEObjective) and objective.decoder is None
    if whole:
        to_patchtst(objective).save_pretrained(str(out / "pretraining"))
    figures = check_export(objective, out, batch)
    s, c = objective.adapter.config, objective.backbone.config
    write_model_card(out, title="selfsup PatchTST encoder", pipeline_tag="feature-extraction",
                     summary=f"A PatchTST encoder ({c.num_layers} layers, width {c.hidden_size}, patches of "
                             f"{s.patch_length} every {s.stride} steps), self-supervised, as transformers' "
                             "PatchTSTModel" + ("; the pretraining model is in pretraining/." if whole else "."),
                     metrics={**(metrics or {}), **figures}, run=run or {},
                     usage=USAGE.format(path=out, length=s.context_length, channels=s.num_channels,
                                        patches=s.num_patches, width=c.hidden_size), tags=("time-series", "patchtst"))
    return figures


__all__ = ["compose_patchtst", "check_patchtst", "check_encoder", "patchtst_config", "to_hf_state", "to_patchtst", "check_export",
           "export_patchtst", "PATCHTST_MAE", "state_pairs"]
