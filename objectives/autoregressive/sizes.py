"""GPT's sizes and presets. The Transformer is the shared one (``backbones.transformer.SIZES``) with GPT-2's wiring
(``WIRINGS["gpt2"]``: pre-LN with a final norm, causal, tanh GELU, LayerNorm eps 1e-5); word + learned position
embeddings with no norm, the head tied to the word embeddings, residual projections initialised with std
0.02 / sqrt(2 x layers). base = GPT-2 small's shape (124M with its 50,257-token vocabulary; its context of 1,024 is
``max_positions``)."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import SIZES as TRANSFORMER

SIZES: dict[str, dict[str, dict[str, Any]]] = {size: dict(backbone=TRANSFORMER[size]) for size in TRANSFORMER}
# nanoGPT's CPU run of character-level Shakespeare (its README: config/train_shakespeare_char.py with --block_size=64
# --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0):
# the shape, the optimisation, the data split and the validation loss it reports for that run. One departure: the
# peak learning rate is 4e-3 (cosine down to 4e-4), not nanoGPT's 1e-3 (to 1e-4); 4e-3 scored best of 1e-3 ... 8e-3
# on a tuning split cut from the training text (benchmarks/gpt_learning.py --tune; docs/recipes/gpt.md).
NANOGPT_SHAKESPEARE_CHAR: dict[str, Any] = dict(
    backbone=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, dropout=0.0,
                  attention_dropout=0.0),
    context=64, batch_size=12, max_steps=2000, learning_rate=4e-3, min_learning_rate=4e-4, warmup_steps=100,
    adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0,
    lr_scheduler_type="cosine", validation_fraction=0.1, reference_val_loss=1.88)


# The shapes the speed benchmarks time ours against GPT2LMHeadModel at (benchmarks/gpt_speed.py,
# benchmarks/gpt_generate_speed.py; ``hf_gpt2.gpt_and_gpt2`` builds the pair): ``small`` is --model_size small with
# GPT-2's dropout 0.1, a byte-level BPE of 8,000 and context 128, batch 16; ``nanogpt`` is NANOGPT_SHAKESPEARE_CHAR's
# shape on its 66 characters.
SPEED_CONFIGS: dict[str, dict[str, Any]] = {
    "small": dict(backbone=dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, dropout=0.1,
                                attention_dropout=0.1), vocab_size=8000, context=128, batch_size=16),
    "nanogpt": dict(backbone=NANOGPT_SHAKESPEARE_CHAR["backbone"], vocab_size=66,
                    context=NANOGPT_SHAKESPEARE_CHAR["context"], batch_size=NANOGPT_SHAKESPEARE_CHAR["batch_size"]),
}


def size_of(size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size (a copy)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    return {k: dict(v) for k, v in SIZES[size].items()}


__all__ = ["SIZES", "NANOGPT_SHAKESPEARE_CHAR", "SPEED_CONFIGS", "size_of"]
