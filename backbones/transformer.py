"""One configurable Transformer encoder: BERT (post-LN), ViT / GPT-2 / CLIP (pre-LN), causal or not.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them). Query, key and value come from one fused projection (one matmul instead of three);
export code splits it back into the separate matrices of the ``transformers`` models.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from selfsup.types import BackboneOutput

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass
class TransformerConfig:
    """Sizes and wiring of :class:`TransformerEncoder`.

    norm_first: pre-LN (ViT, GPT-2, CLIP) when True, post-LN (BERT) when False.
    final_norm: a LayerNorm after the last layer (pre-LN models usually have one).
    activation_dropout: dropout after the MLP's activation (``transformers``' ``activation_dropout``).
    layerdrop: in training, each layer is skipped with this probability (Fan et al., 2019; one draw per layer
    and forward, as ``transformers``' speech encoders; multi-process runs then need DDP's
    ``find_unused_parameters``, which the recipes turn on).
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 1024
    activation: str = "gelu"
    norm_first: bool = False
    final_norm: bool = False
    causal: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    bias: bool = True
    gradient_checkpointing: bool = False
    activation_dropout: float = 0.0
    layerdrop: float = 0.0

    def __post_init__(self) -> None:
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, on SDPA."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        self.causal = cfg.causal

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        """x: (B, N, D); attn_mask: (B, 1, 1|N, N) bool, True where attention is allowed, or None."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None,
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerLayer(nn.Module):
    """Attention + MLP with residuals; pre-LN or post-LN."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = ACTIVATIONS[cfg.activation]
        self.act_drop = nn.Dropout(cfg.activation_dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def mlp(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.act_drop(self.act(self.fc1(x)))))

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        if self.norm_first:
            x = x + self.drop(self.attn(self.norm1(x), attn_mask))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.drop(self.attn(x, attn_mask)))
        return self.norm2(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerLayer` with an optional final norm; modality-blind."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.final_norm else nn.Identity()
        self.apply(init_weights)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def set_regularization(self, activation_dropout: float | None = None, layerdrop: float | None = None) -> None:
        """Change the activation dropout and the layerdrop of a built encoder (None: keep)."""
        changes = {k: v for k, v in (("activation_dropout", activation_dropout), ("layerdrop", layerdrop))
                   if v is not None}
        self.config = replace(self.config, **changes)
        for layer in self.layers:
            layer.act_drop.p = self.config.activation_dropout

    def attention_mask(self, padding_mask: Tensor | None, n: int) -> Tensor | None:
        """(B, N) padding mask -> (B, 1, 1|N, N) bool mask for SDPA (True = may attend), or None."""
        if padding_mask is None:
            return None
        keep = ~padding_mask[:, None, None, :]
        if self.config.causal:
            keep = keep & torch.ones(n, n, dtype=torch.bool, device=keep.device).tril()
        return keep

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, output_hidden_states: bool = False
    ) -> BackboneOutput:
        """x: (B, N, D); padding_mask: (B, N) True where padded.

        hidden_states (when asked for) holds the input and each layer's output before the final norm, as in
        ``transformers``.
        """
        attn_mask = self.attention_mask(padding_mask, x.shape[1])
        states = [x] if output_hidden_states else None
        layerdrop = self.config.layerdrop if self.training else 0.0
        for layer in self.layers:
            skipped = layerdrop > 0.0 and bool(torch.rand([]) < layerdrop)   # one draw, as transformers does
            if skipped:
                pass
            elif self.config.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, use_reentrant=False)
            else:
                x = layer(x, attn_mask)
            if states is not None:
                states.append(x)
        x = self.norm(x)
        return BackboneOutput(x, tuple(states) if states is not None else None)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-2 initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["TransformerConfig", "TransformerEncoder", "init_weights", "num_parameters"]
