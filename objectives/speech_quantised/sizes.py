"""wav2vec 2.0's sizes (Baevski et al., 2020, table 9; base = wav2vec2-base): the position convolution on top of the
audio adapter's conv encoder (``modalities.audio.CONV_SIZES``), the Transformer (``backbones.transformer.SIZES``)
and the quantizer / contrastive head."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import SIZES as TRANSFORMER

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": dict(backbone=TRANSFORMER["tiny"], adapter=dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
                 objective=dict(num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32,
                                num_negatives=20)),
    "small": dict(backbone=TRANSFORMER["small"],
                  adapter=dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16),
                  objective=dict(num_codevectors_per_group=160, codevector_dim=128, proj_codevector_dim=128,
                                 num_negatives=50)),
    "base": dict(backbone=TRANSFORMER["base"], adapter=dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16),
                 objective=dict(num_codevectors_per_group=320, codevector_dim=256, proj_codevector_dim=256,
                                num_negatives=100)),
}
# wav2vec2-large-lv60's "stable layer norm": LayerNorm in every conv layer (with biases), a pre-LN Transformer
STABLE_LAYER_NORM = dict(feat_extract_norm="layer", conv_bias=True)


def size_of(size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size (a copy)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    return {k: dict(v) for k, v in SIZES[size].items()}


__all__ = ["SIZES", "STABLE_LAYER_NORM", "size_of"]
