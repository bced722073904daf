"""HuBERT's sizes (Hsu et al., 2021, table 1; base = HuBERT base, final_dim 256, 500 clusters after iteration 1): the
position convolution on top of the audio adapter's conv encoder, the Transformer and the prediction head."""
from __future__ import annotations

from typing import Any

from selfsup.backbones.transformer import SIZES as TRANSFORMER

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": dict(backbone=TRANSFORMER["tiny"], adapter=dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2),
                 objective=dict(final_dim=32, num_clusters=50)),
    "small": dict(backbone=TRANSFORMER["small"],
                  adapter=dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16),
                  objective=dict(final_dim=128, num_clusters=100)),
    "base": dict(backbone=TRANSFORMER["base"], adapter=dict(num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16),
                 objective=dict(final_dim=256, num_clusters=500)),
}


def size_of(size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size (a copy)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    return {k: dict(v) for k, v in SIZES[size].items()}


__all__ = ["SIZES", "size_of"]
