"""Every family's sizes in one place, and the builders that compose an objective from its parts.

Two kinds of function, as torchtune separates model builders from component builders:

* ``compose_*(...)``: the wiring. Adapter + backbone + masker (+ heads inside the objective) from configs;
  conversions from ``transformers`` use these too.
* ``wav2vec2(size)``, ``hubert(size)``, ``data2vec_audio(size)``, ``data2vec_text(size, ...)``,
  ``bert_mlm(size, ...)``: a named size. All the numbers of ``tiny`` (tests, seconds), ``small`` (CPU, minutes)
  and ``base`` (the paper's base model, GPU) of a family are in its ``SIZES`` table below and nowhere else;
  keyword overrides win (``backbone={...}``, ``adapter={...}``, objective settings as keywords).
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.modalities.audio import AudioAdapter, AudioConfig
from selfsup.modalities.audio_pos import Data2VecAudioAdapter, Data2VecAudioAdapterConfig
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.hubert import HubertObjective, HubertObjectiveConfig
from selfsup.objectives.masking import SpanMasker, TokenMasker
from selfsup.objectives.mlm import MaskedLanguageModeling
from selfsup.objectives.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig

TINY, SMALL, BASE = (dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=256),
                     dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
                     dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072))
K7, S7 = (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)  # the base feature encoder: 320x, a frame per 20 ms
CONV_TINY = dict(conv_dim=(32,) * 5, conv_kernel=(10, 3, 3, 3, 2), conv_stride=(5, 2, 2, 2, 2))  # 80x
CONV_SMALL = dict(conv_dim=(256,) * 7, conv_kernel=K7, conv_stride=S7)
CONV_BASE = dict(conv_dim=(512,) * 7, conv_kernel=K7, conv_stride=S7)

SIZES: dict[str, dict[str, dict[str, Any]]] = {
    # BERT (Devlin et al.): base = bert-base-uncased's shape
    "bert_mlm": {
        "tiny": dict(backbone=TINY), "small": dict(backbone=SMALL), "base": dict(backbone=BASE)},
    # wav2vec 2.0 (Baevski et al., table 9): base = wav2vec2-base
    "wav2vec2": {
        "tiny": dict(backbone=TINY, adapter=dict(**CONV_TINY, num_conv_pos_embeddings=16,
                                                 num_conv_pos_embedding_groups=2),
                     objective=dict(num_codevectors_per_group=32, codevector_dim=32, proj_codevector_dim=32,
                                    num_negatives=20)),
        "small": dict(backbone=SMALL, adapter=dict(**CONV_SMALL, num_conv_pos_embeddings=128,
                                                   num_conv_pos_embedding_groups=16),
                      objective=dict(num_codevectors_per_group=160, codevector_dim=128, proj_codevector_dim=128,
                                     num_negatives=50)),
        "base": dict(backbone=BASE, adapter=dict(**CONV_BASE, num_conv_pos_embeddings=128,
                                                 num_conv_pos_embedding_groups=16),
                     objective=dict(num_codevectors_per_group=320, codevector_dim=256, proj_codevector_dim=256,
                                    num_negatives=100))},
    # HuBERT (Hsu et al., table 1): base = HuBERT base, final_dim 256, 500 clusters after iteration 1
    "hubert": {
        "tiny": dict(backbone=TINY, adapter=dict(**CONV_TINY, num_conv_pos_embeddings=16,
                                                 num_conv_pos_embedding_groups=2),
                     objective=dict(final_dim=32, num_clusters=50)),
        "small": dict(backbone=SMALL, adapter=dict(**CONV_SMALL, num_conv_pos_embeddings=128,
                                                   num_conv_pos_embedding_groups=16),
                      objective=dict(final_dim=128, num_clusters=100)),
        "base": dict(backbone=BASE, adapter=dict(**CONV_BASE, num_conv_pos_embeddings=128,
                                                 num_conv_pos_embedding_groups=16),
                     objective=dict(final_dim=256, num_clusters=500))},
    # data2vec audio (fairseq base_librispeech.yaml): 5 position convs of kernel 19, top 8 of 12 layers
    "data2vec_audio": {
        "tiny": dict(backbone=TINY, adapter=dict(**CONV_TINY, num_conv_pos_embeddings=2, conv_pos_kernel_size=5,
                                                 num_conv_pos_embedding_groups=2),
                     objective=dict(average_top_k_layers=2)),
        "small": dict(backbone=SMALL, adapter=dict(**CONV_SMALL, num_conv_pos_embeddings=5, conv_pos_kernel_size=19,
                                                   num_conv_pos_embedding_groups=16),
                      objective=dict(average_top_k_layers=3)),
        "base": dict(backbone=BASE, adapter=dict(**CONV_BASE, num_conv_pos_embeddings=5, conv_pos_kernel_size=19,
                                                 num_conv_pos_embedding_groups=16),
                     objective=dict(average_top_k_layers=8))},
    # data2vec text (fairseq examples/data2vec/config/text/pretraining/base.yaml): top 10 of 12 layers
    "data2vec_text": {
        "tiny": dict(backbone=TINY, objective=dict(average_top_k_layers=2)),
        "small": dict(backbone=SMALL, objective=dict(average_top_k_layers=3)),
        "base": dict(backbone=BASE, objective=dict(average_top_k_layers=10))},
}

# Settings a family fixes apart from size (fairseq's / the paper's).
SPEECH_BACKBONE = dict(layer_norm_eps=1e-5)
DATA2VEC_TEXT = dict(head_layers=2, target_layer_norm="layer", target_norm="none", loss_beta=4.0, loss_scale=1.0,
                     ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=300_000)
DATA2VEC_TEXT_MASK = dict(probability=0.35, span_length=4, mask_replace=1.0, random_replace=0.0)


def size_of(family: str, size: str) -> dict[str, dict[str, Any]]:
    """The numbers of one size of one family (a copy)."""
    if family not in SIZES:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(SIZES)}")
    if size not in SIZES[family]:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES[family])}")
    return {k: dict(v) for k, v in SIZES[family][size].items()}


def backbone_config(family: str, size: str, **overrides: Any) -> TransformerConfig:
    """The :class:`TransformerConfig` of ``family``'s ``size`` with overrides."""
    return TransformerConfig(**{**size_of(family, size)["backbone"], **overrides})


def audio_config(family: str, size: str, **overrides: Any) -> AudioConfig | Data2VecAudioAdapterConfig:
    """The adapter config (conv feature encoder and position embedding) of a speech family's ``size``."""
    cls = Data2VecAudioAdapterConfig if family == "data2vec_audio" else AudioConfig
    return cls(**{**size_of(family, size)["adapter"], **overrides})


# -- composition (component builders) --------------------------------------------------------------------------
def compose_wav2vec2(audio: AudioConfig, backbone: TransformerConfig,
                     config: Wav2Vec2ObjectiveConfig) -> Wav2Vec2Objective:
    adapter = AudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout,
                           layer_norm_eps=backbone.layer_norm_eps, encoder_norm=not backbone.norm_first)
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return Wav2Vec2Objective(adapter, TransformerEncoder(backbone), masker, config)


def compose_hubert(audio: AudioConfig, backbone: TransformerConfig, config: HubertObjectiveConfig) -> HubertObjective:
    adapter = AudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout,
                           layer_norm_eps=backbone.layer_norm_eps, encoder_norm=not backbone.norm_first)
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return HubertObjective(adapter, TransformerEncoder(backbone), masker, config)


def compose_data2vec_audio(audio: Data2VecAudioAdapterConfig, backbone: TransformerConfig, masker: SpanMasker,
                           config: Data2VecObjectiveConfig) -> Data2VecObjective:
    adapter = Data2VecAudioAdapter(audio, backbone.hidden_size, dropout=backbone.dropout,
                                   layer_norm_eps=backbone.layer_norm_eps)
    return Data2VecObjective(adapter, TransformerEncoder(backbone), masker, config)


def text_adapter(backbone: TransformerConfig, vocab_size: int, pad_token_id: int, max_positions: int,
                 roberta_positions: bool = False, type_vocab_size: int = 2) -> TextAdapter:
    return TextAdapter(vocab_size, backbone.hidden_size, max_positions, type_vocab_size=type_vocab_size,
                       pad_token_id=pad_token_id, dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps,
                       roberta_positions=roberta_positions)


def compose_bert(backbone: TransformerConfig, masker: TokenMasker, pad_token_id: int = 0,
                 max_positions: int = 512) -> MaskedLanguageModeling:
    adapter = text_adapter(backbone, masker.vocab_size, pad_token_id, max_positions)
    return MaskedLanguageModeling(adapter, TransformerEncoder(backbone), masker)


def compose_data2vec_text(backbone: TransformerConfig, masker: TokenMasker, config: Data2VecObjectiveConfig,
                          pad_token_id: int = 1, max_positions: int = 512) -> Data2VecObjective:
    """data2vec on RoBERTa-style text embeddings (positions from ``pad_token_id + 1``, one token type), as
    fairseq's data2vec text and ``transformers``' ``Data2VecTextModel``."""
    adapter = text_adapter(backbone, masker.vocab_size, pad_token_id, max_positions, roberta_positions=True,
                           type_vocab_size=1)
    return Data2VecObjective(adapter, TransformerEncoder(backbone), masker, config)


# -- named sizes (model builders) ------------------------------------------------------------------------------
def split_settings(settings: dict[str, Any], config_cls) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings of ``config_cls``, the rest); an unknown name is an error naming the choices."""
    known = {f.name for f in fields(config_cls)}
    return {k: v for k, v in settings.items() if k in known}, {k: v for k, v in settings.items() if k not in known}


def wav2vec2(size: str = "base", stable_layer_norm: bool = False, audio: dict | None = None,
             backbone: dict | None = None, **objective: Any) -> Wav2Vec2Objective:
    """wav2vec 2.0 of a named size. ``stable_layer_norm``: pre-LN Transformer with a final norm and LayerNorm in
    every conv layer (wav2vec2-large-lv60 style) instead of wav2vec2-base's post-LN."""
    sizes = size_of("wav2vec2", size)
    stable = {"feat_extract_norm": "layer", "conv_bias": True} if stable_layer_norm else {}
    audio_cfg = AudioConfig(**{**sizes["adapter"], **stable, **(audio or {})})
    backbone_cfg = TransformerConfig(**{**sizes["backbone"], **SPEECH_BACKBONE, "norm_first": stable_layer_norm,
                                        "final_norm": stable_layer_norm, **(backbone or {})})
    return compose_wav2vec2(audio_cfg, backbone_cfg, Wav2Vec2ObjectiveConfig(**{**sizes["objective"], **objective}))


def hubert(size: str = "base", num_clusters: int | None = None, stable_layer_norm: bool = False,
           audio: dict | None = None, backbone: dict | None = None, **objective: Any) -> HubertObjective:
    """HuBERT of a named size predicting ``num_clusters`` k-means classes. ``stable_layer_norm``: pre-LN (HuBERT
    large / X-large) instead of HuBERT base's post-LN with GroupNorm in the first conv layer."""
    sizes = size_of("hubert", size)
    stable = {"feat_extract_norm": "layer", "conv_bias": True} if stable_layer_norm else {}
    audio_cfg = AudioConfig(**{**sizes["adapter"], **stable, **(audio or {})})
    backbone_cfg = TransformerConfig(**{**sizes["backbone"], **SPEECH_BACKBONE, "norm_first": stable_layer_norm,
                                        "final_norm": stable_layer_norm, **(backbone or {})})
    if num_clusters is not None:
        objective["num_clusters"] = num_clusters
    return compose_hubert(audio_cfg, backbone_cfg, HubertObjectiveConfig(**{**sizes["objective"], **objective}))


def data2vec_audio(size: str = "base", audio: dict | None = None, backbone: dict | None = None,
                   mask_prob: float = 0.65, mask_length: int = 10, min_masks: int = 1,
                   **objective: Any) -> Data2VecObjective:
    """data2vec on raw audio of a named size (fairseq's base_librispeech settings as defaults)."""
    sizes = size_of("data2vec_audio", size)
    audio_cfg = Data2VecAudioAdapterConfig(**{**sizes["adapter"], **(audio or {})})
    backbone_cfg = TransformerConfig(**{**sizes["backbone"], **SPEECH_BACKBONE, "norm_first": False,
                                        "final_norm": False, **(backbone or {})})
    config = Data2VecObjectiveConfig(**{**sizes["objective"], **objective})
    return compose_data2vec_audio(audio_cfg, backbone_cfg, SpanMasker(mask_prob, mask_length, min_masks), config)


def data2vec_text(size: str, vocab_size: int, mask_token_id: int, pad_token_id: int,
                  special_token_ids: Sequence[int] = (), max_positions: int = 512, backbone: dict | None = None,
                  masker: dict | None = None, **objective: Any) -> Data2VecObjective:
    """data2vec on text of a named size, with fairseq's data2vec text settings: 35 % of tokens masked in spans
    of 4, all replaced by [MASK]; targets the layer-normed FFN outputs of the top 10 of 12 teacher layers; smooth
    L1 (beta 4) on a two-layer head; EMA 0.999 -> 0.9999."""
    sizes = size_of("data2vec_text", size)
    backbone_cfg = TransformerConfig(**{**sizes["backbone"], "layer_norm_eps": 1e-5, **(backbone or {})})
    token_masker = TokenMasker(mask_token_id, vocab_size, special_ids=tuple({*special_token_ids, pad_token_id}),
                               **{**DATA2VEC_TEXT_MASK, **(masker or {})})
    config = Data2VecObjectiveConfig(**{**DATA2VEC_TEXT, **sizes["objective"], **objective})
    return compose_data2vec_text(backbone_cfg, token_masker, config, pad_token_id, max_positions)


def bert_mlm(size: str, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
             special_token_ids: Sequence[int] = (), max_positions: int = 512, mlm_probability: float = 0.15,
             continuation_ids: Sequence[int] | None = None, **backbone: Any) -> MaskedLanguageModeling:
    """BERT MLM of a named size (post-LN, LayerNorm eps 1e-12); keyword arguments override the backbone."""
    backbone_cfg = TransformerConfig(**{**size_of("bert_mlm", size)["backbone"], **backbone})
    masker = TokenMasker(mask_token_id, vocab_size, mlm_probability,
                         special_ids=tuple({*special_token_ids, pad_token_id}),
                         continuation_ids=None if continuation_ids is None else tuple(continuation_ids))
    return compose_bert(backbone_cfg, masker, pad_token_id, max_positions)


__all__ = ["SIZES", "size_of", "backbone_config", "audio_config", "compose_wav2vec2", "compose_hubert",
           "compose_data2vec_audio", "compose_data2vec_text", "compose_bert", "wav2vec2", "hubert",
           "data2vec_audio", "data2vec_text", "bert_mlm", "split_settings"]
