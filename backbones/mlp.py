"""A multilayer perceptron over a fixed set of tokens: the tokens of one example (a table row's column tokens) are
flattened into one vector and mapped through ``num_layers`` linear layers, the activation between them, to one
output token per example -- SCARF's encoder (Bahri et al., ICLR 2022, sec. 4: four ReLU layers of 256) on the
feature tokenizer's per-column embeddings (a number x * W_j + b_j, a category its embedding row: together the
first linear layer of an MLP on the scaled numbers and one-hot categories, factored).

The backbone contract: ``forward(x (B, N, D), padding_mask, output_hidden_states)`` -> ``BackboneOutput`` whose
last hidden state is (B, 1, hidden_size); with ``output_hidden_states`` the input tokens and every layer's output
(each (B, 1, hidden_size)). Every example has the same N tokens: no padding, no dropped tokens (a masked objective
that drops or needs a token per position is not for this backbone).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from selfsup.types import BackboneOutput

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


@dataclass
class MLPConfig:
    """num_tokens x token_size: the flattened input; hidden_size: every layer's width; the activation after every
    layer but the last; dropout after each activation."""

    num_tokens: int
    token_size: int
    hidden_size: int = 256
    num_layers: int = 4
    activation: str = "relu"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_tokens < 1 or self.token_size < 1 or self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(f"an MLP needs at least one token, width and layer, got {self}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


class MLPBackbone(nn.Module):
    """See the module docstring."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        c = self.config = config
        self.hidden_size = c.hidden_size
        widths = [c.num_tokens * c.token_size] + [c.hidden_size] * c.num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[c.activation]()
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, output_hidden_states: bool = False,
                structure=None) -> BackboneOutput:
        c = self.config
        if x.dim() != 3 or x.shape[1:] != (c.num_tokens, c.token_size):
            raise ValueError(f"expected tokens of shape (B, {c.num_tokens}, {c.token_size}), got {tuple(x.shape)}")
        if padding_mask is not None and bool(padding_mask.any()):
            raise ValueError("an MLP backbone reads every token of an example: no padding")
        states = [x]
        h = x.flatten(1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.drop(self.act(h))
            states.append(h[:, None])
        return BackboneOutput(h[:, None], tuple(states) if output_hidden_states else None)


__all__ = ["MLPConfig", "MLPBackbone", "ACTIVATIONS"]
