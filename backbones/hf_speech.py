"""What the three speech conversions (``hf_wav2vec2``, ``hf_hubert``, ``hf_data2vec``) share.

Their encoders are the same in ``transformers`` (conv feature encoder, feature projection, position
convolution, post-LN or pre-LN Transformer) up to a name prefix, so the weight renaming, the split / join of
our fused QKV projection (through ``selfsup.convert``), and the config fields of the encoder live here once.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from selfsup import convert
from selfsup.backbones.transformer import TransformerConfig
from selfsup.convert import check_encoder, load_into, load_model
from selfsup.errors import SelfsupError

QKV = ("q_proj", "k_proj", "v_proj")


def transformer_rules(layer: str) -> list[tuple[str, str]]:
    """(ours, HF) prefixes of the Transformer layers but the QKV projection; ``layer`` = HF's layer prefix."""
    return [
        ("backbone.layers.{i}.attn.out.", layer + "attention.out_proj."),
        ("backbone.layers.{i}.norm1.", layer + "layer_norm."),
        ("backbone.layers.{i}.fc1.", layer + "feed_forward.intermediate_dense."),
        ("backbone.layers.{i}.fc2.", layer + "feed_forward.output_dense."),
        ("backbone.layers.{i}.norm2.", layer + "final_layer_norm."),
    ]


def export_state(state: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]], layer: str, what: str,
                 special: Callable[[str, torch.Tensor], dict | None] = lambda key, value: None
                 ) -> dict[str, torch.Tensor]:
    """Our state dict under the HF speech names (``layer`` = HF's layer prefix; see ``selfsup.convert``)."""
    return convert.export_state(state, pairs, layer + "attention.", QKV, what, special)


def import_state(hf: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]], layer: str) -> dict[str, torch.Tensor]:
    """HF speech weights under our names (see ``selfsup.convert``)."""
    return convert.import_state(hf, pairs, layer + "attention.", QKV)


def encoder_config_kwargs(objective: torch.nn.Module) -> dict[str, Any]:
    """The fields the wav2vec 2.0 / HuBERT / data2vec-audio configs share, from our adapter and backbone."""
    a, t = objective.adapter.config, objective.backbone.config
    return dict(
        hidden_size=t.hidden_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        intermediate_size=t.intermediate_size, hidden_act=t.activation, hidden_dropout=t.dropout,
        attention_dropout=t.attention_dropout, activation_dropout=t.activation_dropout, layerdrop=t.layerdrop,
        feat_proj_dropout=a.feat_proj_dropout, layer_norm_eps=t.layer_norm_eps,
        feat_extract_activation=a.activation, conv_dim=list(a.conv_dim), conv_kernel=list(a.conv_kernel),
        conv_stride=list(a.conv_stride), conv_bias=a.conv_bias, num_conv_pos_embeddings=a.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=a.num_conv_pos_embedding_groups)


def adapter_kwargs(hf_cfg, drop: Callable[[float], float]) -> dict[str, Any]:
    """Our adapter-config fields read from an HF speech config (``drop`` maps a dropout rate)."""
    return dict(
        conv_dim=hf_cfg.conv_dim, conv_kernel=hf_cfg.conv_kernel, conv_stride=hf_cfg.conv_stride,
        conv_bias=hf_cfg.conv_bias, activation=hf_cfg.feat_extract_activation,
        num_conv_pos_embeddings=hf_cfg.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=hf_cfg.num_conv_pos_embedding_groups,
        feat_proj_dropout=drop(hf_cfg.feat_proj_dropout))


def transformer_config(hf_cfg, pre_ln: bool, drop: Callable[[float], float]) -> TransformerConfig:
    """Our backbone config read from an HF speech config."""
    return TransformerConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
        intermediate_size=hf_cfg.intermediate_size, activation=hf_cfg.hidden_act, norm_first=pre_ln,
        final_norm=pre_ln, dropout=drop(hf_cfg.hidden_dropout), attention_dropout=drop(hf_cfg.attention_dropout),
        activation_dropout=drop(hf_cfg.activation_dropout), layerdrop=hf_cfg.layerdrop,
        layer_norm_eps=hf_cfg.layer_norm_eps)


def dropout_map(dropout: float | None) -> Callable[[float], float]:
    """The checkpoint's rate, or ``dropout`` for all of them when given."""
    return (lambda v: v) if dropout is None else (lambda v: dropout)


def feature_extractor_for(objective: torch.nn.Module | None = None):
    """The ``Wav2Vec2FeatureExtractor`` that goes with an export: 16 kHz mono, zero-mean unit-variance
    normalisation per utterance, zero padding, attention mask returned (our models train with it)."""
    from transformers import Wav2Vec2FeatureExtractor

    rate = objective.adapter.config.sampling_rate if objective is not None else 16000
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=rate, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)
