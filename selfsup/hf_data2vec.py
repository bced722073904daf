"""Conversion between :class:`Data2VecObjective` and ``transformers``' ``Data2VecAudioModel``.

The export is the *student* encoder (as fairseq and the Hub checkpoints ``facebook/data2vec-audio-*`` do); the
teacher and the regression head are pre-training machinery and stay behind. Our fused QKV projection is split
into q/k/v on export and joined on import; position convolution ``i`` (``adapter.pos_conv.convs.{i}``) is HF's
``encoder.pos_conv_embed.layers.{i}.conv``; the mask embedding is ``masked_spec_embed``.

The exported config carries HF's *fine-tuning* SpecAugment defaults (``mask_time_prob=0.05``,
``mask_time_min_masks=2``; ``Data2VecAudioModel`` uses them only when it trains) and our pre-training settings
under ``selfsup_data2vec``, which :func:`from_transformers` reads back (HF ignores it).
"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones.transformer import TransformerConfig
from selfsup.errors import SelfsupError
from selfsup.hf_wav2vec2 import compile_rules, feature_extractor_for, rename  # noqa: F401 (rename re-exported)
from selfsup.modalities.audio_pos import Data2VecAudioAdapterConfig
from selfsup.objectives.data2vec import Data2VecObjective, Data2VecObjectiveConfig

LAYER = "encoder.layers.{i}."
RULES = [  # ours -> HF (Data2VecAudioModel, no prefix); "{i}" is a layer index
    ("adapter.conv_layers.{i}.conv.", "feature_extractor.conv_layers.{i}.conv."),
    ("adapter.conv_layers.{i}.norm.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("adapter.projection_norm.", "feature_projection.layer_norm."),
    ("adapter.projection.", "feature_projection.projection."),
    ("adapter.pos_conv.convs.{i}.", "encoder.pos_conv_embed.layers.{i}.conv."),
    ("adapter.norm.", "encoder.layer_norm."),
    ("backbone.layers.{i}.attn.out.", LAYER + "attention.out_proj."),
    ("backbone.layers.{i}.norm1.", LAYER + "layer_norm."),
    ("backbone.layers.{i}.fc1.", LAYER + "feed_forward.intermediate_dense."),
    ("backbone.layers.{i}.fc2.", LAYER + "feed_forward.output_dense."),
    ("backbone.layers.{i}.norm2.", LAYER + "final_layer_norm."),
    ("mask_embedding", "masked_spec_embed"),
]
QKV = ("q_proj", "k_proj", "v_proj")
PRETRAINING_ONLY = ("teacher.", "regression_head.", "ema_decay")
HF_PREFIX = "data2vec_audio."  # heads such as Data2VecAudioForCTC keep the base model under this name


def rules_for(reverse: bool = False) -> list[tuple[re.Pattern, str]]:
    """Compiled (pattern, replacement) prefix rules, ours -> HF (or HF -> ours when ``reverse``)."""
    return compile_rules(RULES, reverse)


def check_exportable(objective: Data2VecObjective) -> None:
    cfg = objective.backbone.config
    if cfg.causal or not cfg.bias or cfg.norm_first or cfg.final_norm:
        raise SelfsupError("only bidirectional post-LN encoders with biases and no final norm export as "
                           "Data2VecAudioModel")


def data2vec_audio_config(objective: Data2VecObjective):
    """The ``Data2VecAudioConfig`` describing our student (plus our pre-training settings)."""
    from transformers import Data2VecAudioConfig

    check_exportable(objective)
    a, t, o = objective.adapter.config, objective.backbone.config, objective.config
    return Data2VecAudioConfig(
        hidden_size=t.hidden_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        intermediate_size=t.intermediate_size, hidden_act=t.activation, hidden_dropout=t.dropout,
        attention_dropout=t.attention_dropout, activation_dropout=0.0, layerdrop=0.0,
        feat_proj_dropout=a.feat_proj_dropout, layer_norm_eps=t.layer_norm_eps,
        feat_extract_activation=a.activation, conv_dim=list(a.conv_dim), conv_kernel=list(a.conv_kernel),
        conv_stride=list(a.conv_stride), conv_bias=a.conv_bias, num_conv_pos_embeddings=a.num_conv_pos_embeddings,
        conv_pos_kernel_size=a.conv_pos_kernel_size, num_conv_pos_embedding_groups=a.num_conv_pos_embedding_groups,
        mask_time_prob=0.05, mask_time_length=o.mask_length, mask_time_min_masks=2,
        selfsup_data2vec=o.to_dict())


def to_hf_state_dict(objective: Data2VecObjective) -> dict[str, torch.Tensor]:
    rules, out = rules_for(), {}
    for key, value in objective.state_dict().items():
        if key.startswith(PRETRAINING_ONLY):
            continue
        if (m := re.match(r"^backbone\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$", key)):
            for name, part in zip(QKV, value.chunk(3, dim=0)):
                out[LAYER.format(i=m[1]) + f"attention.{name}.{m[2]}"] = part.clone()
        elif (new := rename(key, rules)) is not None:
            out[new] = value
        else:
            raise RuntimeError(f"data2vec export: no HF name for {key}")
    return out


def to_transformers(objective: Data2VecObjective):
    """A ``Data2VecAudioModel`` holding the student's weights (float32, eval mode)."""
    from transformers import Data2VecAudioModel

    model = Data2VecAudioModel(data2vec_audio_config(objective))
    state = {k: v.detach().float().clone() for k, v in to_hf_state_dict(objective).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"data2vec export mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def configs_from(hf_cfg, dropout: float | None = None, **overrides: Any):
    """(Data2VecAudioAdapterConfig, TransformerConfig, Data2VecObjectiveConfig) from a ``Data2VecAudioConfig``.

    Objective settings: ours when the checkpoint is a selfsup export, else our defaults with ``mask_length``
    from the config and ``average_top_k_layers = min(8, layers)``; ``overrides`` win.
    """
    if getattr(hf_cfg, "add_adapter", False):
        raise SelfsupError("data2vec audio checkpoints with adapter layers are not supported")
    drop = (lambda v: v if dropout is None else dropout)
    audio = Data2VecAudioAdapterConfig(
        conv_dim=hf_cfg.conv_dim, conv_kernel=hf_cfg.conv_kernel, conv_stride=hf_cfg.conv_stride,
        conv_bias=hf_cfg.conv_bias, activation=hf_cfg.feat_extract_activation,
        num_conv_pos_embeddings=hf_cfg.num_conv_pos_embeddings, conv_pos_kernel_size=hf_cfg.conv_pos_kernel_size,
        num_conv_pos_embedding_groups=hf_cfg.num_conv_pos_embedding_groups,
        feat_proj_dropout=drop(hf_cfg.feat_proj_dropout))
    backbone = TransformerConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
        intermediate_size=hf_cfg.intermediate_size, activation=hf_cfg.hidden_act, norm_first=False,
        final_norm=False, dropout=drop(hf_cfg.hidden_dropout), attention_dropout=drop(hf_cfg.attention_dropout),
        layer_norm_eps=hf_cfg.layer_norm_eps)
    known = {f.name for f in fields(Data2VecObjectiveConfig)}
    if unknown := set(overrides) - known:
        raise SelfsupError(f"unknown data2vec settings {sorted(unknown)}; choose from {sorted(known)}")
    settings = getattr(hf_cfg, "selfsup_data2vec", None)
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if k in known}
    else:
        settings = dict(mask_length=hf_cfg.mask_time_length,
                        average_top_k_layers=min(8, hf_cfg.num_hidden_layers))
    return audio, backbone, Data2VecObjectiveConfig(**{**settings, **overrides})


def from_hf_state_dict(objective: Data2VecObjective, hf: dict[str, torch.Tensor]) -> None:
    """Load HF weights into the student, then make the teacher a copy of it."""
    hf = {k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k: v for k, v in hf.items()}
    rules, ours = rules_for(reverse=True), {}
    for key, value in hf.items():
        if (m := re.match(r"^encoder\.layers\.(\d+)\.attention\.q_proj\.(weight|bias)$", key)):
            pre = LAYER.format(i=m[1]) + "attention."
            ours[f"backbone.layers.{m[1]}.attn.qkv.{m[2]}"] = torch.cat([hf[f"{pre}{n}.{m[2]}"] for n in QKV])
        elif (new := rename(key, rules)) is not None:
            ours[new] = value
    missing, unexpected = objective.load_state_dict(ours, strict=False)
    missing = [k for k in missing if not k.startswith(PRETRAINING_ONLY) and k != "mask_embedding"]
    if missing or unexpected:
        raise SelfsupError(f"checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    objective.reset_teacher()


def from_transformers(path_or_model, dropout: float | None = None, **overrides: Any) -> Data2VecObjective:
    """Our objective from a ``Data2VecAudioModel`` (or a checkpoint folder / Hub name of any data2vec-audio
    model: ``--init_from``). The teacher starts as a copy of the student, the regression head (and the mask
    embedding, when the checkpoint has none) freshly initialised. HF's ``layerdrop`` and
    ``activation_dropout`` have no counterpart in our backbone and are not used.
    """
    from transformers import AutoConfig, Data2VecAudioModel

    where = str(path_or_model) if isinstance(path_or_model, (str, Path)) else "model"
    if isinstance(path_or_model, (str, Path)):
        try:
            hf_cfg = AutoConfig.from_pretrained(str(path_or_model), trust_remote_code=False)
        except Exception as err:  # noqa: BLE001
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SelfsupError(f"{path_or_model}: not a transformers checkpoint ({first})") from None
        if hf_cfg.model_type != "data2vec-audio":
            raise SelfsupError(f"{path_or_model}: model type {hf_cfg.model_type!r}; --init_from here needs a "
                               "data2vec-audio checkpoint")
        model = Data2VecAudioModel.from_pretrained(str(path_or_model), trust_remote_code=False)
    else:
        model = path_or_model
        if not type(model).__name__.startswith("Data2VecAudio"):
            raise SelfsupError(f"expected a Data2VecAudio model, got {type(model).__name__}")
    try:
        audio, backbone, settings = configs_from(model.config, dropout, **overrides)
        objective = Data2VecObjective(audio, backbone, settings)
    except ValueError as err:
        raise SelfsupError(f"{where}: {err}") from None
    from_hf_state_dict(objective, model.state_dict())
    return objective


__all__ = ["to_transformers", "from_transformers", "feature_extractor_for", "data2vec_audio_config",
           "to_hf_state_dict", "from_hf_state_dict", "configs_from"]
