"""Conversion between :class:`CausalLanguageModeling` and ``transformers``' ``GPT2LMHeadModel``.

GPT-2 keeps the fused QKV projection (``attn.c_attn``: query, key, value in that order along the output, heads
inside each, as ours), but its projections are ``Conv1D`` layers whose weights are stored transposed,
(in, out) where ``nn.Linear`` holds (out, in): ``c_attn``, ``attn.c_proj``, ``mlp.c_fc`` and ``mlp.c_proj`` are
transposed both ways. ``lm_head`` is tied to ``wte``.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from selfsup.backbones.transformer import ACTIVATIONS, TransformerConfig, TransformerEncoder, transformer_config
from selfsup.convert import compile_rules, fill_model, load_into, load_model, rename
from selfsup.errors import SelfsupError
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

RULES = [  # ours -> GPT2LMHeadModel; "{i}" is a layer index
    ("adapter.word_embeddings.", "transformer.wte."),
    ("adapter.position_embeddings.", "transformer.wpe."),
    ("backbone.layers.{i}.norm1.", "transformer.h.{i}.ln_1."),
    ("backbone.layers.{i}.attn.qkv.", "transformer.h.{i}.attn.c_attn."),
    ("backbone.layers.{i}.attn.out.", "transformer.h.{i}.attn.c_proj."),
    ("backbone.layers.{i}.norm2.", "transformer.h.{i}.ln_2."),
    ("backbone.layers.{i}.fc1.", "transformer.h.{i}.mlp.c_fc."),
    ("backbone.layers.{i}.fc2.", "transformer.h.{i}.mlp.c_proj."),
    ("backbone.norm.", "transformer.ln_f."),
]
CONV1D = re.compile(r"^transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")
UNSUPPORTED = {  # GPT2Config setting -> the value our backbone computes
    "add_cross_attention": False, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
}


def check_gpt2_layout(objective: CausalLanguageModeling) -> None:
    """A clear error when the objective's backbone or adapter cannot be held by ``GPT2LMHeadModel``."""
    cfg, adapter = objective.config, objective.adapter
    if not (cfg.causal and cfg.norm_first and cfg.final_norm and cfg.bias):
        raise SelfsupError("only causal pre-LN backbones with a final norm and biases export as GPT-2 "
                           "(GPT2LMHeadModel)")
    if adapter.token_type_embeddings is not None or not isinstance(adapter.norm, torch.nn.Identity) \
            or adapter.position_offset:
        raise SelfsupError("GPT-2 export needs GPT-2 embeddings: no token types, no embedding norm, "
                           "positions 0, 1, ...")
    if cfg.activation_dropout or cfg.layerdrop:
        raise SelfsupError("GPT-2 has no activation dropout or layerdrop; set both to 0 to export")


def gpt2_config(objective: CausalLanguageModeling, eos_token_id: int | None = None):
    from transformers import GPT2Config

    check_gpt2_layout(objective)
    cfg = objective.config
    return GPT2Config(
        vocab_size=objective.vocab_size, n_positions=objective.max_positions, n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.intermediate_size,
        activation_function=cfg.activation, resid_pdrop=cfg.dropout, embd_pdrop=objective.adapter.dropout.p,
        attn_pdrop=cfg.attention_dropout, layer_norm_epsilon=cfg.layer_norm_eps,
        bos_token_id=eos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=True,
    )


def to_gpt2_state_dict(objective: CausalLanguageModeling) -> dict[str, torch.Tensor]:
    """Our weights under ``GPT2LMHeadModel``'s names (Conv1D weights transposed; ``lm_head`` = ``wte``)."""
    rules, out = compile_rules(RULES), {}
    for key, value in objective.state_dict().items():
        new = rename(key, rules)
        if new is None:
            raise RuntimeError(f"GPT-2 export: no HF name for {key}")
        out[new] = value.t().contiguous() if CONV1D.match(new) else value
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def to_transformers(objective: CausalLanguageModeling, eos_token_id: int | None = None):
    """A ``GPT2LMHeadModel`` holding the same weights (float32, eval mode, head tied)."""
    from transformers import GPT2LMHeadModel

    model = fill_model(GPT2LMHeadModel(gpt2_config(objective, eos_token_id)), to_gpt2_state_dict(objective), "GPT-2",
                       ignore=lambda k: k.endswith(("attn.bias", "attn.masked_bias")))
    model.tie_weights()
    return model


def gpt_and_gpt2(config: dict, seed: int = 0):
    """Ours and a ``GPT2LMHeadModel`` holding the same weights, both in train mode, at ``config`` (a
    ``sizes.SPEED_CONFIGS`` entry: ``backbone`` settings, ``vocab_size``, ``context``): what the speed benchmarks
    time against each other. ``seed`` seeds the initialisation."""
    torch.manual_seed(seed)
    ours = compose_gpt(transformer_config(size_of("small")["backbone"], "gpt2", **config["backbone"]),
                       config["vocab_size"], config["context"])
    return ours.train(), to_transformers(ours).train()


def from_gpt2_state_dict(objective: CausalLanguageModeling, hf: dict[str, torch.Tensor]) -> None:
    """Load ``GPT2LMHeadModel`` / ``GPT2Model`` weights (an untied ``lm_head`` must equal ``wte``)."""
    rules, ours = compile_rules(RULES, reverse=True), {}
    hf = {(k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v for k, v in hf.items()}
    for key, value in hf.items():
        if (new := rename(key, rules)) is not None:
            ours[new] = value.t() if CONV1D.match(key) else value
    head = hf.get("lm_head.weight")
    if head is not None and not torch.equal(head, hf["transformer.wte.weight"]):
        raise SelfsupError("checkpoint's lm_head is not tied to its word embeddings; ours is tied")
    load_into(objective, ours, optional=lambda k: False)


def from_transformers(path_or_model, dropout: float | None = None) -> CausalLanguageModeling:
    """Our objective from a GPT-2 checkpoint folder / Hub name or a ``GPT2LMHeadModel`` (``--init_from``)."""
    model, where = load_model(path_or_model, "gpt2", "GPT2LMHeadModel")
    hf = model.config
    for name, expected in UNSUPPORTED.items():
        if getattr(hf, name, expected) != expected:
            raise SelfsupError(f"{where}: GPT-2 with {name}={getattr(hf, name)} is not supported")
    if hf.activation_function not in ACTIVATIONS:
        raise SelfsupError(f"{where}: activation {hf.activation_function!r} is not supported")
    cfg = TransformerConfig(
        hidden_size=hf.n_embd, num_layers=hf.n_layer, num_heads=hf.n_head,
        intermediate_size=hf.n_inner or 4 * hf.n_embd,
        activation=hf.activation_function, norm_first=True, final_norm=True, causal=True,
        dropout=hf.resid_pdrop if dropout is None else dropout,
        attention_dropout=hf.attn_pdrop if dropout is None else dropout, layer_norm_eps=hf.layer_norm_epsilon)
    objective = compose_gpt(cfg, hf.vocab_size, hf.n_positions)
    objective.adapter.dropout.p = hf.embd_pdrop if dropout is None else dropout
    from_gpt2_state_dict(objective, model.state_dict())
    return objective


__all__ = ["to_transformers", "from_transformers", "to_gpt2_state_dict", "from_gpt2_state_dict", "gpt2_config",
           "check_gpt2_layout", "gpt_and_gpt2"]
