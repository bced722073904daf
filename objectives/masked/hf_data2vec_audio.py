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

from dataclasses import fields
from typing import Any

import torch

from selfsup.backbones.hf_speech import (adapter_kwargs, check_encoder, dropout_map, encoder_config_kwargs,
                                         export_state, feature_extractor_for, import_state, load_into, load_model,
                                         transformer_config, transformer_rules)
from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.errors import SelfsupError
from selfsup.modalities.audio_pos import Data2VecAudioAdapter, Data2VecAudioAdapterConfig
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masking import SpanMasker


def compose_data2vec_audio(audio: Data2VecAudioAdapterConfig, backbone: TransformerConfig, masker: SpanMasker,
                           config: Data2VecObjectiveConfig) -> Data2VecObjective:
    adapter = Data2VecAudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout,
                                   layer_norm_eps=backbone.layer_norm_eps)
    return Data2VecObjective(adapter, TransformerEncoder(backbone), masker, config)

LAYER = "encoder.layers.{i}."
RULES = [  # ours -> HF (Data2VecAudioModel, no prefix); "{i}" is a layer index
    ("adapter.conv_layers.{i}.conv.", "feature_extractor.conv_layers.{i}.conv."),
    ("adapter.conv_layers.{i}.norm.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("adapter.projection_norm.", "feature_projection.layer_norm."),
    ("adapter.projection.", "feature_projection.projection."),
    ("adapter.pos_conv.convs.{i}.", "encoder.pos_conv_embed.layers.{i}.conv."),
    ("adapter.norm.", "encoder.layer_norm."),
    *transformer_rules(LAYER),
    ("mask_embedding", "masked_spec_embed"),
]
MASKER_KEYS = {"mask_prob", "mask_length", "min_masks"}
PRETRAINING_ONLY = ("teacher.", "regression_head.", "ema_decay")
HF_PREFIX = "data2vec_audio."  # heads such as Data2VecAudioForCTC keep the base model under this name


def check_exportable(objective: Data2VecObjective) -> None:
    check_encoder(objective, "Data2VecAudioModel", pre_ln=False)


def data2vec_audio_config(objective: Data2VecObjective):
    """The ``Data2VecAudioConfig`` describing our student (plus our pre-training settings)."""
    from transformers import Data2VecAudioConfig

    check_exportable(objective)
    a, o, m = objective.adapter.config, objective.config, objective.masker
    return Data2VecAudioConfig(
        **encoder_config_kwargs(objective), conv_pos_kernel_size=a.conv_pos_kernel_size, mask_time_prob=0.05,
        mask_time_length=m.mask_length, mask_time_min_masks=2, selfsup_data2vec={**o.to_dict(), **m.to_dict()})


def to_hf_state_dict(objective: Data2VecObjective) -> dict[str, torch.Tensor]:
    return export_state(objective.state_dict(), RULES, LAYER, "data2vec",
                        lambda key, value: {} if key.startswith(PRETRAINING_ONLY) else None)


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
    """(Data2VecAudioAdapterConfig, TransformerConfig, SpanMasker, Data2VecObjectiveConfig) from a
    ``Data2VecAudioConfig``.

    Settings: ours when the checkpoint is a selfsup export, else our defaults with ``mask_length`` from the
    config and ``average_top_k_layers = min(8, layers)``; ``overrides`` (objective or masker fields) win.
    """
    if getattr(hf_cfg, "add_adapter", False):
        raise SelfsupError("data2vec audio checkpoints with adapter layers are not supported")
    drop = dropout_map(dropout)
    audio = Data2VecAudioAdapterConfig(**adapter_kwargs(hf_cfg, drop),
                                       conv_pos_kernel_size=hf_cfg.conv_pos_kernel_size)
    backbone = transformer_config(hf_cfg, False, drop)
    known = {f.name for f in fields(Data2VecObjectiveConfig)} | MASKER_KEYS
    if unknown := set(overrides) - known:
        raise SelfsupError(f"unknown data2vec settings {sorted(unknown)}; choose from {sorted(known)}")
    settings = getattr(hf_cfg, "selfsup_data2vec", None)
    if isinstance(settings, dict):
        settings = {k: v for k, v in settings.items() if k in known}
    else:
        settings = dict(mask_length=hf_cfg.mask_time_length,
                        average_top_k_layers=min(8, hf_cfg.num_hidden_layers))
    settings = {**settings, **overrides}
    masker = SpanMasker(**{k: settings.pop(k) for k in MASKER_KEYS if k in settings})
    return audio, backbone, masker, Data2VecObjectiveConfig(**settings)


def from_hf_state_dict(objective: Data2VecObjective, hf: dict[str, torch.Tensor]) -> None:
    """Load HF weights into the student, then make the teacher a copy of it."""
    hf = {k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k: v for k, v in hf.items()}
    ours = import_state(hf, RULES, LAYER)
    load_into(objective, ours, optional=lambda k: k.startswith(PRETRAINING_ONLY) or k == "mask_embedding")
    objective.reset_teacher()


def from_transformers(path_or_model, dropout: float | None = None, **overrides: Any) -> Data2VecObjective:
    """Our objective from a ``Data2VecAudioModel`` (or a checkpoint folder / Hub name of any data2vec-audio
    model: ``--init_from``). The teacher starts as a copy of the student, the regression head (and the mask
    embedding, when the checkpoint has none) freshly initialised. The config's ``layerdrop`` and
    ``activation_dropout`` are kept (``dropout``, when given, sets every dropout rate, the activation dropout included).
    """
    model, where = load_model(path_or_model, "data2vec-audio", "Data2VecAudioModel",
                              accepts=lambda name: name.startswith("Data2VecAudio"))
    try:
        audio, backbone, masker, settings = configs_from(model.config, dropout, **overrides)
        objective = compose_data2vec_audio(audio, backbone, masker, settings)
    except ValueError as err:
        raise SelfsupError(f"{where}: {err}") from None
    from_hf_state_dict(objective, model.state_dict())
    return objective


__all__ = ["to_transformers", "from_transformers", "feature_extractor_for", "data2vec_audio_config",
           "to_hf_state_dict", "from_hf_state_dict", "configs_from"]
