"""Pretrain an image encoder from views: two-view methods (SimCLR, MoCo v1/v2/v3, BYOL, SimSiam, SwAV, DINO, VICReg, Barlow Twins, instance discrimination, CMC), the pretext tasks (rotation prediction, jigsaw puzzles, relative patch position, colorization, inpainting), the predictive methods (CPC, Deep InfoMax) and DeepCluster.

    accelerate launch recipes/two_view.py --method simclr               # built-in digits, a minute on CPU
    accelerate launch recipes/two_view.py --method byol --train_file cifar10/train.parquet --eval_dir cifar10
    accelerate launch recipes/two_view.py --method dino --backbone vit --preset gpu --train_dir my_images/
    accelerate launch recipes/two_view.py --method rotation --rotations 8          # RotNet, 8 rotations
    accelerate launch recipes/two_view.py --method jigsaw --jigsaw_permutations 1000

``--preset cpu`` (default) trains in minutes on a CPU; ``--preset gpu`` is lightly's CIFAR-10 benchmark setting
(ResNet-18, CIFAR stem, batch 512, 800 epochs), ``--preset imagenet`` the papers' ResNet-50 settings. Any flag
given wins over the preset. Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/: ``ViTModel`` for a ViT,
``ResNetModel`` for a ResNet with the ImageNet stem, selfsup's own ResNet class (saved with its code) for the
CIFAR stem, with an image processor and a model card.
"""
from __future__ import annotations

import ast
import json
from argparse import ArgumentParser
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_resnet import export_resnet, resnet_from_transformers
from selfsup.backbones.hf_vit import export_vit_encoder, vit_image_processor, vit_to_encoder
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.modalities.image_views import ROTATION_SETS
from selfsup.modalities.view_pipelines import ViewOptions, ViewPipeline, view_pipeline
from selfsup.objectives import registry
from selfsup.recipes.builders.two_view import two_view
from selfsup.objectives.two_view.build import VIEW_FAMILIES
from selfsup.objectives.two_view import presets as image_presets
from selfsup.objectives.two_view.sizes import RESNETS as TWO_VIEW_RESNETS
from selfsup.recipes._image import (EvalImages, ImageRun, add_image_args, epoch_images, image_probe, knn_monitor,
                                    labelled_images, load_training_images, patch_readout, pretext_picture,
                                    view_loader)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings
from selfsup.types import Encoder, Objective


def methods() -> list[str]:
    """The registry's view-family methods with image presets (``presets="image"`` on their line), read when asked
    for, so a method registered at any time is listed."""
    return [m for m in image_presets.image_methods() if registry.get(m).family in VIEW_FAMILIES]


def aliases() -> dict[str, str]:
    """The registry's aliases of those methods (``moco`` -> ``moco_v2``)."""
    return {alias: name for alias, name in registry.ALIASES.items() if name in methods()}


def method_help() -> str:
    """``--method``'s help: one line per method, then the aliases; no method's module is imported."""
    return ("; ".join(f"{m} = {registry.get(m).summary}" for m in methods()) + "; aliases: " + ", ".join(
        f"{alias} = {name}" for alias, name in sorted(aliases().items()))).replace("%", "%%")   # argparse formats help


# training flags the preset fills when they are not given (the run's own: TwoViewRun)
TRAINING_FROM_PRESET = ("learning_rate", "weight_decay", "optimizer", "momentum")
# and the Adam betas, the engine's defaults when the preset has none (colorization's preset sets beta2 0.99,
# inpainting's beta1 0.5)
ADAM_FROM_PRESET = {"adam_beta1": TrainingSettings.adam_beta1, "adam_beta2": TrainingSettings.adam_beta2}


@dataclass
class TwoViewRun(ImageRun):
    """The two-view recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names.
    An alias names its method (``moco`` -> ``moco_v2``); what the flags leave unset (None) comes from ``--preset``:
    the backbone, model size, image size and local views."""

    method: str = "simclr"
    preset: str = "cpu"
    backbone: str | None = None
    model_size: str | None = None
    image_size: int | None = None
    num_local_views: int | None = None
    local_size: int | None = None
    temperature: float | None = None
    queue_size: int | None = None
    adversarial_weight: float | None = None
    estimator: str | None = None
    objective: list[str] | None = None
    rotations: str = "4"
    jigsaw_permutations: int = 100
    cell_fraction: float | None = None

    def __post_init__(self) -> None:
        self.method = aliases().get(self.method, self.method)
        table = image_presets.method_presets(self.method) if self.method in methods() else {}
        if self.preset not in table:
            have = [name for name in image_presets.NAMES if name in table]
            raise SelfsupError(f"--preset {self.preset} has no settings for {self.method}; choose from {have}")
        if self.cell_fraction is not None and not 0 < self.cell_fraction <= 1:
            raise SelfsupError(f"--cell_fraction is a fraction of a grid cell in (0, 1], got {self.cell_fraction}")
        preset = self.preset_settings
        for name in ("backbone", "model_size", "image_size"):
            if getattr(self, name) is None:
                setattr(self, name, preset.get(name, 32 if name == "image_size" else None))
        if self.num_local_views is None:
            self.num_local_views = preset.get("num_local_views", 0)

    @property
    def preset_settings(self) -> dict[str, Any]:
        """The method's settings in ``--preset`` (its module's ``PRESETS``, on the bases of
        ``objectives/two_view/presets.py``)."""
        return image_presets.method_presets(self.method)[self.preset]


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/two_view", random_init_seeds=1, max_grad_norm=0.0,
                    warmup_ratio=0.0)
    add_image_args(p)
    g = p.add_argument_group("two-view method")
    g.add_argument("--method", default="simclr", choices=methods() + sorted(aliases()), help=method_help())
    g.add_argument("--backbone", default=None, choices=[*TWO_VIEW_RESNETS, "vit"],
                   help="default: the preset's (resnet_tiny on CPU, resnet18 for lightly's CIFAR-10 setting)")
    g.add_argument("--preset", default="cpu", choices=list(image_presets.NAMES),
                   help="the settings the flags start from")
    g.add_argument("--num_local_views", type=int, default=None, help="SwAV / DINO multi-crop: local views")
    g.add_argument("--local_size", type=int, default=None,
                   help="their size (default: DINO's 96/224 of --image_size, a whole number of patches on a ViT)")
    g.add_argument("--temperature", type=float, default=None, help="the method's loss temperature")
    g.add_argument("--queue_size", type=int, default=None, help="MoCo v2's queue of negatives")
    g.add_argument("--adversarial_weight", type=float, default=None,
                   help="inpainting: the adversarial loss's weight (the paper's 0.001; 0: no discriminator, L2 alone)")
    g.add_argument("--estimator", default=None, choices=["jsd", "infonce"],
                   help="Deep InfoMax: the mutual-information estimator (default: the preset's, jsd)")
    g.add_argument("--objective", nargs="+", default=None, metavar="KEY=VALUE",
                   help="any config field of the method, e.g. --objective head_norm=all bank_momentum=0.9 (values "
                        "read as Python literals: numbers, True/False, None, quoted or bare strings); wins over the "
                        "preset and the flags above")
    g.add_argument("--rotations", default="4", choices=sorted(ROTATION_SETS),
                   help="rotation: the set of angles, 4 (0/90/180/270), 8 (every 45), 0_180 or 90_270")
    g.add_argument("--jigsaw_permutations", type=int, default=100,
                   help="jigsaw: the permutations of the 3 x 3 tiles (chosen far apart in Hamming distance)")
    g.add_argument("--cell_fraction", "--relative_patch", dest="cell_fraction", type=float, default=None,
                   help="jigsaw and relative_position: the side of a tile / patch as a fraction of its grid cell, the "
                        "rest the gap and jitter (default: the preset's, the CPU presets' 0.7 jigsaw and 0.9 relative "
                        "position; else the paper's: 64/75 jigsaw, 2/3 relative position)")
    # None = "the preset's"; base_parser's own defaults would hide whether the flag was given
    p.set_defaults(learning_rate=None, weight_decay=None, optimizer=None, momentum=None, model_size=None,
                   image_size=None, max_steps=None, per_device_train_batch_size=None, adam_beta1=None, adam_beta2=None)
    return p


def preset_training(settings: TrainingSettings, run: TwoViewRun, num_images: int,
                    num_processes: int) -> TrainingSettings:
    """``settings`` with what the flags left unset (None) from ``--preset``: optimizer, learning rate, momentum,
    weight decay, Adam's betas, the per-device batch (the preset's global batch over ``num_processes``), and the steps
    and warmup (the preset's epochs as steps over ``num_images``)."""
    preset = run.preset_settings
    filled = {k: preset[k] for k in TRAINING_FROM_PRESET if getattr(settings, k) is None and k in preset}
    filled.update({k: preset.get(k, default) for k, default in ADAM_FROM_PRESET.items() if getattr(settings, k) is None})
    batch = settings.per_device_train_batch_size
    if batch is None:
        batch = max(1, preset["batch_size"] // num_processes)
    steps_per_epoch = max(1, num_images // (batch * num_processes * settings.gradient_accumulation_steps))
    max_steps, warmup_steps = settings.max_steps, settings.warmup_steps
    if max_steps is None:
        max_steps = preset.get("max_steps") or preset["epochs"] * steps_per_epoch
    if warmup_steps is None:
        warmup_steps = preset.get("warmup_steps", preset.get("warmup_epochs", 0) * steps_per_epoch)
    return replace(settings, **filled, per_device_train_batch_size=batch, max_steps=max_steps,
                   warmup_steps=warmup_steps)


def view_options(run: TwoViewRun, patch_size: int | None = None) -> ViewOptions:
    """The flags every view pipeline reads (``modalities/view_pipelines.py``); ``patch_size``: a ViT's."""
    return ViewOptions(image_size=run.image_size, mean=run.image_mean, std=run.image_std, patch_size=patch_size,
                       rotations=run.rotations, jigsaw_permutations=run.jigsaw_permutations,
                       num_local_views=run.num_local_views, local_size=run.local_size,
                       global_scale=tuple(run.preset_settings.get("global_scale", (0.4, 1.0))),
                       cell_fraction=(run.cell_fraction if run.cell_fraction is not None
                                      else run.preset_settings.get("cell_fraction")))


def pipeline_for(run: TwoViewRun, patch_size: int | None = None) -> ViewPipeline:
    """The method's views: the pipeline its preset names (``"transform"``, SimCLR's by default)."""
    try:
        return view_pipeline(run.preset_settings.get("transform", "simclr"), view_options(run, patch_size))
    except ValueError as e:
        raise SelfsupError(str(e)) from e


def method_overrides(run: TwoViewRun) -> dict[str, Any]:
    """The method's config fields the preset, its views and the flags set (``--temperature``, ``--queue_size``,
    ``--estimator``, ``--adversarial_weight``)."""
    out = {**run.preset_settings.get("objective", {}), **pipeline_for(run).objective}
    if run.temperature is not None:
        out["temperature"] = run.temperature
    if run.queue_size is not None:
        out["queue_size"] = run.queue_size
    if run.adversarial_weight is not None:
        out["adversarial_weight"] = run.adversarial_weight
    if run.estimator is not None:
        out["estimator"] = run.estimator
    views = pipeline_for(run).objective
    given = objective_settings(run.objective or [])
    for key, value in given.items():
        if key in views and value != views[key]:
            raise SelfsupError(f"--objective {key}={value!r}: the {run.method} views set {key} to {views[key]!r} (it "
                               "describes the data, so changing it here would not change the views)")
    out.update(given)
    return out


def objective_settings(pairs: list[str]) -> dict[str, Any]:
    """``--objective KEY=VALUE ...`` as config fields: each value a Python literal (``0.2``, ``True``, ``(4, 4)``)
    or, when it is none, the string itself (``all``); the method's config names unknown keys."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SelfsupError(f"--objective takes KEY=VALUE pairs, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def imported_encoder(path: str) -> Encoder:
    """``--init_from``: a ViTModel or a ResNet export (ResNetModel or selfsup's own class)."""
    config = Path(path) / "config.json"
    kind = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    if kind == "vit":
        return vit_to_encoder(path)
    if kind in ("resnet", "selfsup_resnet"):
        return resnet_from_transformers(path)
    raise SelfsupError(f"{path}: --init_from takes a ViTModel or ResNet export (model_type {kind!r})")


def build_objective(run: TwoViewRun, max_steps: int, num_examples: int, encoder: Encoder | None = None) -> Objective:
    backbone = encoder if encoder is not None else run.backbone
    return two_view(run.method, backbone, run.model_size, run.image_size, max_steps=max_steps,
                    num_examples=num_examples, **method_overrides(run))


def export_one(encoder: Encoder, out: Path, processor, sample: torch.Tensor) -> dict[str, float]:
    """One encoder as ViTModel / ResNetModel / selfsup's ResNet class in ``out``, reloaded and compared."""
    if hasattr(encoder.adapter, "patch_embed"):
        return export_vit_encoder(encoder, out, processor, sample)
    return export_resnet(encoder, out, processor, sample)


def export(objective: Objective, run: TwoViewRun, settings: TrainingSettings, metrics: dict[str, Any], source: str,
           sample: torch.Tensor, part_samples: Sequence[torch.Tensor] | None = None) -> Path:
    """OUTPUT_DIR/export: the encoder as ViTModel / ResNetModel / selfsup's ResNet class, reloaded and compared.
    An encoder per view of its own kind (CMC's L and ab: ``encoder().parts``) is exported part by part, each in
    the folder of its name, checked on its view of the sample (``part_samples``); its input is its view, not the RGB
    image, so no image processor is saved beside it."""
    out = Path(run.output_dir) / "export"
    encoder = objective.encoder()
    processor = vit_image_processor(run.image_size, run.image_mean, run.image_std)
    parts = getattr(encoder, "parts", None)
    if parts:
        views = list(part_samples) if part_samples is not None else [sample] * len(parts)
        figures: dict[str, float] = {}
        for (name, part), pixels in zip(parts.items(), views):
            for k, v in export_one(part, out / name, None, pixels).items():
                figures[k] = max(v, figures.get(k, v))
    else:
        figures = export_one(encoder, out, processor, sample)
    metrics.update(figures)
    config = out / next(iter(parts)) / "config.json" if parts else out / "config.json"
    own_code = config.is_file() and \
        json.loads(config.read_text(encoding="utf-8")).get("model_type") == "selfsup_resnet"
    facts = {"objective": run.method, "images": source, "steps": metrics.get("steps"), "backbone": run.backbone,
             "model_size": run.model_size, "preset": run.preset, "image_size": run.image_size,
             "parameters": num_parameters(encoder), "optimizer": settings.optimizer,
             "learning_rate": settings.learning_rate}
    remote = ", trust_remote_code=True" if own_code else ""
    usage = f"""from transformers import pipeline
extract = pipeline("image-feature-extraction", model="{run.hub_model_id or out}"{remote})
features = extract("image.png")"""
    if parts:
        names = list(parts)
        usage = f"""import torch
from transformers import AutoModel
from selfsup.modalities.image_views import lab_views   # CMC's views of (B, 3, H, W) sRGB in [0, 1]
parts = {{name: AutoModel.from_pretrained(f"{run.hub_model_id or out}/{{name}}"{remote}) for name in {names}}}
views = lab_views(rgb)                                  # one view per part, in this order
features = torch.cat([parts[n](pixel_values=v).pooler_output.flatten(1) for n, v in zip({names}, views)], 1)"""
    write_model_card(out, title=run.hub_model_id or f"Image encoder pretrained with {run.method} (selfsup)",
                     pipeline_tag="image-feature-extraction",
                     summary=f"A {run.backbone} image encoder pretrained with {run.method} on {source}."
                             + (f" One encoder per view ({', '.join(parts)}), each in the folder of its name; an "
                                "image's feature is their pooled features concatenated." if parts else "")
                             + (" The CIFAR stem (3x3 convolution, no max-pool) has no transformers class, so the "
                                "export is selfsup's own ResNet class, saved with its code." if own_code else ""),
                     metrics=metrics, run=facts, usage=usage, tags=(run.method, "image-feature-extraction"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                 # parse
    run = settings_from(TwoViewRun, args)
    accelerator = start_run(TrainingSettings.from_args(args), run.seed)
    images, source = load_training_images(run, accelerator)                                # data
    settings = preset_training(TrainingSettings.from_args(args), run, len(images), accelerator.num_processes)
    labelled = labelled_images(run, images)
    fit, score = (None, None) if labelled is None else (EvalImages(labelled[0], run), EvalImages(labelled[1], run))
    encoder = imported_encoder(run.init_from) if run.init_from else None                   # build
    objective = build_objective(run, settings.max_steps, len(images), encoder)
    adapter = objective.encoder().adapter
    pipeline = pipeline_for(run, adapter.config.patch_size if hasattr(adapter, "patch_embed") else None)
    views, readout = pipeline.transforms, patch_readout(run, pipeline)
    if pipeline.eval_views is not None and fit is not None:     # an encoder per view: the probes read views
        fit.views = score.views = pipeline.eval_views
    loader = view_loader(images, views, run, settings.per_device_train_batch_size, accelerator,
                         shared_draws=pipeline.shared_draws)
    global_batch = settings.per_device_train_batch_size * accelerator.num_processes
    accelerator.print(f"{run.method} on {run.backbone}: {len(views)} views of {run.image_size}px"
                      f"{f' ({run.num_local_views} local)' if run.num_local_views else ''}, "
                      f"{settings.max_steps} steps of {global_batch} images, {settings.optimizer} "
                      f"lr {settings.learning_rate:.3g}")
    accelerator.print(f"model: {num_parameters(objective.encoder()) / 1e6:.1f}M encoder parameters")
    monitors = [] if fit is None or not settings.eval_steps else [
        knn_monitor(lambda obj: obj.encoder(), fit, score, run, accelerator.device, readout)]
    if pipeline.render is not None and hasattr(objective, "pretext_predictions"):   # colours, a masked region
        monitors.append(pretext_picture(pipeline.render, views, images, run, accelerator.device,
                                        pipeline.shared_draws, path=Path(run.output_dir) / "pretext.png"))
    eval_fn = None if not monitors else lambda obj: {k: v for m in monitors for k, v in m(obj).items()}
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "two_view", "method": run.method, "images": source},
                      epoch_data=epoch_images(images, run, run.per_device_eval_batch_size, accelerator))
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        if fit is not None:                                                                # evaluate
            fresh = random_init_encoders(lambda: build_objective(run, settings.max_steps, len(images)),
                                         run.random_init_seeds, run.seed, accelerator.device)
            metrics.update(image_probe({"": objective.encoder(), "random_init_": fresh}, fit, score, run,
                                       accelerator.device, readout=readout))
        if fit is not None:
            sample = (score or fit).pixels[:4]
            part_samples = pipeline.eval_views(sample) if pipeline.eval_views is not None else None
        else:
            first = next(iter(loader))["views"]
            sample, part_samples = first[0]["pixel_values"][:4], [v["pixel_values"][:4] for v in first]
        export_dir = export(objective, run, settings, metrics, source, sample, part_samples)            # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
