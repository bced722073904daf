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
from selfsup.modalities.image import ImageAdapter, ImageConfig
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.hubert import HubertObjective, HubertObjectiveConfig
from selfsup.objectives.mae import MAEConfig, MAEObjective, xavier_init
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
    # MAE (He et al., table 1 / appendix A.1): base = ViT-B/16 on 224, decoder 8 x 512; small = a "ViT-tiny" for
    # 32 x 32 images (CIFAR) that trains on a CPU; the decoder shares activation, eps and dropout with the encoder
    "mae": {
        "tiny": dict(image=dict(image_size=32, patch_size=8),
                     backbone=dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                     decoder=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)),
        "small": dict(image=dict(image_size=32, patch_size=4),
                      backbone=dict(hidden_size=192, num_layers=6, num_heads=3, intermediate_size=768),
                      decoder=dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512)),
        "base": dict(image=dict(image_size=224, patch_size=16), backbone=BASE,
                     decoder=dict(hidden_size=512, num_layers=8, num_heads=16, intermediate_size=2048))},
}

# Settings a family fixes apart from size (fairseq's / the paper's).
SPEECH_BACKBONE = dict(layer_norm_eps=1e-5)
DATA2VEC_TEXT = dict(head_layers=2, target_layer_norm="layer", target_norm="none", loss_beta=4.0, loss_scale=1.0,
                     ema_decay=0.999, ema_end_decay=0.9999, ema_anneal_end_step=300_000)
DATA2VEC_TEXT_MASK = dict(probability=0.35, span_length=4, mask_replace=1.0, random_replace=0.0)
# ViT as transformers' ViTModel / ViTMAEModel: pre-LN with a final norm, GELU, LayerNorm eps 1e-12 (HF's default;
# the official MAE code uses 1e-6), no dropout
VIT_BACKBONE = dict(norm_first=True, final_norm=True, layer_norm_eps=1e-12, activation="gelu", dropout=0.0,
                    attention_dropout=0.0)
VIT_SHARED = ("activation", "layer_norm_eps", "dropout", "attention_dropout", "bias")  # encoder = decoder (HF)
MAE_IMAGE = dict(positions="sincos", class_token=True)
# MAE's pre-training recipe (appendix A.1, table 8): AdamW betas (0.9, 0.95), weight decay 0.05, lr = 1.5e-4 x
# batch / 256 with a cosine schedule, 40 warmup epochs of 800 (1600 for the paper's best), random resized crops
# (scale 0.2-1) + horizontal flips, mask ratio 0.75, norm_pix_loss
MAE_TRAINING = dict(base_learning_rate=1.5e-4, base_batch_size=256, adam_beta1=0.9, adam_beta2=0.95,
                    weight_decay=0.05, warmup_epochs=40, epochs=800, crop_scale=(0.2, 1.0))


def mae_learning_rate(batch_size: int, base_learning_rate: float = MAE_TRAINING["base_learning_rate"]) -> float:
    """MAE's linear scaling rule: ``base_learning_rate x batch_size / 256`` (the global batch)."""
    return base_learning_rate * batch_size / MAE_TRAINING["base_batch_size"]


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


def vit_backbone(config: TransformerConfig | dict[str, Any]) -> TransformerEncoder:
    """A ViT encoder (``VIT_BACKBONE`` wiring under the given sizes / overrides), default initialisation."""
    cfg = config if isinstance(config, TransformerConfig) else TransformerConfig(**{**VIT_BACKBONE, **config})
    return TransformerEncoder(cfg)


def compose_mae(image: ImageConfig, backbone: TransformerConfig, decoder: TransformerConfig,
                config: MAEConfig) -> MAEObjective:
    """MAE from configs: an :class:`ImageAdapter`, the ViT encoder and the decoder, xavier-initialised as MAE."""
    adapter = ImageAdapter(image, backbone.hidden_size)
    encoder, decoder_stack = xavier_init(vit_backbone(backbone)), xavier_init(vit_backbone(decoder))
    return MAEObjective(adapter, encoder, decoder_stack, config)


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


def mae(size: str = "base", image: dict | None = None, backbone: dict | None = None, decoder: dict | None = None,
        **objective: Any) -> MAEObjective:
    """MAE of a named size (``SIZES["mae"]``): sin-cos positions and a class token, the ViT wiring
    (``VIT_BACKBONE``), the decoder sharing the encoder's activation / eps / dropout / bias unless ``decoder``
    overrides them; ``objective`` keywords are :class:`MAEConfig` fields (mask_ratio, norm_pix_loss, ...)."""
    sizes = size_of("mae", size)
    image_cfg = ImageConfig(**{**MAE_IMAGE, **sizes["image"], **(image or {})})
    backbone_cfg = TransformerConfig(**{**VIT_BACKBONE, **sizes["backbone"], **(backbone or {})})
    shared = {k: getattr(backbone_cfg, k) for k in VIT_SHARED}
    decoder_cfg = TransformerConfig(**{**VIT_BACKBONE, **shared, **sizes["decoder"], **(decoder or {})})
    config = MAEConfig(**{**sizes.get("objective", {}), **objective})
    return compose_mae(image_cfg, backbone_cfg, decoder_cfg, config)


__all__ = ["SIZES", "size_of", "backbone_config", "audio_config", "compose_wav2vec2", "compose_hubert",
           "compose_data2vec_audio", "compose_data2vec_text", "compose_bert", "wav2vec2", "hubert",
           "data2vec_audio", "data2vec_text", "bert_mlm", "split_settings", "mae", "compose_mae", "vit_backbone",
           "mae_learning_rate", "MAE_TRAINING", "VIT_BACKBONE"]


# -- GPT: autoregressive language modelling (objectives/clm.py) ------------------------------------------------
# GPT-2's wiring (Radford et al., 2019; transformers' GPT2LMHeadModel): pre-LN with a final norm, causal, tanh GELU
# ("gelu_new"), LayerNorm eps 1e-5, word + learned position embeddings with no norm, head tied to the word
# embeddings, residual projections initialised with std 0.02 / sqrt(2 x layers). base = GPT-2 small's shape (124M
# with its 50,257-token vocabulary; its context of 1,024 is ``max_positions``).
SIZES["gpt"] = {"tiny": dict(backbone=TINY), "small": dict(backbone=SMALL), "base": dict(backbone=BASE)}
GPT_BACKBONE = dict(norm_first=True, final_norm=True, causal=True, activation="gelu_new", layer_norm_eps=1e-5)
# nanoGPT's CPU run of character-level Shakespeare (its README: config/train_shakespeare_char.py with --block_size=64
# --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0):
# the shape, the optimisation, the data split and the validation loss it reports for that run. One departure: the
# peak learning rate is 4e-3 (cosine down to 4e-4), not nanoGPT's 1e-3 (to 1e-4); 4e-3 scored best of 1e-3 ... 8e-3
# on a tuning split cut from the training text (benchmarks/gpt_learning.py --tune; docs/recipes/gpt.md).
NANOGPT_SHAKESPEARE_CHAR: dict[str, Any] = dict(
    backbone=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512, dropout=0.0,
                  attention_dropout=0.0),
    context=64, batch_size=12, max_steps=2000, learning_rate=4e-3, min_learning_rate=4e-4, warmup_steps=100,
    adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, weight_decay=0.1, max_grad_norm=1.0,
    lr_scheduler_type="cosine", validation_fraction=0.1, reference_val_loss=1.88)


def compose_gpt(backbone: TransformerConfig, vocab_size: int, max_positions: int = 1024):
    """A :class:`CausalLanguageModeling` from a (causal) backbone config: GPT-2 embeddings (no padding row, no
    embedding norm, dropout = the backbone's) and GPT-2's scaled initialisation of the residual projections."""
    import math

    from torch import nn

    from selfsup.objectives.clm import CausalLanguageModeling

    adapter = TextAdapter(vocab_size, backbone.hidden_size, max_positions, type_vocab_size=0, pad_token_id=None,
                          dropout=backbone.dropout, layer_norm_eps=backbone.layer_norm_eps, embedding_norm=False)
    encoder = TransformerEncoder(backbone)
    std = 0.02 / math.sqrt(2 * backbone.num_layers)
    for layer in encoder.layers:
        nn.init.normal_(layer.attn.out.weight, std=std)
        nn.init.normal_(layer.fc2.weight, std=std)
    return CausalLanguageModeling(adapter, encoder)


def gpt(size: str, vocab_size: int, max_positions: int = 1024, **backbone: Any):
    """A GPT-2-style causal LM of a named size (``SIZES["gpt"]``, ``GPT_BACKBONE`` wiring); keyword arguments
    override the backbone (dropout, attention_dropout, hidden_size, ...)."""
    backbone_cfg = TransformerConfig(**{**GPT_BACKBONE, **size_of("gpt", size)["backbone"], **backbone})
    return compose_gpt(backbone_cfg, vocab_size, max_positions)


__all__ += ["gpt", "compose_gpt", "GPT_BACKBONE", "NANOGPT_SHAKESPEARE_CHAR"]


# -- CLIP / SigLIP: contrastive image-text pre-training (objectives/clip.py) --------------------------------------
# Per size: the image ViT ("vit", "image"), the text Transformer ("text") and the joint width ("objective"). tiny:
# tests (seconds); small: 32 x 32 images (CIFAR-10, digits) with 8 x 8 patches and short captions, on a CPU; base:
# CLIP ViT-B/16 (openai/clip-vit-base-patch16: a 12 x 768 ViT at 224, a 12 x 512 text Transformer, 512 joint).
SIZES["clip"] = {
    "tiny": dict(vit=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), image=dict(patch_size=8),
                 text=dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                 objective=dict(embed_dim=16)),
    "small": dict(vit=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
                  image=dict(patch_size=8),
                  text=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
                  objective=dict(embed_dim=128)),
    "base": dict(vit=BASE, image=dict(patch_size=16, image_size=224),
                 text=dict(hidden_size=512, num_layers=12, num_heads=8, intermediate_size=2048),
                 objective=dict(embed_dim=512)),
}
# The towers as transformers' CLIPModel / SiglipModel compute them: pre-LN with a final norm, no dropout; CLIP:
# quick_gelu, eps 1e-5, a causal text tower, a class token and a LayerNorm before the first image layer; SigLIP:
# tanh GELU, eps 1e-6, a bidirectional text tower, no class token (attention pooling).
CLIP_TOWER = dict(norm_first=True, final_norm=True, layer_norm_eps=1e-5, activation="quick_gelu", dropout=0.0,
                  attention_dropout=0.0)
SIGLIP_TOWER = dict(norm_first=True, final_norm=True, layer_norm_eps=1e-6, activation="gelu_pytorch_tanh",
                    dropout=0.0, attention_dropout=0.0)
CLIP_LOSS_SETTINGS = {  # per loss: tower wiring, image adapter, text context, objective settings (the papers')
    "clip": dict(tower=CLIP_TOWER, image=dict(positions="learned", class_token=True), context_length=77,
                 objective=dict(logit_scale_init=1 / 0.07, image_pooling="cls", text_pooling="eos")),
    "siglip": dict(tower=SIGLIP_TOWER, image=dict(positions="learned", class_token=False), context_length=64,
                   objective=dict(logit_scale_init=10.0, logit_bias_init=-10.0, image_pooling="map",
                                  image_projection=False, text_pooling="last", text_projection_bias=True)),
}


def clip_image_tower(backbone: str = "vit", size: str = "small", image_size: int = 32, loss: str = "clip",
                     vit: dict | None = None, image: dict | None = None, resnet: dict | None = None):
    """(image Encoder, attention pool or None) of a CLIP / SigLIP objective: a ViT wired as ``loss``'s (CLIP: class
    token, learned positions, a LayerNorm before the first layer; SigLIP: no class token, attention pooling), or a
    ResNet of ``TWO_VIEW_RESNETS`` (pooled by its token mean)."""
    from selfsup.modalities.image_text import NormedAdapter
    from selfsup.objectives.clip import AttentionPool
    from selfsup.types import Encoder

    if backbone != "vit":
        from selfsup.objectives.two_view.build import image_encoder

        return image_encoder(backbone, size, image_size, resnet=resnet), None
    sizes, wiring = size_of("clip", size), CLIP_LOSS_SETTINGS[loss]
    image_cfg = ImageConfig(**{**wiring["image"], **sizes["image"], "image_size": image_size, **(image or {})})
    vit_cfg = TransformerConfig(**{**wiring["tower"], **sizes["vit"], **(vit or {})})
    adapter = ImageAdapter(image_cfg, vit_cfg.hidden_size)
    if loss == "clip":
        return Encoder(NormedAdapter(adapter, vit_cfg.layer_norm_eps), TransformerEncoder(vit_cfg)), None
    pool = AttentionPool(vit_cfg.hidden_size, vit_cfg.num_heads, vit_cfg.intermediate_size, vit_cfg.activation,
                         vit_cfg.layer_norm_eps)
    return Encoder(adapter, TransformerEncoder(vit_cfg)), pool


def clip_text_tower(text: TransformerConfig, vocab_size: int, context_length: int, pad_token_id: int):
    """The text Encoder: token + learned position embeddings (no norm, no token types, no dropout: CLIP's), and
    the Transformer. CLIP pads with its end-of-text token, whose embedding must learn: no frozen padding row."""
    import torch

    from selfsup.types import Encoder

    adapter = TextAdapter(vocab_size, text.hidden_size, context_length, type_vocab_size=0, pad_token_id=pad_token_id,
                          dropout=0.0, layer_norm_eps=text.layer_norm_eps, embedding_norm=False)
    adapter.word_embeddings.padding_idx = None
    torch.nn.init.normal_(adapter.word_embeddings.weight, std=0.02)
    return Encoder(adapter, TransformerEncoder(text))


def compose_clip(image, text: TransformerConfig, vocab_size: int, context_length: int, config,
                 image_pool=None, pad_token_id: int = 1):
    """A :class:`CLIPObjective` from an image Encoder (and its attention pool), the text tower's config and the
    objective's config."""
    from selfsup.objectives.clip import CLIPObjective

    return CLIPObjective(image, clip_text_tower(text, vocab_size, context_length, pad_token_id), config, image_pool)


def clip(size: str = "small", loss: str = "clip", backbone: str = "vit", image_size: int | None = None,
         vocab_size: int = 4096,
         context_length: int | None = None, eos_token_id: int = 1, pad_token_id: int = 1, vit: dict | None = None,
         text: dict | None = None, image: dict | None = None, resnet: dict | None = None, **objective: Any):
    """CLIP (``loss="clip"``) or SigLIP (``"siglip"``) of a named size on a ViT (``backbone="vit"``) or a ResNet
    image tower (``resnet_tiny``, ``resnet18``, ``resnet50``). ``context_length``: the text positions (CLIP 77,
    SigLIP 64: its pipeline pads to 64). ``objective``: :class:`CLIPObjectiveConfig` fields (local_loss,
    max_logit_scale, embed_dim, ...); ``vit`` / ``text`` / ``image`` / ``resnet``: overrides of the towers."""
    from selfsup.objectives.clip import LOSSES, CLIPObjectiveConfig

    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
    sizes, wiring = size_of("clip", size), CLIP_LOSS_SETTINGS[loss]
    image_size = image_size or sizes["image"].get("image_size", 32)
    encoder, pool = clip_image_tower(backbone, size, image_size, loss, vit, image, resnet)
    settings = {**sizes["objective"], **wiring["objective"], "loss": loss, "eos_token_id": eos_token_id}
    if backbone != "vit":   # a ResNet: the mean of its feature map, projected
        settings.update(image_pooling="mean", image_projection=True)
    elif not settings.get("image_projection", True):   # SigLIP: the pooled image is the embedding
        settings["embed_dim"] = encoder.backbone.hidden_size
    config = CLIPObjectiveConfig(**{**settings, **objective})
    text_cfg = TransformerConfig(**{**wiring["tower"], **sizes["text"], "causal": loss == "clip", **(text or {})})
    return compose_clip(encoder, text_cfg, vocab_size, context_length or wiring["context_length"], config, pool,
                        pad_token_id)


__all__ += ["clip", "compose_clip", "clip_image_tower", "clip_text_tower", "CLIP_LOSS_SETTINGS", "CLIP_TOWER",
            "SIGLIP_TOWER"]
