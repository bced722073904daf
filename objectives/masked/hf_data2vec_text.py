"""Conversion between data2vec text (:class:`Data2VecObjective` on a RoBERTa-style :class:`TextAdapter`) and
``transformers``' ``Data2VecTextModel``.

The export is the *student* encoder (as fairseq and the Hub checkpoints ``facebook/data2vec-text-*`` do); the
teacher, the regression head and the EMA decay are pre-training machinery and stay behind. Our fused QKV
projection is split into ``attention.self.{query,key,value}`` on export and joined on import; the layers have
BERT's names (``hf_bert.bert_layer_pairs``). Positions are numbered as RoBERTa does (real tokens from
``pad_token_id + 1``), so HF's ``max_position_embeddings`` is our table's row count, ``max_positions + pad + 1``.

Our pre-training settings (objective config and masker) ride along under ``selfsup_data2vec`` in the config,
which HF ignores and :func:`from_transformers` reads back. The backbone's ``activation_dropout`` and
``layerdrop`` (training-only; ``Data2VecTextConfig`` has neither) are not exported.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.convert import check_encoder, export_state, fill_model, import_state, load_into, load_model
from selfsup.errors import SelfsupError
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.hf_bert import BERT_QKV, bert_layer_pairs, text_adapter
from selfsup.objectives.masked.sizes import DATA2VEC_TEXT, DATA2VEC_TEXT_MASK
from selfsup.objectives.masking import TokenMasker


def compose_data2vec_text(backbone: TransformerConfig, masker: TokenMasker, config: Data2VecObjectiveConfig,
                          pad_token_id: int = 1, max_positions: int = 512) -> Data2VecObjective:
    """data2vec on RoBERTa-style text embeddings (positions from ``pad_token_id + 1``, one token type), as
    fairseq's data2vec text and ``transformers``' ``Data2VecTextModel``."""
    adapter = text_adapter(backbone, masker.vocab_size, pad_token_id, max_positions, roberta_positions=True,
                           type_vocab_size=1)
    return Data2VecObjective(adapter, TransformerEncoder(backbone), masker, config)

LAYER = "encoder.layer.{i}."
QKV_PREFIX = LAYER + "attention.self."
RULES = [  # ours -> HF (Data2VecTextModel, no prefix); "{i}" is a layer index
    ("adapter.word_embeddings.", "embeddings.word_embeddings."),
    ("adapter.position_embeddings.", "embeddings.position_embeddings."),
    ("adapter.token_type_embeddings.", "embeddings.token_type_embeddings."),
    ("adapter.norm.", "embeddings.LayerNorm."),
    *bert_layer_pairs(LAYER),
]
MASKER_KEYS = {"probability", "span_length", "mask_replace", "random_replace", "special_ids", "continuation_ids"}
PRETRAINING_ONLY = ("teacher.", "regression_head.", "ema_decay")
HF_PREFIX = "data2vec_text."  # heads such as Data2VecTextForMaskedLM keep the base model under this name


def check_exportable(objective: Data2VecObjective) -> None:
    """A one-line :class:`SelfsupError` unless the student is what ``Data2VecTextModel`` computes: a post-LN,
    bidirectional encoder with biases and no final norm on RoBERTa-numbered embeddings with one token type."""
    check_encoder(objective, "Data2VecTextModel", pre_ln=False)
    a = objective.adapter
    if not isinstance(a, TextAdapter) or a.position_offset != a.pad_token_id + 1:
        raise SelfsupError("only text adapters with RoBERTa positions (roberta_positions=True) export as "
                           "Data2VecTextModel")
    if a.token_type_embeddings is None or a.token_type_embeddings.num_embeddings != 1 \
            or not isinstance(a.norm, torch.nn.LayerNorm):
        raise SelfsupError("only text adapters with one token type and an embedding LayerNorm export as "
                           "Data2VecTextModel")


def data2vec_text_config(objective: Data2VecObjective):
    """The ``Data2VecTextConfig`` describing our student (plus our pre-training settings)."""
    from transformers import Data2VecTextConfig

    check_exportable(objective)
    a, t = objective.adapter, objective.backbone.config
    return Data2VecTextConfig(
        vocab_size=a.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_layers,
        num_attention_heads=t.num_heads, intermediate_size=t.intermediate_size, hidden_act=t.activation,
        hidden_dropout_prob=t.dropout, attention_probs_dropout_prob=t.attention_dropout,
        max_position_embeddings=a.position_embeddings.num_embeddings, type_vocab_size=1,
        layer_norm_eps=t.layer_norm_eps, pad_token_id=a.pad_token_id,
        selfsup_data2vec={**objective.config.to_dict(), **objective.masker.to_dict()})


def to_hf_state_dict(objective: Data2VecObjective) -> dict[str, torch.Tensor]:
    """The student's weights under ``Data2VecTextModel``'s names (no pooler)."""
    return export_state(objective.state_dict(), RULES, QKV_PREFIX, BERT_QKV, "data2vec text",
                        lambda key, value: {} if key.startswith(PRETRAINING_ONLY) else None)


def to_transformers(objective: Data2VecObjective):
    """A ``Data2VecTextModel`` holding the student's weights (float32, eval mode). Its pooler (dense + tanh on
    the first token) is left as HF initialises it: data2vec pre-training has none, so it is *not* pretrained."""
    from transformers import Data2VecTextModel

    model = Data2VecTextModel(data2vec_text_config(objective))
    return fill_model(model, to_hf_state_dict(objective), "data2vec text", ignore=lambda k: k.startswith("pooler."))


def configs_from(hf_cfg, mask_token_id: int, special_token_ids: Sequence[int] = (), dropout: float | None = None,
                 **overrides: Any) -> tuple[TransformerConfig, TokenMasker, Data2VecObjectiveConfig, int, int]:
    """(backbone config, masker, objective config, pad id, max_positions) from a ``Data2VecTextConfig``.

    Settings: ours when the checkpoint is a selfsup export, else fairseq's data2vec text defaults with
    ``average_top_k_layers = min(10, layers)``; ``overrides`` (objective or masker fields) win. The masker never
    masks the padding id, ``special_token_ids`` or the special ids a selfsup export recorded.
    """
    if getattr(hf_cfg, "is_decoder", False) or getattr(hf_cfg, "add_cross_attention", False):
        raise SelfsupError("data2vec text decoders (is_decoder / add_cross_attention) are not supported")
    if hf_cfg.type_vocab_size != 1:
        raise SelfsupError(f"type_vocab_size {hf_cfg.type_vocab_size} is not supported (expected 1)")
    pad = hf_cfg.pad_token_id
    if pad is None:
        raise SelfsupError("the config has no pad_token_id (RoBERTa positions are numbered from it)")
    max_positions = hf_cfg.max_position_embeddings - pad - 1
    if max_positions < 1:
        raise SelfsupError(f"max_position_embeddings {hf_cfg.max_position_embeddings} leaves no positions after "
                           f"pad_token_id {pad} (RoBERTa numbering starts at pad + 1)")
    if not 0 <= mask_token_id < hf_cfg.vocab_size:
        raise SelfsupError(f"mask_token_id {mask_token_id} is outside the vocabulary of {hf_cfg.vocab_size}")
    drop = (lambda v: v) if dropout is None else (lambda v: dropout)
    backbone = TransformerConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
        intermediate_size=hf_cfg.intermediate_size, activation=hf_cfg.hidden_act,
        dropout=drop(hf_cfg.hidden_dropout_prob), attention_dropout=drop(hf_cfg.attention_probs_dropout_prob),
        layer_norm_eps=hf_cfg.layer_norm_eps)
    known = {f.name for f in fields(Data2VecObjectiveConfig)} | MASKER_KEYS
    if unknown := set(overrides) - known:
        raise SelfsupError(f"unknown data2vec settings {sorted(unknown)}; choose from {sorted(known)}")
    stored = getattr(hf_cfg, "selfsup_data2vec", None)
    settings = {k: v for k, v in stored.items() if k in known} if isinstance(stored, dict) else \
        {**DATA2VEC_TEXT, **DATA2VEC_TEXT_MASK, "average_top_k_layers": min(10, hf_cfg.num_hidden_layers)}
    settings = {**settings, **overrides}
    masking = {k: settings.pop(k) for k in MASKER_KEYS if k in settings}
    masking["special_ids"] = tuple(sorted({*masking.get("special_ids", ()), *special_token_ids, pad}))
    if masking.get("continuation_ids") is not None:
        masking["continuation_ids"] = tuple(masking["continuation_ids"])
    masker = TokenMasker(mask_token_id, hf_cfg.vocab_size, **masking)
    return backbone, masker, Data2VecObjectiveConfig(**settings), pad, max_positions


def from_hf_state_dict(objective: Data2VecObjective, hf: dict[str, torch.Tensor]) -> None:
    """Load HF weights into the student (the pooler is dropped), then make the teacher a copy of it."""
    hf = {k[len(HF_PREFIX):] if k.startswith(HF_PREFIX) else k: v for k, v in hf.items()}
    ours = import_state(hf, RULES, QKV_PREFIX, BERT_QKV)
    try:
        load_into(objective, ours, optional=lambda k: k.startswith(PRETRAINING_ONLY))
    except RuntimeError as err:  # size mismatches
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise SelfsupError(f"checkpoint does not fit: {first}") from None
    objective.reset_teacher()


def from_transformers(path_or_model, mask_token_id: int, special_token_ids: Sequence[int] = (),
                      dropout: float | None = None, **overrides: Any) -> Data2VecObjective:
    """Our objective from a ``Data2VecTextModel`` (or a checkpoint folder / Hub name of any data2vec-text model,
    loaded without remote code: ``--init_from``). The teacher starts as a copy of the student, the regression
    head is freshly initialised. ``dropout``, when given, sets the hidden and attention dropout rates."""
    model, where = load_model(path_or_model, "data2vec-text", "Data2VecTextModel",
                              accepts=lambda name: name.startswith("Data2VecText"))
    try:
        backbone, masker, settings, pad, max_positions = configs_from(
            model.config, mask_token_id, special_token_ids, dropout, **overrides)
        objective = compose_data2vec_text(backbone, masker, settings, pad, max_positions)
    except (ValueError, SelfsupError) as err:
        raise SelfsupError(f"{where}: {err}") from None
    try:
        from_hf_state_dict(objective, model.state_dict())
    except SelfsupError as err:
        raise SelfsupError(f"{where}: {err}") from None
    return objective


__all__ = ["to_transformers", "from_transformers", "data2vec_text_config", "to_hf_state_dict",
           "from_hf_state_dict", "configs_from", "check_exportable"]
