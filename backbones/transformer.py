"""One configurable Transformer encoder: BERT (post-LN), ViT / GPT-2 / CLIP (pre-LN), causal or not.

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels
where the device has them; on a CPU in bf16, short sequences take the math kernel: :func:`attention_kernels`).
Query, key and value come from one fused projection (one matmul instead of three) and are views of its output;
export code splits it back into the separate matrices of the ``transformers`` models.

Two shortcuts for callers that know more than the encoder (MAE's decoder uses both; the numbers are the ones of
the full computation): ``outputs_from`` -- only the last tokens are wanted, so the last layer runs its queries,
output projection and MLP on them alone; ``first_qkv`` -- the caller has the first layer's QKV projection
(pre-LN), e.g. computed once for inputs that repeat.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.dropout import Dropout, attention_with_dropout, fast_dropout
from selfsup.types import BackboneOutput

QUICK_GELU = 1.702   # CLIP's x * sigmoid(1.702 x)
ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "quick_gelu": lambda x: x * torch.sigmoid(QUICK_GELU * x),
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
    norm: ``"layernorm"``, or ``"batchnorm"`` (PatchTST's: each feature normalised over every token of the
    global batch, :class:`TokenBatchNorm`; for unpadded tokens, eps ``layer_norm_eps``).
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
    norm: str = "layernorm"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose from {list(NORMS)}")
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


# The sizes every family starts from (a family's own table says where it departs): tiny (tests, seconds), small (a
# CPU, minutes), base (BERT-base / ViT-B / wav2vec2-base's shape).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
}
# How the reference models wire the Transformer (the config fields apart from size). bert: the defaults (post-LN,
# GELU, eps 1e-12); vit: transformers' ViTModel / ViTMAEModel (pre-LN + final norm, eps 1e-12 as HF's default --
# the official MAE code uses 1e-6 --, no dropout); gpt2: GPT2LMHeadModel (pre-LN + final norm, causal, tanh GELU,
# eps 1e-5); clip / siglip: CLIPModel's and SiglipModel's towers (pre-LN + final norm, no dropout; quick_gelu and
# eps 1e-5 / tanh GELU and eps 1e-6); speech: fairseq's wav2vec 2.0 / HuBERT / data2vec audio (eps 1e-5).
WIRINGS: dict[str, dict] = {
    "bert": {},
    "vit": dict(norm_first=True, final_norm=True, layer_norm_eps=1e-12, activation="gelu", dropout=0.0,
                attention_dropout=0.0),
    "gpt2": dict(norm_first=True, final_norm=True, causal=True, activation="gelu_new", layer_norm_eps=1e-5),
    "clip": dict(norm_first=True, final_norm=True, layer_norm_eps=1e-5, activation="quick_gelu", dropout=0.0,
                 attention_dropout=0.0),
    "siglip": dict(norm_first=True, final_norm=True, layer_norm_eps=1e-6, activation="gelu_pytorch_tanh",
                   dropout=0.0, attention_dropout=0.0),
    "speech": dict(layer_norm_eps=1e-5),
}


NORMS = ("layernorm", "batchnorm")


class TokenBatchNorm(GlobalBatchNorm):
    """Batch norm of (…, D) tokens over every token of the global batch (PatchTST's ``norm_type="batchnorm"``):
    the tokens flattened to (T, D) through :class:`GlobalBatchNorm`, so N processes normalise as one."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


def make_norm(cfg: TransformerConfig) -> nn.Module:
    """A layer's norm: LayerNorm, or :class:`TokenBatchNorm` (eps ``layer_norm_eps`` for both)."""
    if cfg.norm == "batchnorm":
        return TokenBatchNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


def transformer_config(size: str | dict | None = None, wiring: str = "bert", **overrides) -> TransformerConfig:
    """The :class:`TransformerConfig` of a named ``size`` (:data:`SIZES`, or a dict of sizes) wired as ``wiring``
    (:data:`WIRINGS`), with keyword overrides."""
    if isinstance(size, str) and size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    if wiring not in WIRINGS:
        raise ValueError(f"unknown Transformer wiring {wiring!r}; choose from {sorted(WIRINGS)}")
    sizes = SIZES[size] if isinstance(size, str) else dict(size or {})
    return TransformerConfig(**{**WIRINGS[wiring], **sizes, **overrides})


SHORT_SEQUENCE = 192  # below it the CPU flash kernel works in blocks of 32 queries, slow in bf16


def attention_kernels(q: Tensor, num_keys: int):
    """The SDPA kernels for queries ``q`` over ``num_keys`` tokens: on a CPU in bf16 (autocast or bf16 weights)
    with fewer than ``SHORT_SEQUENCE`` tokens SDPA's math kernel (a few batched matmuls), elsewhere torch's
    choice (flash on a CPU, the fused kernels on a GPU). Forward + backward timed on a 2-core Xeon with AMX, 1
    and 2 threads: in bf16 math beats flash 3-5x at 17 and 65 tokens (MAE's encoder and decoder) and 1.2-1.7x
    at 96-191, and loses 1.5-4x from 192 tokens on, where the flash kernel's query blocks grow from 32 to 64;
    in fp32 flash is the faster at every length, so it stays. Both kernels give the same results up to
    rounding (``tests/test_transformer.py``)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and num_keys < SHORT_SEQUENCE:
        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, on SDPA."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.bias)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.bias)
        self.dropout = cfg.attention_dropout
        self.causal = cfg.causal

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows: Rows = 0, qkv: Tensor | None = None,
                cache: dict | None = None) -> Tensor:
        """x: (B, N, D); attn_mask: (B, 1, 1|N, N) bool, True where attention is allowed, or None.

        rows: the queries wanted (every token is still a key and a value): an int ``start``, the tokens from there
        on, or a (B, M) long tensor of positions per example (:func:`take_rows`); the output is (B, M, D).
        qkv: ``self.qkv(x)`` (B, N, 3·D) when the caller has it (then ``x`` is not read).
        cache (causal, inference): this layer's keys and values of the tokens before ``x`` (``{}`` at first),
        extended in place; ``x`` holds only the new tokens, which attend to the cached ones and to each other
        causally.
        """
        qkv = self.qkv(x) if qkv is None else qkv
        b, n, d3 = qkv.shape
        d = d3 // 3
        # (B, N, 3, H, d) split along the 3: q, k, v are views, and the backward stacks their gradients
        # straight into qkv's layout (one copy)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        causal = self.causal and attn_mask is None
        if cache is not None:
            return self._cached(q, k, v, cache)
        if not isinstance(rows, int) or rows:
            q = take_rows(q, rows)
            if attn_mask is not None and attn_mask.shape[-2] > 1:
                attn_mask = take_rows(attn_mask.transpose(1, 2), rows).transpose(1, 2)
            if self.causal:  # SDPA's is_causal aligns a shorter query block to the top left; ours are other rows
                positions = torch.arange(n, device=qkv.device)
                allowed = positions[:, None] >= positions[None] if isinstance(rows, int) else None
                allowed = allowed[rows:] if allowed is not None else positions <= rows[:, None, :, None]
                attn_mask = allowed if attn_mask is None else attn_mask & allowed
                causal = False
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu" and fast_dropout():   # SDPA's CPU dropout: a draw per element
            y = attention_with_dropout(q, k, v, attn_mask, causal, p)
        else:
            with attention_kernels(q, n):
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, q.shape[2], d))

    def _cached(self, q: Tensor, k: Tensor, v: Tensor, cache: dict) -> Tensor:
        """Attention of the new tokens' q, k, v (B, N, H, d) over the cached keys and values and their own."""
        if not self.causal:
            raise ValueError("a key/value cache needs a causal Transformer")
        b, n, h, hd = q.shape
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        past = k.shape[2] - n
        mask = None    # one new token, or none cached: every key, or SDPA's causal (aligned at the top left)
        if past and n > 1:
            keys = torch.arange(past + n, device=q.device)
            mask = keys[None] <= past + torch.arange(n, device=q.device)[:, None]
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask,
                                           is_causal=not past and n > 1)
        return self.out(y.transpose(1, 2).reshape(b, n, h * hd))


Rows = "int | Tensor"


def take_rows(x: Tensor, rows: int | Tensor) -> Tensor:
    """The wanted tokens of x (B, N, ...): ``x[:, rows:]`` for an int, else ``x[e, rows[e]]`` per example for a
    (B, M) long tensor (a gather: its backward writes each picked row once)."""
    if isinstance(rows, int):
        return x[:, rows:]
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2))).expand(*rows.shape, *x.shape[2:])
    return x.gather(1, index)


class TransformerLayer(nn.Module):
    """Attention + MLP with residuals; pre-LN or post-LN."""

    shard_unit = True   # one FSDP unit per layer (selfsup.sharding)

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = SelfAttention(cfg)
        self.norm1 = make_norm(cfg)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.bias)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.bias)
        self.norm2 = make_norm(cfg)
        self.act = ACTIVATIONS[cfg.activation]
        self.quick_gelu = cfg.activation == "quick_gelu" and cfg.bias
        self.act_drop = Dropout(cfg.activation_dropout)
        self.drop = Dropout(cfg.dropout)

    def mlp(self, x: Tensor) -> Tensor:
        if self.quick_gelu:
            return self.drop(self._quick_gelu_mlp(x))
        return self.drop(self.fc2(self.act_drop(self.act(self.fc1(x)))))

    def _quick_gelu_mlp(self, x: Tensor) -> Tensor:
        """fc2(quick_gelu(fc1(x))) with quick_gelu(z) = silu(a·z) / a: a goes into fc1's GEMM (alpha and beta) and
        1/a into fc2's, so the activation is one fused SiLU each way, not autograd's chain of multiplies."""
        a, flat = QUICK_GELU, x.reshape(-1, x.shape[-1])
        h = F.silu(torch.addmm(self.fc1.bias, flat, self.fc1.weight.t(), beta=a, alpha=a))
        y = torch.addmm(self.fc2.bias, self.act_drop(h), self.fc2.weight.t(), alpha=1.0 / a)
        return y.view(*x.shape[:-1], y.shape[-1])

    def forward(self, x: Tensor, attn_mask: Tensor | None, rows: Rows = 0, qkv: Tensor | None = None,
                cache: dict | None = None, mlp_rows: Tensor | None = None) -> Tensor:
        """x: (B, N, D) -> (B, M, D): with ``rows`` (see :meth:`SelfAttention.forward`) only those tokens are
        computed (their attention still reads every token). qkv (pre-LN only): ``self.attn.qkv(self.norm1(x))``
        when the caller has it. cache: the attention's key/value cache (:meth:`SelfAttention.forward`).
        mlp_rows (pre-LN only): (T,) long indices into the B·N tokens: every token is attended and normalised
        (batch norm's statistics stay those of every token), the MLP runs on those alone and the output is their
        (T, D) rows."""
        if self.norm_first:
            h = self.norm1(x) if qkv is None else None
            x = take_rows(x, rows) + self.drop(self.attn(h, attn_mask, rows, qkv, cache))
            if mlp_rows is not None:
                flat = x.reshape(-1, x.shape[-1])
                return flat.index_select(0, mlp_rows) + self.mlp(
                    self.norm2(x).reshape(-1, x.shape[-1]).index_select(0, mlp_rows))
            return x + self.mlp(self.norm2(x))
        if mlp_rows is not None:
            raise ValueError("mlp_rows needs a pre-LN layer (norm_first)")
        if qkv is not None:
            raise ValueError("a precomputed qkv needs a pre-LN layer (norm_first)")
        x = self.norm1(take_rows(x, rows) + self.drop(self.attn(x, attn_mask, rows, cache=cache)))
        return self.norm2(x + self.mlp(x))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerLayer` with an optional final norm; modality-blind."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = make_norm(cfg) if cfg.final_norm else nn.Identity()
        self.apply(init_weights)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def input_size(self) -> int:
        """The width of the tokens it reads (its hidden size)."""
        return self.config.hidden_size

    def set_regularization(self, activation_dropout: float | None = None, layerdrop: float | None = None) -> None:
        """Change the activation dropout and the layerdrop of a built encoder (None: keep)."""
        changes = {k: v for k, v in (("activation_dropout", activation_dropout), ("layerdrop", layerdrop))
                   if v is not None}
        self.config = replace(self.config, **changes)
        for layer in self.layers:
            layer.act_drop.p = self.config.activation_dropout

    def new_cache(self) -> list[dict]:
        """An empty key/value cache for :meth:`forward` (causal inference: one token at a time after a prompt)."""
        return [{} for _ in self.layers]

    def attention_mask(self, padding_mask: Tensor | None, n: int) -> Tensor | None:
        """(B, N) padding mask -> (B, 1, 1|N, N) bool mask for SDPA (True = may attend), or None."""
        if padding_mask is None:
            return None
        keep = ~padding_mask[:, None, None, :]
        if self.config.causal:
            keep = keep & torch.ones(n, n, dtype=torch.bool, device=keep.device).tril()
        return keep

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, output_hidden_states: bool = False,
        outputs_from: int = 0, first_qkv: Tensor | None = None, outputs_at: Tensor | None = None,
        cache: list[dict] | None = None, structure: Mapping[str, Any] | None = None,
        outputs_where: Tensor | None = None,
    ) -> BackboneOutput:
        """x: (B, N, D); padding_mask: (B, N) True where padded; structure: unused (a Transformer attends over
        every token; a graph's structural encoding reaches it through the adapter's positions).

        hidden_states (when asked for) holds the input and each layer's output before the final norm, as in
        ``transformers``. outputs_from: only the tokens from there on are wanted: the last layer computes just
        them (its attention still reads every token), so ``last_hidden_state`` (and the last hidden state) is
        (B, N - outputs_from, D), the same numbers as ``[:, outputs_from:]`` of the full output. outputs_at: the
        same for given positions, (B, M) long per example (CLIP's class or end-of-text token): the output is
        (B, M, D), ``full[e, outputs_at[e]]``. first_qkv (pre-LN only): the first layer's ``attn.qkv(norm1(x))``
        (B, N, 3·D) when the caller computed it. cache (causal, inference, no padding): one dict per layer
        (:meth:`new_cache`) with the keys and values of the tokens before ``x``; ``x`` holds the new tokens only,
        and their outputs equal those of a run over all the tokens (``tests/test_transformer.py``).
        outputs_where (pre-LN, training too): (B, N) bool, the tokens whose outputs are wanted (a masked model's
        masked tokens): the last layer's MLP runs on them alone (:meth:`TransformerLayer.forward`'s ``mlp_rows``)
        and ``last_hidden_state`` is their (T, D) rows in row-major order, ``full[outputs_where]``, also under
        batch norm; no hidden states.
        """
        if outputs_where is not None:
            if cache is not None or outputs_from or outputs_at is not None or output_hidden_states:
                raise ValueError("outputs_where takes no cache, outputs_from, outputs_at or hidden states")
            return self._outputs_where(x, padding_mask, outputs_where, first_qkv)
        if cache is not None:
            if padding_mask is not None or len(cache) != len(self.layers):
                raise ValueError("a key/value cache takes no padding mask and one dict per layer (new_cache())")
            if self.training or outputs_from or outputs_at is not None or first_qkv is not None:
                raise ValueError("a key/value cache is for inference (eval mode) without outputs_from, outputs_at "
                                 "or first_qkv")
        if outputs_at is not None and outputs_from:
            raise ValueError("give outputs_from or outputs_at, not both")
        wanted: Rows = outputs_at if outputs_at is not None else outputs_from
        if self.config.norm == "batchnorm" and padding_mask is not None and bool(padding_mask.any()):
            raise ValueError("a batch-norm Transformer takes unpadded tokens (its statistics would count the "
                             "padding); use norm 'layernorm' for padded batches")
        attn_mask = self.attention_mask(padding_mask, x.shape[1])
        states = [x] if output_hidden_states else None
        layerdrop = self.config.layerdrop if self.training else 0.0
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            skipped = layerdrop > 0.0 and bool(torch.rand([]) < layerdrop)   # one draw, as transformers does
            rows = wanted if i == last else 0
            qkv = first_qkv if i == 0 else None
            if skipped:
                x = take_rows(x, rows)
            elif self.config.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, rows, qkv, use_reentrant=False)
            else:
                x = layer(x, attn_mask, rows, qkv, None if cache is None else cache[i])
            if states is not None:
                states.append(x)
        if not self.layers:
            x = take_rows(x, wanted)
        x = self.norm(x)
        return BackboneOutput(x, tuple(states) if states is not None else None)


    def takes_outputs_where(self) -> bool:
        """Whether :meth:`forward` takes ``outputs_where``: pre-LN, and a final norm (if any) that is a LayerNorm."""
        c = self.config
        return c.norm_first and not (c.final_norm and c.norm == "batchnorm")

    def _outputs_where(self, x: Tensor, padding_mask: Tensor | None, where: Tensor, first_qkv: Tensor | None
                       ) -> BackboneOutput:
        c = self.config
        if not self.takes_outputs_where():
            raise ValueError("outputs_where needs a pre-LN Transformer whose final norm, if any, is a LayerNorm")
        if c.norm == "batchnorm" and padding_mask is not None and bool(padding_mask.any()):
            raise ValueError("a batch-norm Transformer takes unpadded tokens")
        if where.shape != x.shape[:2] or where.dtype != torch.bool:
            raise ValueError(f"outputs_where must be a (B, N) = {tuple(x.shape[:2])} bool mask, got "
                             f"{tuple(where.shape)} {where.dtype}")
        index = where.reshape(-1).nonzero().squeeze(1)
        attn_mask = self.attention_mask(padding_mask, x.shape[1])
        layerdrop = c.layerdrop if self.training else 0.0
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            skipped = layerdrop > 0.0 and bool(torch.rand([]) < layerdrop)
            rows = index if i == last else None
            if skipped:
                x = x if rows is None else x.reshape(-1, x.shape[-1]).index_select(0, rows)
            elif c.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, attn_mask, 0, first_qkv if i == 0 else None, None, rows,
                               use_reentrant=False)
            else:
                x = layer(x, attn_mask, 0, first_qkv if i == 0 else None, None, rows)
        if not self.layers:
            x = x.reshape(-1, x.shape[-1]).index_select(0, index)
        return BackboneOutput(self.norm(x), None)


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


__all__ = ["TransformerConfig", "TransformerEncoder", "SIZES", "WIRINGS", "transformer_config", "attention_kernels", "take_rows", "init_weights", "num_parameters"]
