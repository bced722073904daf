"""CPC on raw waveforms of a named size (``objectives/predictive/sizes.py``): the conv encoder alone (an
``AudioAdapter`` without position convolution behind a Transformer of no layers, so a latent is its frame's),
and the objective over its token map."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import TransformerEncoder, transformer_config
from selfsup.modalities.audio import AudioAdapter, AudioConfig
from selfsup.objectives.predictive.cpc import CPC, CPCConfig
from selfsup.objectives.predictive.sizes import SPEECH_SIZES
from selfsup.types import Encoder


def speech_encoder(size: str = "base", audio: dict | None = None) -> Encoder:
    """The conv encoder of CPC's audio setting at ``size``; ``audio``: AudioConfig overrides."""
    if size not in SPEECH_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SPEECH_SIZES)}")
    sizes = SPEECH_SIZES[size]
    width = sizes["hidden_size"]
    adapter = AudioAdapter(AudioConfig(**{**sizes["audio"], **(audio or {})}), width, dropout=0.0,
                           encoder_norm=False)
    backbone = TransformerEncoder(transformer_config(dict(hidden_size=width, num_layers=0, num_heads=1,
                                                          intermediate_size=width), "speech", dropout=0.0))
    return Encoder(adapter, backbone)


def cpc_speech(size: str = "base", audio: dict | None = None, **objective: Any) -> CPC:
    """CPC on raw waveforms: :func:`speech_encoder` and the size's GRU width and offsets (``objective``:
    CPCConfig overrides, e.g. ``num_offsets``)."""
    return CPC(speech_encoder(size, audio), CPCConfig(**{**SPEECH_SIZES[size]["objective"], **objective}))


__all__ = ["speech_encoder", "cpc_speech"]
