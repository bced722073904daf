"""Conversion between :class:`Wav2Vec2Objective` and ``transformers``' ``Wav2Vec2ForPreTraining``.

Our fused QKV projection is split into q/k/v on export and joined on import; the weight-normed position
convolution keeps its parametrization (``original0`` = g, (1, 1, K); ``original1`` = v, (D, D / groups, K)),
so nothing is recomputed. The encoder LayerNorm is ours ``adapter.norm`` in post-LN models (wav2vec2-base) and
``backbone.norm`` in pre-LN ones (``do_stable_layer_norm``); HF calls both ``wav2vec2.encoder.layer_norm``.
The Gumbel temperature is not part of an HF checkpoint (HF keeps it as a plain attribute).
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
from selfsup.modalities.audio import AudioAdapter, AudioConfig
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig


def speech_adapter(audio: AudioConfig, backbone: TransformerConfig) -> AudioAdapter:
    """The audio adapter of a wav2vec 2.0 / HuBERT model: the encoder LayerNorm in the adapter for post-LN."""
    return AudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps,
                        encoder_norm=not backbone.norm_first)


def compose_wav2vec2(audio: AudioConfig, backbone: TransformerConfig,
                     config: Wav2Vec2ObjectiveConfig) -> Wav2Vec2Objective:
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return Wav2Vec2Objective(speech_adapter(audio, backbone), TransformerEncoder(backbone), masker, config)

LAYER = "wav2vec2.encoder.layers.{i}."
RULES = [  # ours -> HF; "{i}" is a layer index
    ("adapter.conv_layers.{i}.conv.", "wav2vec2.feature_extractor.conv_layers.{i}.conv."),
    ("adapter.conv_layers.{i}.norm.", "wav2vec2.feature_extractor.conv_layers.{i}.layer_norm."),
    ("adapter.projection_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("adapter.projection.", "wav2vec2.feature_projection.projection."),
    ("adapter.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    *transformer_rules(LAYER),
    ("mask_embedding", "wav2vec2.masked_spec_embed"),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_hid.", "project_hid."),
    ("project_q.", "project_q."),
]


def rule_pairs(stable: bool) -> list[tuple[str, str]]:
    """(ours, HF) prefixes, with the encoder LayerNorm where this kind of model keeps it."""
    return [*RULES, ("backbone.norm." if stable else "adapter.norm.", "wav2vec2.encoder.layer_norm.")]


def is_stable(objective: Wav2Vec2Objective) -> bool:
    return check_encoder(objective, "Wav2Vec2ForPreTraining")


def wav2vec2_config(objective: Wav2Vec2Objective):
    """The ``Wav2Vec2Config`` describing our objective (pre-training settings included)."""
    from transformers import Wav2Vec2Config

    a, o = objective.adapter.config, objective.config
    return Wav2Vec2Config(
        **encoder_config_kwargs(objective), final_dropout=0.0, feat_quantizer_dropout=o.dropout_features,
        feat_extract_norm=a.feat_extract_norm, do_stable_layer_norm=is_stable(objective),
        mask_time_prob=o.mask_prob, mask_time_length=o.mask_length, mask_time_min_masks=o.min_masks,
        num_codevectors_per_group=o.num_codevectors_per_group, num_codevector_groups=o.num_codevector_groups,
        codevector_dim=o.codevector_dim, proj_codevector_dim=o.proj_codevector_dim, num_negatives=o.num_negatives,
        contrastive_logits_temperature=o.contrastive_temperature, diversity_loss_weight=o.diversity_loss_weight,
    )


def to_hf_state_dict(objective: Wav2Vec2Objective) -> dict[str, torch.Tensor]:
    def special(key: str, value: torch.Tensor) -> dict | None:
        if key == "quantizer.temperature":
            return {}
        if key == "quantizer.codevectors":
            return {key: value[None]}                                    # (G*V, d/G) -> (1, G*V, d/G)
        return None
    return export_state(objective.state_dict(), rule_pairs(is_stable(objective)), LAYER, "wav2vec 2.0", special)


def to_transformers(objective: Wav2Vec2Objective):
    """A ``Wav2Vec2ForPreTraining`` holding the same weights (float32, eval mode, same Gumbel temperature)."""
    from transformers import Wav2Vec2ForPreTraining

    model = Wav2Vec2ForPreTraining(wav2vec2_config(objective))
    expected = set(model.state_dict())  # no masked_spec_embed when mask_time_prob is 0
    state = {k: v.detach().float().clone() for k, v in to_hf_state_dict(objective).items() if k in expected}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"wav2vec 2.0 export mismatch: missing {missing}, unexpected {unexpected}")
    model.set_gumbel_temperature(float(objective.quantizer.temperature))
    return model.eval()


def configs_from(hf_cfg, dropout: float | None = None, **overrides: Any):
    """(AudioConfig, TransformerConfig, Wav2Vec2ObjectiveConfig) from a ``Wav2Vec2Config``."""
    if getattr(hf_cfg, "add_adapter", False) or getattr(hf_cfg, "adapter_attn_dim", None) is not None:
        raise SelfsupError("wav2vec 2.0 checkpoints with adapter layers are not supported")
    stable, drop = bool(hf_cfg.do_stable_layer_norm), dropout_map(dropout)
    audio = AudioConfig(**adapter_kwargs(hf_cfg, drop), feat_extract_norm=hf_cfg.feat_extract_norm)
    backbone = transformer_config(hf_cfg, stable, drop)
    settings = dict(
        num_codevector_groups=hf_cfg.num_codevector_groups, num_codevectors_per_group=hf_cfg.num_codevectors_per_group,
        codevector_dim=hf_cfg.codevector_dim, proj_codevector_dim=hf_cfg.proj_codevector_dim,
        num_negatives=hf_cfg.num_negatives, contrastive_temperature=hf_cfg.contrastive_logits_temperature,
        diversity_loss_weight=hf_cfg.diversity_loss_weight, mask_prob=hf_cfg.mask_time_prob,
        mask_length=hf_cfg.mask_time_length, min_masks=hf_cfg.mask_time_min_masks,
        dropout_features=drop(hf_cfg.feat_quantizer_dropout))
    known = {f.name for f in fields(Wav2Vec2ObjectiveConfig)}
    if unknown := set(overrides) - known:
        raise SelfsupError(f"unknown wav2vec 2.0 settings {sorted(unknown)}; choose from {sorted(known)}")
    return audio, backbone, Wav2Vec2ObjectiveConfig(**{**settings, **overrides})


def from_hf_state_dict(objective: Wav2Vec2Objective, hf: dict[str, torch.Tensor]) -> None:
    ours = import_state(hf, rule_pairs(is_stable(objective)), LAYER)
    if "quantizer.codevectors" in hf:
        ours["quantizer.codevectors"] = hf["quantizer.codevectors"][0]
    load_into(objective, ours, optional=lambda k: k in ("quantizer.temperature", "mask_embedding"))


def from_transformers(path_or_model, dropout: float | None = None, **overrides: Any) -> Wav2Vec2Objective:
    """Our objective from a ``Wav2Vec2ForPreTraining`` (or a checkpoint folder / Hub name of any wav2vec2 model:
    ``--init_from``; parts it lacks, such as the quantizer of a fine-tuned model, start freshly initialised).

    Settings come from the checkpoint's config; ``overrides`` (fields of :class:`Wav2Vec2ObjectiveConfig`) win.
    Hub configs usually carry the *fine-tuning* SpecAugment rate (``mask_time_prob=0.05``): pass
    ``mask_prob=0.65`` to continue pre-training. The config's ``layerdrop`` and ``activation_dropout`` are
    kept (``dropout``, when given, sets every dropout rate, the activation dropout included).
    """
    model, where = load_model(path_or_model, "wav2vec2", "Wav2Vec2ForPreTraining")
    try:
        audio, backbone, settings = configs_from(model.config, dropout, **overrides)
    except ValueError as err:
        raise SelfsupError(f"{where}: {err}") from None
    objective = compose_wav2vec2(audio, backbone, settings)
    from_hf_state_dict(objective, model.state_dict())
    return objective


__all__ = ["to_transformers", "from_transformers", "feature_extractor_for", "wav2vec2_config",
           "to_hf_state_dict", "from_hf_state_dict"]
