"""Conversion between :class:`MaskedLanguageModeling` and ``transformers``' ``BertForMaskedLM``.

Our fused QKV projection is split into BERT's query / key / value matrices on export and joined on import.
"""
from __future__ import annotations

from pathlib import Path

import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import check_encoder, export_state, fill_model, import_state, load_into, load_model
from selfsup.errors import SelfsupError
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.masked.mlm import MaskedLanguageModeling
from selfsup.objectives.masking import TokenMasker


# -- composition (the wiring the conversion and the named sizes share) --
def text_adapter(backbone: TransformerConfig, vocab_size: int, pad_token_id: int, max_positions: int,
                 roberta_positions: bool = False, type_vocab_size: int = 2) -> TextAdapter:
    return TextAdapter(vocab_size, backbone.hidden_size, max_positions, type_vocab_size=type_vocab_size,
                       pad_token_id=pad_token_id, dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps,
                       roberta_positions=roberta_positions)


def compose_bert(backbone: TransformerConfig, masker: TokenMasker, pad_token_id: int = 0,
                 max_positions: int = 512) -> MaskedLanguageModeling:
    adapter = text_adapter(backbone, masker.vocab_size, pad_token_id, max_positions)
    return MaskedLanguageModeling(adapter, TransformerEncoder(backbone), masker)

BERT_QKV = ("query", "key", "value")


def bert_layer_pairs(layer: str) -> list[tuple[str, str]]:
    """(ours, HF) prefixes of a BERT-layout layer (BERT, RoBERTa, data2vec text) but the QKV projection, which
    is ``{layer}attention.self.{query,key,value}``; ``layer`` = HF's layer prefix with ``{i}``."""
    return [(f"backbone.layers.{{i}}.{ours}.", f"{layer}{theirs}.") for ours, theirs in LAYER_MAP.items()]


LAYER_MAP = {  # ours -> BertLayer
    "attn.out": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
    "norm2": "output.LayerNorm",
}
LAYER, QKV_PREFIX = "bert.encoder.layer.{i}.", "bert.encoder.layer.{i}.attention.self."
RULES = [  # ours -> BertForMaskedLM; "{i}" is a layer index
    ("adapter.word_embeddings.", "bert.embeddings.word_embeddings."),
    ("adapter.position_embeddings.", "bert.embeddings.position_embeddings."),
    ("adapter.token_type_embeddings.", "bert.embeddings.token_type_embeddings."),
    ("adapter.norm.", "bert.embeddings.LayerNorm."),
    ("head.dense.", "cls.predictions.transform.dense."),
    ("head.norm.", "cls.predictions.transform.LayerNorm."),
    *bert_layer_pairs(LAYER),
]


def bert_config(objective: MaskedLanguageModeling):
    from transformers import BertConfig

    cfg = objective.config
    check_encoder(objective, "BERT (BertForMaskedLM)", pre_ln=False)
    return BertConfig(
        vocab_size=objective.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size, hidden_act=cfg.activation,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=objective.adapter.max_positions, type_vocab_size=2,
        layer_norm_eps=cfg.layer_norm_eps, pad_token_id=objective.adapter.pad_token_id,
    )


def to_bert_state_dict(objective: MaskedLanguageModeling) -> dict[str, torch.Tensor]:
    """Our weights under ``BertForMaskedLM``'s names; the decoder is the word embeddings (tied) + the head bias."""
    ours = objective.state_dict()

    def special(key: str, value: torch.Tensor) -> dict | None:
        if key == "head.bias":
            return {"cls.predictions.bias": value, "cls.predictions.decoder.bias": value,
                    "cls.predictions.decoder.weight": ours["adapter.word_embeddings.weight"]}
        return None

    return export_state(ours, RULES, QKV_PREFIX, BERT_QKV, "BERT", special)


def to_transformers(objective: MaskedLanguageModeling):
    """A ``BertForMaskedLM`` holding the same weights (float32, eval mode)."""
    from transformers import BertForMaskedLM

    model = fill_model(BertForMaskedLM(bert_config(objective)), to_bert_state_dict(objective), "BERT",
                       ignore=lambda k: k.endswith(("position_ids", "token_type_ids")))
    model.tie_weights()
    return model


def from_bert_state_dict(objective: MaskedLanguageModeling, hf: dict[str, torch.Tensor]) -> None:
    """Load BERT weights (the MLM head too, when the checkpoint has one)."""
    ours = import_state(hf, RULES, QKV_PREFIX, BERT_QKV)
    bias = hf.get("cls.predictions.bias", hf.get("cls.predictions.decoder.bias"))
    if bias is not None:
        ours["head.bias"] = bias
    load_into(objective, ours, optional=lambda k: False)


def from_transformers(path: str | Path, mlm_probability: float = 0.15, dropout: float | None = None,
                      special_token_ids=(), mask_token_id: int | None = None,
                      continuation_ids=None) -> MaskedLanguageModeling:
    """Build our objective from a BERT checkpoint folder (``--init_from``); the MLM head is kept if present."""
    model, where = load_model(path, "bert", "BertForMaskedLM")
    hf_cfg = model.config
    cfg = TransformerConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
        intermediate_size=hf_cfg.intermediate_size, activation=hf_cfg.hidden_act,
        dropout=hf_cfg.hidden_dropout_prob if dropout is None else dropout,
        attention_dropout=hf_cfg.attention_probs_dropout_prob if dropout is None else dropout,
        layer_norm_eps=hf_cfg.layer_norm_eps,
    )
    if hf_cfg.type_vocab_size != 2:
        raise SelfsupError(f"{where}: type_vocab_size {hf_cfg.type_vocab_size} is not supported (expected 2)")
    pad = hf_cfg.pad_token_id or 0
    masker = TokenMasker(mask_token_id if mask_token_id is not None else 4, hf_cfg.vocab_size, mlm_probability,
                         special_ids=tuple({*special_token_ids, pad}),
                         continuation_ids=None if continuation_ids is None else tuple(continuation_ids))
    objective = compose_bert(cfg, masker, pad, hf_cfg.max_position_embeddings)
    from_bert_state_dict(objective, model.state_dict())
    return objective
