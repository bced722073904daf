"""Conversion between selfsup's ResNet encoders (``PixelAdapter`` + :class:`ResNetBackbone`) and ``transformers``.

* **ImageNet stem** (7x7 stride-2 convolution + max-pool): ``transformers``' ``ResNetModel``
  (``ResNetConfig(layer_type="basic"|"bottleneck", depths, hidden_sizes, embedding_size=64)``; torchvision's
  v1.5 bottleneck, stride on the 3x3 convolution, is ``downsample_in_bottleneck=False``).
* **CIFAR stem** (3x3 stride-1, no max-pool): ``ResNetConfig`` (transformers 5.x) has no stem option --
  ``ResNetEmbeddings`` hard-codes ``kernel_size=7, stride=2`` and the max-pool, and ``downsample_in_first_stage``
  only moves a stride into stage 1 -- so it exports as selfsup's own ``SelfsupResNetModel``
  (``SelfsupResNetConfig``, ``model_type="selfsup_resnet"``): ``ResNetModel``'s layout, weight names and outputs
  with the stem's kernel, stride and pooling in the config. Its code, the real module
  ``backbones/remote/modeling_selfsup_resnet.py`` (torch and transformers only; it reuses transformers'
  ``ResNetEncoder`` and ``ResNetConvLayer``), is copied next to the weights and named in the config's
  ``auto_map``, so ``AutoModel.from_pretrained(DIR, trust_remote_code=True)`` loads it without selfsup installed.

Export layout (``export_resnet``): ``DIR/config.json``, ``DIR/model.safetensors`` (safetensors only), for the CIFAR
stem ``DIR/modeling_selfsup_resnet.py``, and the image processor when one is given. Weight names, ours
(torchvision's) -> HF: ``conv1`` / ``bn1`` -> ``embedder.embedder.convolution`` / ``.normalization``;
``layer{s+1}.{j}.conv{k}`` / ``bn{k}`` -> ``encoder.stages.{s}.layers.{j}.layer.{k-1}.convolution`` /
``.normalization``; ``layer{s+1}.{j}.downsample.0`` / ``.1`` -> ``encoder.stages.{s}.layers.{j}.shortcut.convolution``
/ ``.normalization``. Outputs: HF's ``last_hidden_state`` (B, C, H, W) is our (B, H·W, C) tokens reshaped, its
``pooler_output`` (B, C, 1, 1) our token mean.

:func:`resnet_from_transformers` goes the other way (``--init_from``): a ``ResNetModel`` (object, folder or Hub
name; classification checkpoints too) or a selfsup export, read from its config.json and safetensors without
running its code.
"""
from __future__ import annotations

import json
import re
import shutil
import types
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones.remote import modeling_selfsup_resnet as remote_resnet
from selfsup.backbones.resnet import DEPTHS, ResNetBackbone, ResNetConfig, as_tokens
from selfsup.convert import check_close, fill_model, load_model, max_abs_diff
from selfsup.errors import SelfsupError
from selfsup.modalities.image import PixelAdapter
from selfsup.types import Encoder

MODEL_TYPE = "selfsup_resnet"
MODELING_FILE = "modeling_selfsup_resnet.py"
AUTO_MAP = {"AutoConfig": "modeling_selfsup_resnet.SelfsupResNetConfig",
            "AutoModel": "modeling_selfsup_resnet.SelfsupResNetModel"}


# ours (relative to the backbone) -> HF, with {s} the stage (ours 1-based, HF 0-based), {j} the block, {k} the conv
_TO_HF = [
    (re.compile(r"^conv1\.(.+)$"), lambda m: f"embedder.embedder.convolution.{m[1]}"),
    (re.compile(r"^bn1\.(.+)$"), lambda m: f"embedder.embedder.normalization.{m[1]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.convolution.{m[4]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[3]) - 1}.normalization.{m[4]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.convolution.{m[3]}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(.+)$"),
     lambda m: f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.normalization.{m[3]}"),
]
_FROM_HF = [
    (re.compile(r"^embedder\.embedder\.convolution\.(.+)$"), lambda m: f"conv1.{m[1]}"),
    (re.compile(r"^embedder\.embedder\.normalization\.(.+)$"), lambda m: f"bn1.{m[1]}"),
    (re.compile(r"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"^encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}.{m[4]}"),
    (re.compile(r"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.{m[3]}"),
    (re.compile(r"^encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.(.+)$"),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1.{m[3]}"),
]


def _rename(key: str, rules) -> str | None:
    for pattern, repl in rules:
        if (m := pattern.match(key)):
            return repl(m)
    return None


def to_hf_state_dict(backbone: ResNetBackbone) -> dict[str, torch.Tensor]:
    """The backbone's weights and BN statistics under ``ResNetModel``'s names."""
    out = {}
    for key, value in backbone.state_dict().items():
        if (new := _rename(key, _TO_HF)) is None:
            raise RuntimeError(f"ResNet export: no HF name for {key}")
        out[new] = value
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ResNetModel`` weights (a ``resnet.`` prefix of the classification models dropped) under our names;
    keys outside the encoder (classifier, pooler) are left out."""
    out = {}
    for key, value in hf.items():
        key = key[len("resnet."):] if key.startswith("resnet.") else key
        if (new := _rename(key, _FROM_HF)) is not None:
            out[new] = value
    return out


# -- configs ---------------------------------------------------------------------------------------------------
def _check_backbone(encoder: Encoder) -> ResNetBackbone:
    if not isinstance(encoder.backbone, ResNetBackbone):
        raise SelfsupError(f"only ResNet encoders export as ResNetModel, got {type(encoder.backbone).__name__}")
    return encoder.backbone


def config_fields(cfg: ResNetConfig) -> dict[str, Any]:
    """The fields ``ResNetConfig`` and ``SelfsupResNetConfig`` share, and our own config under ``selfsup_resnet``."""
    return dict(num_channels=cfg.num_channels, embedding_size=64, hidden_sizes=list(cfg.hidden_sizes),
                depths=list(cfg.blocks), layer_type=cfg.block, hidden_act="relu", downsample_in_first_stage=False,
                downsample_in_bottleneck=False, selfsup_resnet=cfg.to_dict())


def remote_code_classes() -> types.ModuleType:
    """The module the export ships (``backbones/remote/modeling_selfsup_resnet.py``): ``SelfsupResNetConfig``,
    ``SelfsupResNetModel``."""
    return remote_resnet


def resnet_config(encoder: Encoder):
    """``ResNetConfig`` (ImageNet stem) or ``SelfsupResNetConfig`` (CIFAR stem, with ``auto_map``) of our encoder."""
    cfg = _check_backbone(encoder).config
    if not cfg.cifar_stem:
        from transformers import ResNetConfig as HFResNetConfig

        return HFResNetConfig(**config_fields(cfg))
    config = remote_code_classes().SelfsupResNetConfig(**config_fields(cfg), embedding_kernel_size=3,
                                                       embedding_stride=1, embedding_pooling=False)
    config.auto_map = dict(AUTO_MAP)
    return config


def encoder_to_resnet(encoder: Encoder):
    """A ``ResNetModel`` (ImageNet stem) or ``SelfsupResNetModel`` (CIFAR stem) holding our encoder's weights and
    BN statistics (float32, eval mode)."""
    config = resnet_config(encoder)
    if config.model_type == MODEL_TYPE:
        model = remote_code_classes().SelfsupResNetModel(config)
    else:
        from transformers import ResNetModel

        model = ResNetModel(config)
    return fill_model(model, to_hf_state_dict(encoder.backbone), "ResNet")


# -- export and check ----------------------------------------------------------------------------------------------
def sample_pixels(encoder: Encoder, n: int = 2, image_size: int = 32, seed: int = 0) -> torch.Tensor:
    """A fixed (n, C, image_size, image_size) batch of normalised-looking pixels for the export check."""
    c = _check_backbone(encoder).config.num_channels
    return torch.randn(n, c, image_size, image_size, generator=torch.Generator().manual_seed(seed))


def export_resnet(encoder: Encoder, out_dir: str | Path, processor=None, pixel_values: torch.Tensor | None = None,
                  atol: float = 1e-4) -> dict[str, float]:
    """Write the export (layout in the module docstring), reload it with ``AutoModel`` and compare with ours;
    returns the check's figures. ``processor`` (an image processor) is saved beside it when given."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder = encoder.float().cpu().eval()
    model = encoder_to_resnet(encoder)
    if model.config.model_type == MODEL_TYPE:
        shutil.copyfile(remote_resnet.__file__, out / MODELING_FILE)
    model.save_pretrained(str(out))
    if processor is not None:
        processor.save_pretrained(str(out))
    return check_resnet_export(encoder, out, sample_pixels(encoder) if pixel_values is None else pixel_values, atol)


@torch.no_grad()
def check_resnet_export(encoder: Encoder, out_dir: str | Path, pixel_values: torch.Tensor,
                        atol: float = 1e-4) -> dict[str, float]:
    """Reload ``out_dir`` with ``AutoModel`` (with ``trust_remote_code`` only for selfsup's own class, whose code
    the export itself wrote) and compare its last feature map and pooled output with ours (eval mode)."""
    from transformers import AutoModel

    encoder = encoder.float().cpu().eval()
    pixel_values = pixel_values.float().cpu()
    own = json.loads((Path(out_dir) / "config.json").read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    theirs = AutoModel.from_pretrained(str(out_dir), trust_remote_code=own).eval()(pixel_values=pixel_values)
    ours = encoder({"pixel_values": pixel_values})[0].last_hidden_state
    return {"export/max_abs_hidden_diff": check_close(max_abs_diff(ours, as_tokens(theirs.last_hidden_state)),
                                                      "ResNet feature maps", atol),
            "export/max_abs_pooled_diff": check_close(max_abs_diff(ours.mean(dim=1), theirs.pooler_output.flatten(1)),
                                                      "ResNet pooled features", atol)}


# -- import (--init_from) --------------------------------------------------------------------------------------------
def config_from(hf_cfg: dict[str, Any] | Any) -> ResNetConfig:
    """Our :class:`ResNetConfig` from a ``ResNetConfig`` / ``SelfsupResNetConfig`` (object or config.json dict);
    a clear error for what torchvision's ResNet cannot hold."""
    def get(key: str, default: Any = None) -> Any:
        return hf_cfg.get(key, default) if isinstance(hf_cfg, dict) else getattr(hf_cfg, key, default)

    layer_type, depths = get("layer_type", "bottleneck"), tuple(int(d) for d in get("depths", (3, 4, 6, 3)))
    expansion = 4 if layer_type == "bottleneck" else 1
    expected = [w * expansion for w in (64, 128, 256, 512)]
    problems = [name for name, ok in (
        ("layer_type", layer_type in ("basic", "bottleneck")), ("4 stages", len(depths) == 4),
        (f"hidden_sizes {expected}", list(get("hidden_sizes", [])) == expected),
        ("embedding_size 64", get("embedding_size", 64) == 64),
        ("hidden_act relu", get("hidden_act", "relu") == "relu"),
        ("downsample_in_first_stage False", not get("downsample_in_first_stage", False)),
        ("downsample_in_bottleneck False", not get("downsample_in_bottleneck", False))) if not ok]
    stem = (get("embedding_kernel_size", 7), get("embedding_stride", 2), get("embedding_pooling", True))
    if stem not in ((7, 2, True), (3, 1, False)):
        problems.append("an ImageNet (7x7/2 + max-pool) or CIFAR (3x3/1) stem")
    if problems:
        raise SelfsupError(f"only torchvision-style ResNets import: needs {', '.join(problems)}")
    stored = get("selfsup_resnet") if isinstance(get("selfsup_resnet"), dict) else {}
    named = [d for d, (block, blocks) in DEPTHS.items() if block == layer_type and blocks == depths]
    depth = named[0] if named else (50 if layer_type == "bottleneck" else 18)   # else: that block, other counts
    return ResNetConfig(**{**stored, "depth": stored.get("depth", depth), "layers": depths,
                           "cifar_stem": stem == (3, 1, False), "num_channels": int(get("num_channels", 3))})


def resnet_from_transformers(path_or_model) -> Encoder:
    """Our ResNet :class:`Encoder` (``PixelAdapter`` + :class:`ResNetBackbone`) from a ``ResNetModel`` /
    ``ResNetForImageClassification`` (object, folder or Hub name; no remote code) or a selfsup ResNet export
    (a ``SelfsupResNetModel`` object or its folder: config.json and model.safetensors are read directly, its code
    is not run)."""
    if isinstance(path_or_model, (str, Path)) and _is_own_export(Path(path_or_model)):
        from safetensors.torch import load_file

        folder = Path(path_or_model)
        hf_cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state, where = load_file(str(folder / "model.safetensors")), str(folder)
    else:
        if not isinstance(path_or_model, (str, Path)) and getattr(path_or_model.config, "model_type", "") == MODEL_TYPE:
            model, where = path_or_model, "model"
        else:
            model, where = load_model(path_or_model, "resnet", "ResNetModel",
                                      accepts=lambda n: n in ("ResNetModel", "ResNetForImageClassification"))
        hf_cfg, state = model.config, model.state_dict()
    try:
        cfg = config_from(hf_cfg)
    except (ValueError, TypeError, SelfsupError) as err:
        raise SelfsupError(f"{where}: {err}") from None
    backbone = ResNetBackbone(cfg)
    ours = from_hf_state_dict(state)
    missing, unexpected = backbone.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise SelfsupError(f"{where}: checkpoint does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return Encoder(PixelAdapter(cfg.num_channels, cfg.hidden_size), backbone)


def _is_own_export(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == MODEL_TYPE
    except json.JSONDecodeError:
        raise SelfsupError(f"{config}: not valid JSON") from None


__all__ = ["encoder_to_resnet", "export_resnet", "check_resnet_export", "resnet_from_transformers", "resnet_config",
           "to_hf_state_dict", "from_hf_state_dict", "config_from", "remote_code_classes",
           "MODELING_FILE", "MODEL_TYPE"]
