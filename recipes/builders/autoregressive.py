"""A GPT of a named size (``objectives/autoregressive/sizes.py``)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import transformer_config
from selfsup.objectives.autoregressive.clm import CausalLanguageModeling
from selfsup.objectives.autoregressive.hf_gpt2 import compose_gpt
from selfsup.objectives.autoregressive.sizes import size_of


def gpt(size: str, vocab_size: int, max_positions: int = 1024, **backbone: Any) -> CausalLanguageModeling:
    """A GPT-2-style causal LM of a named size (``sizes.SIZES``, GPT-2's wiring); keyword arguments override the
    backbone (dropout, attention_dropout, hidden_size, ...)."""
    return compose_gpt(transformer_config(size_of(size)["backbone"], "gpt2", **backbone), vocab_size, max_positions)


__all__ = ["gpt"]
