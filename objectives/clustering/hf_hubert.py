"""Conversion between :class:`HubertObjective` and ``transformers``' ``HubertModel``.

HuBERT's feature encoder and Transformer are wav2vec 2.0's, so the weight names are those of
``selfsup.objectives.speech_quantised.hf_wav2vec2`` without the ``wav2vec2.`` prefix: the fused QKV projection is split on export and
joined on import, the weight-normed position convolution keeps its parametrization (``original0`` = g,
``original1`` = v), the encoder LayerNorm is ``adapter.norm`` (post-LN, HuBERT base) or ``backbone.norm``
(pre-LN, ``do_stable_layer_norm``), and our mask embedding is HF's ``masked_spec_embed`` (what
``HubertModel(..., mask_time_indices=)`` puts at masked frames).

``transformers`` has no HuBERT pre-training head, so the export is the encoder alone. The head (``final_proj``,
``label_embeddings``) lives in our training checkpoints (``checkpoint-*/model.safetensors``) only; pass one of
them as ``head=`` to :func:`from_transformers` to continue pre-training with it, otherwise it starts afresh.
The export's ``config.json`` keeps our objective settings under ``selfsup_hubert`` (transformers ignores the
key), and sets ``mask_time_prob`` to the *fine-tuning* SpecAugment rate (0.05, as the Hub's HuBERT configs),
since that is what ``HubertForCTC`` fine-tuning from the export will apply.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import torch

from selfsup.backbones.hf_speech import (adapter_kwargs, check_encoder, dropout_map, encoder_config_kwargs,
                                         export_state, feature_extractor_for, import_state, load_into, load_model,
                                         transformer_config)
from selfsup.backbones.transformer import TransformerConfig, TransformerEncoder
from selfsup.errors import SelfsupError
from selfsup.modalities.audio import AudioConfig
from selfsup.objectives.clustering.hubert import HubertObjective, HubertObjectiveConfig
from selfsup.objectives.masking import SpanMasker
from selfsup.objectives.speech_quantised.hf_wav2vec2 import RULES, speech_adapter


def compose_hubert(audio: AudioConfig, backbone: TransformerConfig, config: HubertObjectiveConfig) -> HubertObjective:
    masker = SpanMasker(config.mask_prob, config.mask_length, config.min_masks)
    return HubertObjective(speech_adapter(audio, backbone), TransformerEncoder(backbone), masker, config)

LAYER = "encoder.layers.{i}."
HEAD_KEYS = ("final_proj.weight", "final_proj.bias", "label_embeddings")
# wav2vec 2.0's encoder names minus the "wav2vec2." prefix (the quantizer and its projections have no HuBERT twin)
HUBERT_RULES = [(ours, hf[len("wav2vec2."):]) for ours, hf in RULES if hf.startswith("wav2vec2.")]


def rule_pairs(stable: bool) -> list[tuple[str, str]]:
    """(ours, HF) prefixes, with the encoder LayerNorm where this kind of model keeps it."""
    return [*HUBERT_RULES, ("backbone.norm." if stable else "adapter.norm.", "encoder.layer_norm.")]


def is_stable(objective: HubertObjective) -> bool:
    return check_encoder(objective, "HubertModel")


def hubert_config(objective: HubertObjective, mask_time_prob: float = 0.05):
    """The ``HubertConfig`` describing our encoder (+ our objective settings under ``selfsup_hubert``)."""
    from transformers import HubertConfig

    if not mask_time_prob > 0:
        raise ValueError("mask_time_prob must be > 0, or HubertModel has no masked_spec_embed to hold ours")
    a, o = objective.adapter.config, objective.config
    return HubertConfig(
        **encoder_config_kwargs(objective), final_dropout=0.0, feat_proj_layer_norm=True,
        feat_extract_norm=a.feat_extract_norm, conv_pos_batch_norm=False, do_stable_layer_norm=is_stable(objective),
        apply_spec_augment=True, mask_time_prob=mask_time_prob, mask_time_length=o.mask_length,
        mask_time_min_masks=o.min_masks, selfsup_hubert=o.to_dict(),
    )


def to_hf_state_dict(objective: HubertObjective) -> dict[str, torch.Tensor]:
    """Our encoder's weights (and mask embedding) under ``HubertModel`` names; the head is left out."""
    return export_state(objective.state_dict(), rule_pairs(is_stable(objective)), LAYER, "HuBERT",
                        lambda key, value: {} if key in HEAD_KEYS else None)


def to_transformers(objective: HubertObjective, mask_time_prob: float = 0.05):
    """A ``HubertModel`` holding the same encoder weights and mask embedding (float32, eval mode)."""
    from transformers import HubertModel

    model = HubertModel(hubert_config(objective, mask_time_prob))
    state = {k: v.detach().float().clone() for k, v in to_hf_state_dict(objective).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HuBERT export mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def configs_from(hf_cfg, dropout: float | None = None, **settings: Any):
    """(AudioConfig, TransformerConfig, HubertObjectiveConfig) from a ``HubertConfig``.

    Objective settings: HuBERT base pre-training defaults, then the export's ``selfsup_hubert``, then
    ``settings``. The config's ``mask_time_prob`` is a fine-tuning SpecAugment rate and is not used.
    """
    if getattr(hf_cfg, "adapter_attn_dim", None) is not None:
        raise SelfsupError("HuBERT checkpoints with adapter layers are not supported")
    if not getattr(hf_cfg, "feat_proj_layer_norm", True) or getattr(hf_cfg, "conv_pos_batch_norm", False):
        raise SelfsupError("HuBERT checkpoints without the feature-projection LayerNorm or with a batch-normed "
                           "position convolution are not supported")
    stable, drop = bool(hf_cfg.do_stable_layer_norm), dropout_map(dropout)
    audio = AudioConfig(**adapter_kwargs(hf_cfg, drop), feat_extract_norm=hf_cfg.feat_extract_norm)
    backbone = transformer_config(hf_cfg, stable, drop)
    known = {f.name for f in fields(HubertObjectiveConfig)}
    if unknown := set(settings) - known:
        raise SelfsupError(f"unknown HuBERT settings {sorted(unknown)}; choose from {sorted(known)}")
    saved = {k: v for k, v in (getattr(hf_cfg, "selfsup_hubert", None) or {}).items() if k in known}
    return audio, backbone, HubertObjectiveConfig(**{**saved, **settings})


def load_head(head: Mapping[str, torch.Tensor] | str | Path) -> dict[str, torch.Tensor]:
    """The head tensors from a mapping or a safetensors file holding them (e.g. a training checkpoint's
    ``model.safetensors``; other keys are ignored)."""
    if isinstance(head, (str, Path)):
        from safetensors.torch import load_file

        try:
            head = load_file(str(head))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types
            raise SelfsupError(f"{head}: cannot read the HuBERT head ({err})") from None
    if missing := [k for k in HEAD_KEYS if k not in head]:
        raise SelfsupError(f"HuBERT head lacks {missing}; expected {list(HEAD_KEYS)}")
    return {k: head[k] for k in HEAD_KEYS}


def from_hf_state_dict(objective: HubertObjective, hf: Mapping[str, torch.Tensor]) -> None:
    ours = import_state(hf, rule_pairs(is_stable(objective)), LAYER)
    load_into(objective, ours, optional=lambda k: k in ("mask_embedding", *HEAD_KEYS))


def from_transformers(path_or_model, head: Mapping[str, torch.Tensor] | str | Path | None = None,
                      num_clusters: int | None = None, dropout: float | None = None, **settings: Any
                      ) -> HubertObjective:
    """Our objective from a ``HubertModel`` or a checkpoint folder / Hub name of any HuBERT model
    (``--init_from``; a ``HubertForCTC`` checkpoint gives its encoder).

    head: ``final_proj`` / ``label_embeddings`` tensors, as a mapping or a safetensors file (our training
    checkpoint's ``model.safetensors``); without one the head is freshly initialised with ``num_clusters``
    classes (required then, unless the export's ``selfsup_hubert`` settings say). ``settings``: fields of
    :class:`HubertObjectiveConfig`, which win over the saved ones. A checkpoint without ``masked_spec_embed``
    keeps a fresh mask embedding.
    """
    model, name = load_model(path_or_model, "hubert", "HubertModel")
    head_state = load_head(head) if head is not None else None
    if head_state is not None:
        c, p = head_state["label_embeddings"].shape
        if num_clusters is not None and num_clusters != c:
            raise SelfsupError(f"the head has {c} cluster embeddings but num_clusters={num_clusters}")
        settings = {**settings, "num_clusters": c, "final_dim": p}
    elif num_clusters is not None:
        settings = {**settings, "num_clusters": num_clusters}
    elif "num_clusters" not in (getattr(model.config, "selfsup_hubert", None) or {}):
        raise SelfsupError(f"{name}: say how many k-means clusters the new head predicts (num_clusters=...)")
    try:
        audio, backbone, config = configs_from(model.config, dropout, **settings)
    except ValueError as err:
        raise SelfsupError(f"{name}: {err}") from None
    objective = compose_hubert(audio, backbone, config)
    from_hf_state_dict(objective, model.state_dict())
    if head_state is not None:
        try:
            objective.load_state_dict(head_state, strict=False)
        except RuntimeError as err:
            raise SelfsupError(f"the HuBERT head does not fit the {name} encoder: {str(err).splitlines()[-1].strip()}"
                               ) from None
    return objective


__all__ = ["to_transformers", "from_transformers", "feature_extractor_for", "hubert_config", "to_hf_state_dict",
           "from_hf_state_dict", "load_head", "HEAD_KEYS"]
