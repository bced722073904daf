"""The image presets of the view families (two-view, pretext, predictive, DeepCluster): the bases every method's
settings start from, and the tables the image recipe reads, collected from the methods' own modules.

Each method keeps its settings beside its objective, in its module's ``PRESETS`` (``{method: {preset: settings}}``,
one entry per method the module serves) with ``presets="image"`` on its registry line; :func:`method_presets` and
:func:`preset_table` read them through the registry when they are asked for, so nothing here changes when a method is
added. ``cpu``: a run of minutes on 2 CPU cores; ``gpu``: lightly's CIFAR-10 benchmark; ``imagenet``: lightly's
ImageNet ResNet-50 scripts, and the papers where lightly has none."""
from __future__ import annotations

from typing import Any

from selfsup.objectives import registry

NAMES = ("cpu", "gpu", "imagenet")   # the presets, as --preset takes them
# The bases of the three presets. LIGHTLY_CIFAR (gpu): lightly's CIFAR-10 benchmark (ResNet-18 with the CIFAR
# stem, 32 x 32, SGD momentum 0.9, weight decay 5e-4, lr 0.06 x batch / 128, cosine over the epochs, no warmup; batch
# 512 and 800 epochs, its best table: the kNN accuracies it reports are under "reference_knn"); the methods it lacks
# (MoCo v3, VICReg) take solo-learn's CIFAR-10 settings (scripts/pretrain/cifar/*.yaml: LARS, trust coefficient 0.02,
# lr per 256, 10 warmup epochs of 1000). IMAGENET: lightly's benchmarks/imagenet/resnet50 scripts (and the papers
# where lightly has none), ResNet-50 at 224, 10 warmup epochs of 100. CPU: a run of minutes on 2 CPU cores (a
# 4-block ResNet at 32 x 32, batch 64, lightly's optimizers scaled to the batch). Keys: the run's (optimizer,
# learning_rate for the whole batch, momentum = the optimizer's, adam_beta1 / adam_beta2 (0.9 / 0.999 unless set),
# weight_decay, batch_size global, epochs or max_steps, warmup_*, transform = the modalities.view_pipelines pipeline,
# num_local_views, global_scale, cell_fraction); "objective": config fields of the method to override; "*_epochs" /
# "queue_start_epoch": schedule lengths the recipe turns into steps.
LIGHTLY_CIFAR = dict(backbone="resnet18", model_size="small", image_size=32, batch_size=512, epochs=800,
                     optimizer="sgd", learning_rate=0.06 * 512 / 128, momentum=0.9, weight_decay=5e-4,
                     warmup_epochs=0, schedule="cosine", transform="simclr")
IMAGENET = dict(backbone="resnet50", model_size="base", image_size=224, batch_size=256, epochs=100, warmup_epochs=10,
                schedule="cosine")
CPU = dict(backbone="resnet_tiny", model_size="small", image_size=32, batch_size=64, max_steps=300,
           optimizer="sgd", learning_rate=0.06 * 64 / 128, momentum=0.9, weight_decay=5e-4, warmup_steps=0,
           schedule="cosine", transform="simclr")


def image_methods() -> list[str]:
    """The registry's methods with image presets (``presets="image"``), in registry order; no module is imported."""
    return [m.name for m in registry.METHODS.values() if m.presets == "image"]


def method_presets(method: str) -> dict[str, dict[str, Any]]:
    """``{preset: settings}`` of ``method`` (or an alias), from its module's ``PRESETS``; {} when it has none."""
    return {name: dict(settings) for name, settings in registry.get(method).table("PRESETS").items()}


def preset_table(preset: str) -> dict[str, dict[str, Any]]:
    """``{method: settings}`` of every image method that has ``preset`` (imports each method's module)."""
    if preset not in NAMES:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(NAMES)}")
    tables = {m: method_presets(m) for m in image_methods()}
    return {m: table[preset] for m, table in tables.items() if preset in table}


__all__ = ["NAMES", "LIGHTLY_CIFAR", "IMAGENET", "CPU", "image_methods", "method_presets", "preset_table"]
