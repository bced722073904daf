"""Prediction heads shared by objectives (BERT's MLM head, data2vec's regression head); the projection heads
of the contrastive families will join them here."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.transformer import ACTIVATIONS


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> activation -> LayerNorm -> decoder tied to the word embeddings + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACTIVATIONS[activation]
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, h: Tensor, decoder_weight: Tensor) -> Tensor:
        """h: (M, D) -> logits (M, V)."""
        return F.linear(self.norm(self.act(self.dense(h))), decoder_weight, self.bias)


def regression_head(dim: int, layers: int = 1) -> nn.Module:
    """data2vec's head onto the targets: one Linear (speech), or ``layers`` Linear with GELU between them, the
    first doubling the width (fairseq ``head_layers``; text uses 2)."""
    if layers < 1:
        raise ValueError(f"head_layers must be at least 1, got {layers}")
    if layers == 1:
        return nn.Linear(dim, dim)
    parts, width = [], dim
    for i in range(layers - 1):
        nxt = dim * 2 if i == 0 else width
        parts += [nn.Linear(width, nxt), nn.GELU()]
        width = nxt
    return nn.Sequential(*parts, nn.Linear(width, dim))


__all__ = ["MLMHead", "regression_head"]
