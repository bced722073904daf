"""Conversion between :class:`Wav2Vec2Objective` and ``transformers``' ``Wav2Vec2ForPreTraining``.

Our fused QKV projection is split into q/k/v on export and joined on import; the weight-normed position
convolution keeps its parametrization (``original0`` = g, (1, 1, K); ``original1`` = v, (D, D / groups, K)),
so nothing is recomputed. The encoder LayerNorm is ours ``adapter.norm`` in post-LN models (wav2vec2-base) and
``backbone.norm`` in pre-LN ones (``do_stable_layer_norm``); HF calls both ``wav2vec2.encoder.layer_norm``.
The Gumbel temperature is not part of an HF checkpoint (HF keeps it as a plain attribute).
"""
from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones.transformer import TransformerConfig
from selfsup.errors import SelfsupError
from selfsup.modalities.audio import AudioConfig
from selfsup.objectives.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig

LAYER = "wav2vec2.encoder.layers.{i}."
RULES = [  # ours -> HF; "{i}" is a layer index
    ("adapter.conv_layers.{i}.conv.", "wav2vec2.feature_extractor.conv_layers.{i}.conv."),
    ("adapter.conv_layers.{i}.norm.", "wav2vec2.feature_extractor.conv_layers.{i}.layer_norm."),
    ("adapter.projection_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("adapter.projection.", "wav2vec2.feature_projection.projection."),
    ("adapter.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("backbone.layers.{i}.attn.out.", LAYER + "attention.out_proj."),
    ("backbone.layers.{i}.norm1.", LAYER + "layer_norm."),
    ("backbone.layers.{i}.fc1.", LAYER + "feed_forward.intermediate_dense."),
    ("backbone.layers.{i}.fc2.", LAYER + "feed_forward.output_dense."),
    ("backbone.layers.{i}.norm2.", LAYER + "final_layer_norm."),
    ("mask_embedding", "wav2vec2.masked_spec_embed"),
    ("quantizer.weight_proj.", "quantizer.weight_proj."),
    ("project_hid.", "project_hid."),
    ("project_q.", "project_q."),
]
QKV = ("q_proj", "k_proj", "v_proj")


def rules_for(stable: bool, reverse: bool = False) -> list[tuple[re.Pattern, str]]:
    """Compiled (pattern, replacement) prefix rules, ours -> HF (or HF -> ours when ``reverse``)."""
    norm = ("backbone.norm." if stable else "adapter.norm.", "wav2vec2.encoder.layer_norm.")
    return compile_rules([*RULES, norm], reverse)


def compile_rules(pairs: list[tuple[str, str]], reverse: bool = False) -> list[tuple[re.Pattern, str]]:
    """(ours, HF) name-prefix pairs with ``{i}`` for a layer index -> compiled (pattern, replacement) rules."""
    out = []
    for src, dst in pairs:
        src, dst = (dst, src) if reverse else (src, dst)
        pattern = re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)"))
        out.append((pattern, dst.replace("{i}", r"\1")))
    return out


def rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def is_stable(objective: Wav2Vec2Objective) -> bool:
    cfg = objective.backbone.config
    if cfg.causal or not cfg.bias or cfg.norm_first != cfg.final_norm:
        raise SelfsupError("only bidirectional encoders with biases, post-LN without or pre-LN with a final norm, "
                           "export as Wav2Vec2ForPreTraining")
    return cfg.norm_first


def wav2vec2_config(objective: Wav2Vec2Objective):
    """The ``Wav2Vec2Config`` describing our objective (pre-training settings included)."""
    from transformers import Wav2Vec2Config

    a, t, o = objective.adapter.config, objective.backbone.config, objective.config
    return Wav2Vec2Config(
        hidden_size=t.hidden_size, num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        intermediate_size=t.intermediate_size, hidden_act=t.activation, hidden_dropout=t.dropout,
        attention_dropout=t.attention_dropout, activation_dropout=0.0, layerdrop=0.0, final_dropout=0.0,
        feat_proj_dropout=a.feat_proj_dropout, feat_quantizer_dropout=o.dropout_features,
        layer_norm_eps=t.layer_norm_eps, feat_extract_norm=a.feat_extract_norm, feat_extract_activation=a.activation,
        conv_dim=list(a.conv_dim), conv_kernel=list(a.conv_kernel), conv_stride=list(a.conv_stride),
        conv_bias=a.conv_bias, num_conv_pos_embeddings=a.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=a.num_conv_pos_embedding_groups, do_stable_layer_norm=is_stable(objective),
        mask_time_prob=o.mask_prob, mask_time_length=o.mask_length, mask_time_min_masks=o.min_masks,
        num_codevectors_per_group=o.num_codevectors_per_group, num_codevector_groups=o.num_codevector_groups,
        codevector_dim=o.codevector_dim, proj_codevector_dim=o.proj_codevector_dim, num_negatives=o.num_negatives,
        contrastive_logits_temperature=o.contrastive_temperature, diversity_loss_weight=o.diversity_loss_weight,
    )


def to_hf_state_dict(objective: Wav2Vec2Objective) -> dict[str, torch.Tensor]:
    rules, out = rules_for(is_stable(objective)), {}
    for key, value in objective.state_dict().items():
        if key == "quantizer.temperature":
            continue
        if key == "quantizer.codevectors":
            out[key] = value[None]                                       # (G*V, d/G) -> (1, G*V, d/G)
        elif (m := re.match(r"^backbone\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$", key)):
            for name, part in zip(QKV, value.chunk(3, dim=0)):
                out[LAYER.format(i=m[1]) + f"attention.{name}.{m[2]}"] = part.clone()
        elif (new := rename(key, rules)) is not None:
            out[new] = value
        else:
            raise RuntimeError(f"wav2vec 2.0 export: no HF name for {key}")
    return out


def to_transformers(objective: Wav2Vec2Objective):
    """A ``Wav2Vec2ForPreTraining`` holding the same weights (float32, eval mode, same Gumbel temperature)."""
    from transformers import Wav2Vec2ForPreTraining

    model = Wav2Vec2ForPreTraining(wav2vec2_config(objective))
    expected = set(model.state_dict())  # no masked_spec_embed when mask_time_prob is 0
    state = {k: v.detach().float().clone() for k, v in to_hf_state_dict(objective).items() if k in expected}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"wav2vec 2.0 export mismatch: missing {missing}, unexpected {unexpected}")
    model.set_gumbel_temperature(float(objective.quantizer.temperature))
    return model.eval()


def configs_from(hf_cfg, dropout: float | None = None, **overrides: Any):
    """(AudioConfig, TransformerConfig, Wav2Vec2ObjectiveConfig) from a ``Wav2Vec2Config``."""
    if getattr(hf_cfg, "add_adapter", False) or getattr(hf_cfg, "adapter_attn_dim", None) is not None:
        raise SelfsupError("wav2vec 2.0 checkpoints with adapter layers are not supported")
    stable = bool(hf_cfg.do_stable_layer_norm)
    drop = (lambda v: v if dropout is None else dropout)
    audio = AudioConfig(
        conv_dim=hf_cfg.conv_dim, conv_kernel=hf_cfg.conv_kernel, conv_stride=hf_cfg.conv_stride,
        conv_bias=hf_cfg.conv_bias, feat_extract_norm=hf_cfg.feat_extract_norm,
        activation=hf_cfg.feat_extract_activation, num_conv_pos_embeddings=hf_cfg.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=hf_cfg.num_conv_pos_embedding_groups,
        feat_proj_dropout=drop(hf_cfg.feat_proj_dropout))
    backbone = TransformerConfig(
        hidden_size=hf_cfg.hidden_size, num_layers=hf_cfg.num_hidden_layers, num_heads=hf_cfg.num_attention_heads,
        intermediate_size=hf_cfg.intermediate_size, activation=hf_cfg.hidden_act, norm_first=stable,
        final_norm=stable, dropout=drop(hf_cfg.hidden_dropout), attention_dropout=drop(hf_cfg.attention_dropout),
        layer_norm_eps=hf_cfg.layer_norm_eps)
    settings = dict(
        num_codevector_groups=hf_cfg.num_codevector_groups, num_codevectors_per_group=hf_cfg.num_codevectors_per_group,
        codevector_dim=hf_cfg.codevector_dim, proj_codevector_dim=hf_cfg.proj_codevector_dim,
        num_negatives=hf_cfg.num_negatives, contrastive_temperature=hf_cfg.contrastive_logits_temperature,
        diversity_loss_weight=hf_cfg.diversity_loss_weight, mask_prob=hf_cfg.mask_time_prob,
        mask_length=hf_cfg.mask_time_length, min_masks=hf_cfg.mask_time_min_masks,
        dropout_features=drop(hf_cfg.feat_quantizer_dropout))
    known = {f.name for f in fields(Wav2Vec2ObjectiveConfig)}
    if unknown := set(overrides) - known:
        raise SelfsupError(f"unknown wav2vec 2.0 settings {sorted(unknown)}; choose from {sorted(known)}")
    return audio, backbone, Wav2Vec2ObjectiveConfig(**{**settings, **overrides})


def from_hf_state_dict(objective: Wav2Vec2Objective, hf: dict[str, torch.Tensor]) -> None:
    rules, ours = rules_for(is_stable(objective), reverse=True), {}
    for key, value in hf.items():
        if (m := re.match(r"^wav2vec2\.encoder\.layers\.(\d+)\.attention\.q_proj\.(weight|bias)$", key)):
            pre = LAYER.format(i=m[1]) + "attention."
            ours[f"backbone.layers.{m[1]}.attn.qkv.{m[2]}"] = torch.cat([hf[f"{pre}{n}.{m[2]}"] for n in QKV])
        elif key == "quantizer.codevectors":
            ours[key] = value[0]
        elif (new := rename(key, rules)) is not None:
            ours[new] = value
    missing, unexpected = objective.load_state_dict(ours, strict=False)
    missing = [k for k in missing if k not in ("quantizer.temperature", "mask_embedding")]
    if missing or unexpected:
        raise SelfsupError(f"checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")


def from_transformers(path_or_model, dropout: float | None = None, **overrides: Any) -> Wav2Vec2Objective:
    """Our objective from a ``Wav2Vec2ForPreTraining`` (or a checkpoint folder / Hub name of any wav2vec2 model:
    ``--init_from``; parts it lacks, such as the quantizer of a fine-tuned model, start freshly initialised).

    Settings come from the checkpoint's config; ``overrides`` (fields of :class:`Wav2Vec2ObjectiveConfig`) win.
    Hub configs usually carry the *fine-tuning* SpecAugment rate (``mask_time_prob=0.05``): pass
    ``mask_prob=0.65`` to continue pre-training. HF's ``layerdrop`` and ``activation_dropout`` have no
    counterpart in our backbone and are not used.
    """
    from transformers import AutoConfig, Wav2Vec2ForPreTraining

    if isinstance(path_or_model, (str, Path)):
        try:
            hf_cfg = AutoConfig.from_pretrained(str(path_or_model), trust_remote_code=False)
        except Exception as err:  # noqa: BLE001
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SelfsupError(f"{path_or_model}: not a transformers checkpoint ({first})") from None
        if hf_cfg.model_type != "wav2vec2":
            raise SelfsupError(f"{path_or_model}: model type {hf_cfg.model_type!r}; --init_from here needs a "
                               "wav2vec2 checkpoint")
        model = Wav2Vec2ForPreTraining.from_pretrained(str(path_or_model), trust_remote_code=False)
    else:
        model = path_or_model
        if type(model).__name__ != "Wav2Vec2ForPreTraining":
            raise SelfsupError(f"expected a Wav2Vec2ForPreTraining, got {type(model).__name__}")
    try:
        audio, backbone, settings = configs_from(model.config, dropout, **overrides)
    except ValueError as err:
        raise SelfsupError(f"{path_or_model if isinstance(path_or_model, (str, Path)) else 'model'}: {err}") from None
    objective = Wav2Vec2Objective(audio, backbone, settings)
    from_hf_state_dict(objective, model.state_dict())
    return objective


def feature_extractor_for(objective: Wav2Vec2Objective | None = None):
    """The ``Wav2Vec2FeatureExtractor`` that goes with an export: 16 kHz mono, zero-mean unit-variance
    normalisation per utterance, zero padding, attention mask returned (our models train with it)."""
    from transformers import Wav2Vec2FeatureExtractor

    rate = objective.adapter.config.sampling_rate if objective is not None else 16000
    return Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=rate, padding_value=0.0, do_normalize=True,
                                    return_attention_mask=True)


__all__ = ["to_transformers", "from_transformers", "feature_extractor_for", "wav2vec2_config",
           "to_hf_state_dict", "from_hf_state_dict"]
