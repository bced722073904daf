"""HuBERT of a named size (``objectives/clustering/sizes.py``)."""
from __future__ import annotations

from typing import Any

from selfsup.objectives.clustering.hf_hubert import compose_hubert
from selfsup.objectives.clustering.hubert import HubertObjective, HubertObjectiveConfig
from selfsup.objectives.clustering.sizes import size_of
from selfsup.recipes.builders.speech_quantised import speech_configs


def hubert(size: str = "base", num_clusters: int | None = None, stable_layer_norm: bool = False,
           audio: dict | None = None, backbone: dict | None = None, **objective: Any) -> HubertObjective:
    """HuBERT of a named size predicting ``num_clusters`` k-means classes. ``stable_layer_norm``: pre-LN (HuBERT
    large / X-large) instead of HuBERT base's post-LN with GroupNorm in the first conv layer."""
    sizes = size_of(size)
    audio_cfg, backbone_cfg = speech_configs(sizes, size, stable_layer_norm, audio, backbone)
    if num_clusters is not None:
        objective["num_clusters"] = num_clusters
    return compose_hubert(audio_cfg, backbone_cfg, HubertObjectiveConfig(**{**sizes["objective"], **objective}))


__all__ = ["hubert"]
