"""Composing HuBERT from the audio adapter, the Transformer and the span masker: ``compose_hubert`` (the wiring,
which the conversion uses too) and ``hubert(size)`` (a named size)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.modalities.audio import AudioConfig
from selfsup.objectives.clustering.hubert import HubertObjective, HubertObjectiveConfig
from selfsup.objectives.clustering.sizes import size_of
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.speech_quantised.build import speech_adapter, speech_configs


def compose_hubert(audio: AudioConfig, backbone: TransformerConfig, config: HubertObjectiveConfig) -> HubertObjective:
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return HubertObjective(speech_adapter(audio, backbone), TransformerEncoder(backbone), masker, config)


def hubert(size: str = "base", num_clusters: int | None = None, stable_layer_norm: bool = False,
           audio: dict | None = None, backbone: dict | None = None, **objective: Any) -> HubertObjective:
    """HuBERT of a named size predicting ``num_clusters`` k-means classes. ``stable_layer_norm``: pre-LN (HuBERT
    large / X-large) instead of HuBERT base's post-LN with GroupNorm in the first conv layer."""
    sizes = size_of(size)
    audio_cfg, backbone_cfg = speech_configs(sizes, size, stable_layer_norm, audio, backbone)
    if num_clusters is not None:
        objective["num_clusters"] = num_clusters
    return compose_hubert(audio_cfg, backbone_cfg, HubertObjectiveConfig(**{**sizes["objective"], **objective}))


__all__ = ["compose_hubert", "hubert"]
