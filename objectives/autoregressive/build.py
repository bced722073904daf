"""Composing a GPT from the text adapter and a causal Transformer: ``compose_gpt`` (the wiring, which the conversion
uses too) and ``gpt(size, vocab_size)`` (a named size)."""
from __future__ import annotations

import math
from typing import Any

from torch import nn

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder, transformer_config
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.autoregressive.clm import CausalLanguageModeling
from selfsup.objectives.autoregressive.sizes import size_of


def compose_gpt(backbone: TransformerConfig, vocab_size: int, max_positions: int = 1024) -> CausalLanguageModeling:
    """A :class:`CausalLanguageModeling` from a (causal) backbone config: GPT-2 embeddings (no padding row, no
    embedding norm, dropout = the backbone's) and GPT-2's scaled initialisation of the residual projections."""
    adapter = TextAdapter(vocab_size, backbone.hidden_size, max_positions, type_vocab_size=0, pad_token_id=None,
                          dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps, embedding_norm=False)
    encoder = TransformerEncoder(backbone)
    std = 0.02 / math.sqrt(2 * backbone.num_layers)
    for layer in encoder.layers:
        nn.init.normal_(layer.attn.out.weight, std=std)
        nn.init.normal_(layer.fc2.weight, std=std)
    return CausalLanguageModeling(adapter, encoder)


def gpt(size: str, vocab_size: int, max_positions: int = 1024, **backbone: Any) -> CausalLanguageModeling:
    """A GPT-2-style causal LM of a named size (``sizes.SIZES``, GPT-2's wiring); keyword arguments override the
    backbone (dropout, attention_dropout, hidden_size, ...)."""
    return compose_gpt(transformer_config(size_of(size)["backbone"], "gpt2", **backbone), vocab_size, max_positions)


__all__ = ["compose_gpt", "gpt"]
