"""The generic half of every conversion to and from ``transformers``: renaming rules, the split / join of our
fused QKV projection, loading that names what does not fit, checkpoint loading, and the reload-and-compare
check every export ends with.

Each family's mapping (which of our names is which HF name) lives beside its objective
(``selfsup.objectives.masked.hf_bert``, ``hf_wav2vec2``, ...); this module knows no family.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from selfsup.errors import SelfsupError

OUR_QKV = re.compile(r"^backbone\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$")
Rules = list[tuple[re.Pattern, str]]


def compile_rules(pairs: Sequence[tuple[str, str]], reverse: bool = False) -> Rules:
    """(ours, HF) name-prefix pairs with ``{i}`` for a layer index -> compiled (pattern, replacement) rules."""
    out = []
    for src, dst in pairs:
        src, dst = (dst, src) if reverse else (src, dst)
        pattern = re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)"))
        out.append((pattern, dst.replace("{i}", r"\1")))
    return out


def rename(key: str, rules: Rules) -> str | None:
    """``key`` under the first rule whose prefix it has, or None."""
    for pattern, repl in rules:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return None


def export_state(state: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]], qkv_prefix: str,
                 qkv_names: tuple[str, str, str], what: str,
                 special: Callable[[str, torch.Tensor], dict | None] = lambda key, value: None
                 ) -> dict[str, torch.Tensor]:
    """Our state dict under HF names.

    The fused ``backbone.layers.{i}.attn.qkv`` is split into ``{qkv_prefix}{name}.weight|bias`` for the three
    ``qkv_names`` (``qkv_prefix`` holds ``{i}``); the rest is renamed by ``pairs``. ``special(key, value)`` may
    return the HF entries of a key itself ({} to leave it out); a key nothing names is an error.
    """
    rules, out = compile_rules(pairs), {}
    for key, value in state.items():
        if (own := special(key, value)) is not None:
            out.update(own)
        elif (m := OUR_QKV.match(key)):
            for name, part in zip(qkv_names, value.chunk(3, dim=0)):
                out[qkv_prefix.format(i=m[1]) + f"{name}.{m[2]}"] = part.clone()
        elif (new := rename(key, rules)) is not None:
            out[new] = value
        else:
            raise RuntimeError(f"{what} export: no HF name for {key}")
    return out


def import_state(hf: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]], qkv_prefix: str,
                 qkv_names: tuple[str, str, str]) -> dict[str, torch.Tensor]:
    """HF weights under our names: the three QKV matrices joined, the rest renamed by ``pairs``; unknown keys
    are dropped."""
    rules, ours = compile_rules(pairs, reverse=True), {}
    first = re.compile("^" + re.escape(qkv_prefix).replace(r"\{i\}", r"(\d+)")
                       + re.escape(qkv_names[0]) + r"\.(weight|bias)$")
    for key, value in hf.items():
        if (m := first.match(key)):
            pre = qkv_prefix.format(i=m[1])
            ours[f"backbone.layers.{m[1]}.attn.qkv.{m[2]}"] = torch.cat([hf[f"{pre}{n}.{m[2]}"] for n in qkv_names])
        elif (new := rename(key, rules)) is not None:
            ours[new] = value
    return ours


def load_into(module: torch.nn.Module, ours: Mapping[str, torch.Tensor], optional: Callable[[str], bool]) -> None:
    """``load_state_dict`` that names what does not fit (missing keys for which ``optional`` holds are fine), in
    one line, shape mismatches included."""
    try:
        missing, unexpected = module.load_state_dict(ours, strict=False)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln] or [str(err).splitlines()[0]]
        raise SelfsupError(f"checkpoint does not fit: {lines[0]}") from None
    missing = [k for k in missing if not optional(k)]
    if missing or unexpected:
        raise SelfsupError(f"checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")


def fill_model(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
               ignore: Callable[[str], bool] = lambda key: False) -> torch.nn.Module:
    """Load ``state`` (cast to float32) into a freshly built HF ``model``; every key must fit (missing keys for
    which ``ignore`` holds are fine). Returns the model in eval mode."""
    state = {k: v.detach().float().clone() for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not ignore(k)]
    if missing or unexpected:
        raise RuntimeError(f"{what} export mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def load_model(path_or_model, model_type: str, model_class: str, accepts: Callable[[str], bool] | None = None):
    """(model, name for messages) from a checkpoint folder / Hub name (of ``model_type``, loaded as
    ``transformers.<model_class>``, no remote code) or a model object (its class name checked by ``accepts``)."""
    import transformers

    if not isinstance(path_or_model, (str, Path)):
        name = type(path_or_model).__name__
        if not (accepts or (lambda n: n == model_class))(name):
            raise SelfsupError(f"expected a {model_class}, got {name}")
        return path_or_model, "model"
    where = str(path_or_model)
    try:
        hf_cfg = transformers.AutoConfig.from_pretrained(where, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - transformers raises many types here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SelfsupError(f"{where}: not a transformers checkpoint ({first})") from None
    if hf_cfg.model_type != model_type:
        raise SelfsupError(f"{where}: model type {hf_cfg.model_type!r}; --init_from here needs a {model_type} "
                           "checkpoint")
    return getattr(transformers, model_class).from_pretrained(where, trust_remote_code=False), where


def check_encoder(objective: torch.nn.Module, target: str, pre_ln: bool = True) -> bool:
    """Whether the backbone is pre-LN (``do_stable_layer_norm``); a clear error when ``target`` cannot hold it."""
    cfg = objective.backbone.config
    if pre_ln and not (cfg.causal or not cfg.bias or cfg.norm_first != cfg.final_norm):
        return cfg.norm_first
    if not pre_ln and not (cfg.causal or not cfg.bias or cfg.norm_first or cfg.final_norm):
        return False
    kinds = "post-LN without or pre-LN with a final norm" if pre_ln else "post-LN with no final norm"
    raise SelfsupError(f"only bidirectional encoders with biases, {kinds}, export as {target}")


def max_abs_diff(ours: torch.Tensor, theirs: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """Largest absolute difference of two outputs, at the positions ``where`` (bool, leading dims) if given."""
    diff = (ours.float() - theirs.float())
    return float((diff[where] if where is not None else diff).abs().max())


def check_close(diff: float, what: str, atol: float = 1e-4) -> float:
    """The export check: a reloaded export must give our outputs to ``atol``."""
    if not diff <= atol:
        raise RuntimeError(f"export check failed: reloaded {what} differ by {diff:.2e}")
    return diff


__all__ = ["compile_rules", "rename", "export_state", "import_state", "load_into", "fill_model", "load_model",
           "max_abs_diff", "check_close", "check_encoder"]
