"""Pretrain an image encoder with a two-view method: SimCLR, MoCo v2/v3, BYOL, SimSiam, SwAV, DINO, VICReg, Barlow Twins.

    accelerate launch recipes/two_view.py --method simclr               # built-in digits, a minute on CPU
    accelerate launch recipes/two_view.py --method byol --train_file cifar10/train.parquet --eval_dir cifar10
    accelerate launch recipes/two_view.py --method dino --backbone vit --preset gpu --train_dir my_images/

``--preset cpu`` (default) trains in minutes on a CPU; ``--preset gpu`` is lightly's CIFAR-10 benchmark setting
(ResNet-18, CIFAR stem, batch 512, 800 epochs), ``--preset imagenet`` the papers' ResNet-50 settings. Any flag
given wins over the preset. Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/: ``ViTModel`` for a ViT,
``ResNetModel`` for a ResNet with the ImageNet stem, selfsup's own ResNet class (saved with its code) for the
CIFAR stem, with an image processor and a model card.
"""
from __future__ import annotations

import json
from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_resnet import export_resnet, resnet_from_transformers
from selfsup.backbones.hf_vit import export_vit_encoder, vit_image_processor, vit_to_encoder
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.modalities.image_views import byol_transforms, multicrop_transforms, simclr_transform
from selfsup.objectives import registry
from selfsup.objectives.two_view.build import two_view
from selfsup.objectives.two_view.presets import CPU_SETTINGS, GPU_SETTINGS, IMAGENET_SETTINGS
from selfsup.objectives.two_view.sizes import RESNETS as TWO_VIEW_RESNETS
from selfsup.recipes._image import (EvalImages, add_image_args, image_probe, knn_monitor, labelled_images,
                                    load_training_images, view_loader)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings
from selfsup.types import Encoder, Objective

ALIASES = registry.ALIASES
METHOD_CHOICES = [m for m in registry.names("two_view") if m in CPU_SETTINGS] + sorted(ALIASES)
PRESETS = {"cpu": CPU_SETTINGS, "gpu": GPU_SETTINGS, "imagenet": IMAGENET_SETTINGS}
# flags the preset fills when they are not given (flag -> preset key)
FROM_PRESET = {"learning_rate": "learning_rate", "weight_decay": "weight_decay", "optimizer": "optimizer",
               "momentum": "momentum", "model_size": "model_size", "backbone": "backbone", "image_size": "image_size"}


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/two_view", random_init_seeds=1, max_grad_norm=0.0,
                    warmup_ratio=0.0)
    add_image_args(p)
    g = p.add_argument_group("two-view method")
    g.add_argument("--method", default="simclr", choices=METHOD_CHOICES, help="moco = moco_v2, barlow = barlow_twins")
    g.add_argument("--backbone", default=None, choices=[*TWO_VIEW_RESNETS, "vit"],
                   help="default: the preset's (resnet_tiny on CPU, resnet18 for lightly's CIFAR-10 setting)")
    g.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="the settings the flags start from")
    g.add_argument("--num_local_views", type=int, default=None, help="SwAV / DINO multi-crop: local views")
    g.add_argument("--local_size", type=int, default=None,
                   help="their size (default: DINO's 96/224 of --image_size, a whole number of patches on a ViT)")
    g.add_argument("--temperature", type=float, default=None, help="the method's loss temperature")
    g.add_argument("--queue_size", type=int, default=None, help="MoCo v2's queue of negatives")
    # None = "the preset's"; base_parser's own defaults would hide whether the flag was given
    p.set_defaults(learning_rate=None, weight_decay=None, optimizer=None, momentum=None, model_size=None,
                   image_size=None, max_steps=None, per_device_train_batch_size=None)
    return p


def apply_preset(args: Namespace, num_images: int, num_processes: int) -> dict[str, Any]:
    """Fill the flags left unset from ``--preset`` (epochs become steps over ``num_images``); returns the preset."""
    args.method = ALIASES.get(args.method, args.method)
    preset = dict(PRESETS[args.preset][args.method])
    for flag, key in FROM_PRESET.items():
        if getattr(args, flag) is None and key in preset:
            setattr(args, flag, preset[key])
    if args.per_device_train_batch_size is None:
        args.per_device_train_batch_size = max(1, preset["batch_size"] // num_processes)
    global_batch = args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps
    steps_per_epoch = max(1, num_images // global_batch)
    if args.max_steps is None:
        args.max_steps = preset.get("max_steps") or preset["epochs"] * steps_per_epoch
    if args.warmup_steps is None:
        args.warmup_steps = preset.get("warmup_steps", preset.get("warmup_epochs", 0) * steps_per_epoch)
    if args.num_local_views is None:
        args.num_local_views = preset.get("num_local_views", 0)
    return preset


def local_view_size(args: Namespace, patch_size: int | None) -> int:
    """``--local_size``, else DINO's 96/224 of ``--image_size``; on a ViT (``patch_size``) rounded to a whole
    number of patches (its positions are interpolated to the smaller grid)."""
    size = args.local_size or max(1, round(args.image_size * 96 / 224))
    if patch_size:
        rounded = max(patch_size, round(size / patch_size) * patch_size)
        if args.local_size and rounded != size:
            raise SelfsupError(f"--local_size {size} is not a multiple of the ViT's patch size {patch_size}")
        size = rounded
    return size


def transforms_for(preset: dict[str, Any], args: Namespace, patch_size: int | None = None) -> list:
    """The views of the method's pipeline (``modalities.image_views``), at ``--image_size`` (multi-crop's local
    views at :func:`local_view_size`)."""
    norm = dict(mean=args.image_mean, std=args.image_std)
    kind = preset.get("transform", "simclr")
    if kind == "byol":
        return byol_transforms(args.image_size, **norm)
    if kind == "multicrop":
        return multicrop_transforms(args.image_size, local_view_size(args, patch_size), num_local=args.num_local_views,
                                    global_scale=tuple(preset.get("global_scale", (0.4, 1.0))), **norm)
    small = args.image_size <= 64   # lightly's CIFAR-10 benchmark: colour jitter at half strength, no blur
    view = simclr_transform(args.image_size, jitter=(0.2, 0.2, 0.2, 0.05) if small else (0.4, 0.4, 0.4, 0.1),
                            blur_p=0.0 if small else 0.5, **norm)
    return [view, view]


def method_overrides(preset: dict[str, Any], args: Namespace) -> dict[str, Any]:
    out = dict(preset.get("objective", {}))
    if args.temperature is not None:
        out["temperature"] = args.temperature
    if args.queue_size is not None:
        out["queue_size"] = args.queue_size
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


def build_objective(args: Namespace, preset: dict[str, Any], encoder: Encoder | None = None) -> Objective:
    backbone = encoder if encoder is not None else args.backbone
    return two_view(args.method, backbone, args.model_size, args.image_size, max_steps=args.max_steps,
                    **method_overrides(preset, args))


def export(objective: Objective, args: Namespace, metrics: dict[str, Any], source: str, sample: torch.Tensor) -> Path:
    """OUTPUT_DIR/export: the encoder as ViTModel / ResNetModel / selfsup's ResNet class, reloaded and compared."""
    out = Path(args.output_dir) / "export"
    encoder = objective.encoder()
    processor = vit_image_processor(args.image_size, args.image_mean, args.image_std)
    is_vit = hasattr(encoder.adapter, "patch_embed")
    figures = (export_vit_encoder(encoder, out, processor, sample) if is_vit
               else export_resnet(encoder, out, processor, sample))
    metrics.update(figures)
    own_code = (out / "config.json").is_file() and \
        json.loads((out / "config.json").read_text(encoding="utf-8")).get("model_type") == "selfsup_resnet"
    run = {"objective": args.method, "images": source, "steps": metrics.get("steps"), "backbone": args.backbone,
           "model_size": args.model_size, "preset": args.preset, "image_size": args.image_size,
           "parameters": num_parameters(encoder), "optimizer": args.optimizer, "learning_rate": args.learning_rate}
    remote = ", trust_remote_code=True" if own_code else ""
    usage = f"""from transformers import pipeline
extract = pipeline("image-feature-extraction", model="{args.hub_model_id or out}"{remote})
features = extract("image.png")"""
    write_model_card(out, title=args.hub_model_id or f"Image encoder pretrained with {args.method} (selfsup)",
                     pipeline_tag="image-feature-extraction",
                     summary=f"A {args.backbone} image encoder pretrained with {args.method} on {source}."
                             + (" The CIFAR stem (3x3 convolution, no max-pool) has no transformers class, so the "
                                "export is selfsup's own ResNet class, saved with its code." if own_code else ""),
                     metrics=metrics, run=run, usage=usage, tags=(args.method, "image-feature-extraction"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                 # parse
    args.method = ALIASES.get(args.method, args.method)
    if args.image_size is None:
        args.image_size = PRESETS[args.preset][args.method].get("image_size", 32)
    probe = TrainingSettings.from_args(args, learning_rate=0.0, max_steps=0, per_device_train_batch_size=1)
    accelerator = start_run(probe, args.seed)
    images, source = load_training_images(args, accelerator)                               # data
    preset = apply_preset(args, len(images), accelerator.num_processes)
    settings = TrainingSettings.from_args(args)
    labelled = labelled_images(args, images)
    fit, score = (None, None) if labelled is None else (EvalImages(labelled[0], args), EvalImages(labelled[1], args))
    encoder = imported_encoder(args.init_from) if args.init_from else None                 # build
    objective = build_objective(args, preset, encoder)
    adapter = objective.encoder().adapter
    views = transforms_for(preset, args, adapter.config.patch_size if hasattr(adapter, "patch_embed") else None)
    loader = view_loader(images, views, args, accelerator)
    accelerator.print(f"{args.method} on {args.backbone}: {len(views)} views of {args.image_size}px"
                      f"{f' ({args.num_local_views} local)' if args.num_local_views else ''}, "
                      f"{args.max_steps} steps of {args.per_device_train_batch_size * accelerator.num_processes} "
                      f"images, {args.optimizer} lr {args.learning_rate:.3g}")
    accelerator.print(f"model: {num_parameters(objective.encoder()) / 1e6:.1f}M encoder parameters")
    eval_fn = None if fit is None or not args.eval_steps else knn_monitor(lambda obj: obj.encoder(), fit, score, args, accelerator.device)
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "two_view", "method": args.method, "images": source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.objective, None
    if accelerator.is_main_process:
        if fit is not None:                                                                # evaluate
            fresh = random_init_encoders(lambda: build_objective(args, preset), args.random_init_seeds, args.seed,
                                         accelerator.device)
            metrics.update(image_probe({"": objective.encoder(), "random_init_": fresh}, fit, score, args,
                                       accelerator.device))
        sample = (score or fit).pixels[:4] if fit is not None else next(iter(loader))["views"][0]["pixel_values"][:4]
        export_dir = export(objective, args, metrics, source, sample)                      # export
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
