"""wav2vec 2.0 of a named size (``objectives/speech_quantised/sizes.py``)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import TransformerConfig, transformer_config
from selfsup.modalities.audio import CONV_SIZES, AudioConfig
from selfsup.objectives.speech_quantised.hf_wav2vec2 import compose_wav2vec2
from selfsup.objectives.speech_quantised.sizes import STABLE_LAYER_NORM, size_of
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig


def speech_configs(sizes: dict[str, dict], size: str, stable_layer_norm: bool, audio: dict | None,
                   backbone: dict | None) -> tuple[AudioConfig, TransformerConfig]:
    """(adapter config, Transformer config) of a speech family's ``size``: post-LN (base) or pre-LN with a final
    norm and LayerNorm in every conv layer (``stable_layer_norm``)."""
    stable = STABLE_LAYER_NORM if stable_layer_norm else {}
    audio_cfg = AudioConfig(**{**CONV_SIZES[size], **sizes["adapter"], **stable, **(audio or {})})
    backbone_cfg = transformer_config(sizes["backbone"], "speech", norm_first=stable_layer_norm,
                                      final_norm=stable_layer_norm, **(backbone or {}))
    return audio_cfg, backbone_cfg


def wav2vec2(size: str = "base", stable_layer_norm: bool = False, audio: dict | None = None,
             backbone: dict | None = None, **objective: Any) -> Wav2Vec2Objective:
    """wav2vec 2.0 of a named size. ``stable_layer_norm``: pre-LN Transformer with a final norm and LayerNorm in
    every conv layer (wav2vec2-large-lv60 style) instead of wav2vec2-base's post-LN."""
    sizes = size_of(size)
    audio_cfg, backbone_cfg = speech_configs(sizes, size, stable_layer_norm, audio, backbone)
    return compose_wav2vec2(audio_cfg, backbone_cfg, Wav2Vec2ObjectiveConfig(**{**sizes["objective"], **objective}))


__all__ = ["speech_configs", "wav2vec2"]
