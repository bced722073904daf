"""BERT MLM, data2vec (audio and text) and MAE of a named size (``objectives/masked/sizes.py``)."""
from __future__ import annotations

from typing import Any, Sequence

from selfsup.backbones.transformer import transformer_config
from selfsup.modalities.audio import CONV_SIZES
from selfsup.modalities.audio_pos import Data2VecAudioAdapterConfig
from selfsup.modalities.image import ImageConfig
from selfsup.objectives.masked.data2vec import Data2VecObjective, Data2VecObjectiveConfig
from selfsup.objectives.masked.hf_bert import compose_bert
from selfsup.objectives.masked.hf_data2vec_audio import compose_data2vec_audio
from selfsup.objectives.masked.hf_data2vec_text import compose_data2vec_text
from selfsup.objectives.masked.hf_mae import compose_mae
from selfsup.objectives.masked.mae import MAEConfig, MAEObjective
from selfsup.objectives.masked.mlm import MaskedLanguageModeling
from selfsup.objectives.masked.sizes import (DATA2VEC_AUDIO_MASK, DATA2VEC_TEXT, DATA2VEC_TEXT_MASK, MAE_IMAGE,
                                             VIT_SHARED, size_of)
from selfsup.objectives.masking import SpanMasker, TokenMasker


def bert_mlm(size: str, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
             special_token_ids: Sequence[int] = (), max_positions: int = 512, mlm_probability: float = 0.15,
             continuation_ids: Sequence[int] | None = None, **backbone: Any) -> MaskedLanguageModeling:
    """BERT MLM of a named size (post-LN, LayerNorm eps 1e-12); keyword arguments override the backbone."""
    backbone_cfg = transformer_config(size_of("bert_mlm", size)["backbone"], "bert", **backbone)
    masker = TokenMasker(mask_token_id, vocab_size, mlm_probability,
                         special_ids=tuple({*special_token_ids, pad_token_id}),
                         continuation_ids=None if continuation_ids is None else tuple(continuation_ids))
    return compose_bert(backbone_cfg, masker, pad_token_id, max_positions)

def data2vec_audio(size: str = "base", audio: dict | None = None, backbone: dict | None = None,
                   mask_prob: float = DATA2VEC_AUDIO_MASK["mask_prob"],
                   mask_length: int = DATA2VEC_AUDIO_MASK["mask_length"],
                   min_masks: int = DATA2VEC_AUDIO_MASK["min_masks"], **objective: Any) -> Data2VecObjective:
    """data2vec on raw audio of a named size (fairseq's base_librispeech settings as defaults)."""
    sizes = size_of("data2vec_audio", size)
    audio_cfg = Data2VecAudioAdapterConfig(**{**CONV_SIZES[size], **sizes["adapter"], **(audio or {})})
    backbone_cfg = transformer_config(sizes["backbone"], "speech", norm_first=False, final_norm=False,
                                      **(backbone or {}))
    config = Data2VecObjectiveConfig(**{**sizes["objective"], **objective})
    return compose_data2vec_audio(audio_cfg, backbone_cfg, SpanMasker(mask_prob, mask_length, min_masks), config)

def data2vec_text(size: str, vocab_size: int, mask_token_id: int, pad_token_id: int,
                  special_token_ids: Sequence[int] = (), max_positions: int = 512, backbone: dict | None = None,
                  masker: dict | None = None, **objective: Any) -> Data2VecObjective:
    """data2vec on text of a named size, with fairseq's data2vec text settings: 35 % of tokens masked in spans
    of 4, all replaced by [MASK]; targets the layer-normed FFN outputs of the top 10 of 12 teacher layers; smooth
    L1 (beta 4) on a two-layer head; EMA 0.999 -> 0.9999."""
    sizes = size_of("data2vec_text", size)
    backbone_cfg = transformer_config(sizes["backbone"], "bert", layer_norm_eps=1e-5, **(backbone or {}))
    token_masker = TokenMasker(mask_token_id, vocab_size, special_ids=tuple({*special_token_ids, pad_token_id}),
                               **{**DATA2VEC_TEXT_MASK, **(masker or {})})
    config = Data2VecObjectiveConfig(**{**DATA2VEC_TEXT, **sizes["objective"], **objective})
    return compose_data2vec_text(backbone_cfg, token_masker, config, pad_token_id, max_positions)

def mae(size: str = "base", image: dict | None = None, backbone: dict | None = None, decoder: dict | None = None,
        **objective: Any) -> MAEObjective:
    """MAE of a named size (``SIZES["mae"]``): sin-cos positions and a class token, the ViT wiring, the decoder
    sharing the encoder's activation / eps / dropout / bias unless ``decoder`` overrides them; ``objective``
    keywords are :class:`MAEConfig` fields (mask_ratio, norm_pix_loss, ...)."""
    sizes = size_of("mae", size)
    image_cfg = ImageConfig(**{**MAE_IMAGE, **sizes["image"], **(image or {})})
    backbone_cfg = transformer_config(sizes["backbone"], "vit", **(backbone or {}))
    shared = {k: getattr(backbone_cfg, k) for k in VIT_SHARED}
    decoder_cfg = transformer_config(sizes["decoder"], "vit", **{**shared, **(decoder or {})})
    config = MAEConfig(**{**sizes.get("objective", {}), **objective})
    return compose_mae(image_cfg, backbone_cfg, decoder_cfg, config)


__all__ = ["bert_mlm", "data2vec_audio", "data2vec_text", "mae"]
