"""Composing two-view objectives: :func:`from_encoder` puts a method's heads of a named size on any encoder (the
graph recipe gives it a GIN, the image recipe a ResNet or a ViT); :func:`image_encoder` and :func:`two_view` compose
the image encoders these methods are benchmarked with. This module and the conversions are the family's only
ones that name concrete parts; the methods themselves see an :class:`Encoder`."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from selfsup.backbones.resnet import ResNetBackbone
from selfsup.backbones.transformer import TransformerEncoder
from selfsup.objectives import registry
from selfsup.objectives.two_view.sizes import SIZES
from selfsup.types import Encoder, Objective


# the families whose objectives can read batch["views"] of one encoder (the recipes keep those with image presets)
VIEW_FAMILIES = ("two_view", "pretext", "predictive", "clustering")


def backbone_kind(backbone: nn.Module) -> str:
    """``"resnet"``, ``"vit"`` (any Transformer) or the backbone class's name in lower case (``"gin"``)."""
    if isinstance(backbone, ResNetBackbone):
        return "resnet"
    if isinstance(backbone, TransformerEncoder):
        return "vit"
    return type(backbone).__name__.lower()


def method_settings(method: str, size: str, kind: str) -> dict[str, Any]:
    """The config fields of ``method`` at ``size`` with what it sets differently on ``kind``: its module's ``SIZES``
    and ``BACKBONE_DEFAULTS`` (``"kind"``, then ``"kind/size"``), read through the registry."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
    entry = registry.get(method)
    on_kind = entry.table("BACKBONE_DEFAULTS")
    return {**entry.table("SIZES").get(size, {}), **on_kind.get(kind, {}), **on_kind.get(f"{kind}/{size}", {})}


def from_encoder(method: str, encoder: Encoder, size: str = "small", max_steps: int = 0, num_examples: int = 0,
                 **overrides: Any) -> Objective:
    """A method of the view families (:data:`VIEW_FAMILIES`: two-view, pretext, ...) of a named size on
    ``encoder``, whatever its modality. ``max_steps``: the length of the run, for the momentum schedules of MoCo,
    BYOL and DINO; ``num_examples``: the size of the training set, for memory banks and cluster assignments (each
    sets the config field of its name when the method has one); ``overrides``: the method's config fields
    (temperature, queue_size, out_dim, num_classes, ...)."""
    entry = registry.get(method)
    if entry.family not in VIEW_FAMILIES:
        raise ValueError(f"{method!r} is not a method on views; choose from {registry.names(*VIEW_FAMILIES)}")
    cls, config_cls = entry.classes()
    settings = method_settings(entry.name, size, backbone_kind(encoder.backbone))
    run_facts = {"max_steps": max_steps, "num_examples": num_examples}   # what a config may need of the run
    settings.update({k: v for k, v in run_facts.items() if k in {f.name for f in fields(config_cls)}})
    return cls(encoder, entry.make_config({**settings, **overrides}))


__all__ = ["VIEW_FAMILIES", "from_encoder", "backbone_kind", "method_settings"]
