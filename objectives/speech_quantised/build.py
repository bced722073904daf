"""Composing wav2vec 2.0 from the audio adapter, the Transformer and the span masker: ``compose_wav2vec2`` (the
wiring, which the conversion uses too) and ``wav2vec2(size)`` (a named size)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder, transformer_config
from selfsup.modalities.audio import CONV_SIZES, AudioAdapter, AudioConfig
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.speech_quantised.sizes import STABLE_LAYER_NORM, size_of
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig


def speech_adapter(audio: AudioConfig, backbone: TransformerConfig) -> AudioAdapter:
    """The audio adapter of a wav2vec 2.0 / HuBERT model: the encoder LayerNorm in the adapter for post-LN."""
    return AudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps,
                        encoder_norm=not backbone.norm_first)


def speech_configs(sizes: dict[str, dict], size: str, stable_layer_norm: bool, audio: dict | None,
                   backbone: dict | None) -> tuple[AudioConfig, TransformerConfig]:
    """(adapter config, Transformer config) of a speech family's ``size``: post-LN (base) or pre-LN with a final
    norm and LayerNorm in every conv layer (``stable_layer_norm``)."""
    stable = STABLE_LAYER_NORM if stable_layer_norm else {}
    audio_cfg = AudioConfig(**{**CONV_SIZES[size], **sizes["adapter"], **stable, **(audio or {})})
    backbone_cfg = transformer_config(sizes["backbone"], "speech", norm_first=stable_layer_norm,
                                      final_norm=stable_layer_norm, **(backbone or {}))
    return audio_cfg, backbone_cfg


def compose_wav2vec2(audio: AudioConfig, backbone: TransformerConfig,
                     config: Wav2Vec2ObjectiveConfig) -> Wav2Vec2Objective:
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return Wav2Vec2Objective(speech_adapter(audio, backbone), TransformerEncoder(backbone), masker, config)


def wav2vec2(size: str = "base", stable_layer_norm: bool = False, audio: dict | None = None,
             backbone: dict | None = None, **objective: Any) -> Wav2Vec2Objective:
    """wav2vec 2.0 of a named size. ``stable_layer_norm``: pre-LN Transformer with a final norm and LayerNorm in
    every conv layer (wav2vec2-large-lv60 style) instead of wav2vec2-base's post-LN."""
    sizes = size_of(size)
    audio_cfg, backbone_cfg = speech_configs(sizes, size, stable_layer_norm, audio, backbone)
    return compose_wav2vec2(audio_cfg, backbone_cfg, Wav2Vec2ObjectiveConfig(**{**sizes["objective"], **objective}))


__all__ = ["speech_adapter", "speech_configs", "compose_wav2vec2", "wav2vec2"]
