"""Pretrain a ViT with masked autoencoding (MAE; He et al., 2021) on your own images.

    accelerate launch recipes/mae.py                                    # built-in digits, a minute on CPU
    accelerate launch recipes/mae.py --train_file cifar10/train.parquet --eval_dir cifar10 --max_steps 3000
    python recipes/mae.py --init_from outputs/mae/export --train_dir my_images/

Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/reconstruction.png (original / masked / reconstruction, at every
evaluation; also in tensorboard) and OUTPUT_DIR/export/ (``ViTModel`` + ``ViTImageProcessor``, and the whole MAE
as ``ViTMAEForPreTraining`` in export/pretraining/, with a model card).
"""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_vit import vit_image_processor
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import run_cli
from selfsup.export import write_model_card
from selfsup.modalities.image import reconstruction_grid
from selfsup.modalities.image_views import mae_transform
from selfsup.recipes.builders.masked import mae
from selfsup.objectives.masked.hf_mae import export_mae, mae_from_transformers
from selfsup.objectives.masked.mae import MAEObjective
from selfsup.objectives.masked.sizes import MAE_TRAINING, mae_learning_rate
from selfsup.recipes._image import (EvalImages, ImageRun, add_image_args, image_probe, labelled_images,
                                    load_training_images, patch_readout, picture_pixels, view_loader)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


@dataclass
class MAERun(ImageRun):
    """The MAE recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names."""

    mask_ratio: float = 0.75
    no_norm_pix_loss: bool = False
    base_learning_rate: float = MAE_TRAINING["base_learning_rate"]
    patch_size: int | None = None
    grid_images: int = 8


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/mae", max_steps=200, learning_rate=None,
                    weight_decay=MAE_TRAINING["weight_decay"], adam_beta1=MAE_TRAINING["adam_beta1"],
                    adam_beta2=MAE_TRAINING["adam_beta2"], adam_epsilon=1e-8, warmup_ratio=0.05,
                    per_device_train_batch_size=64, random_init_seeds=1, max_grad_norm=0.0)
    add_image_args(p)
    g = p.add_argument_group("masked autoencoding")
    g.add_argument("--mask_ratio", type=float, default=0.75, help="share of the patches dropped")
    g.add_argument("--no_norm_pix_loss", action="store_true",
                   help="regress raw pixels instead of each patch normalised by its own mean and variance")
    g.add_argument("--base_learning_rate", type=float, default=MAE_TRAINING["base_learning_rate"],
                   help="learning rate per 256 images; --learning_rate (if given) wins")
    g.add_argument("--patch_size", type=int, default=None, help="override the --model_size preset's patch size")
    g.add_argument("--grid_images", type=int, default=8, help="images in the reconstruction picture")
    return p


def build_objective(run: MAERun) -> MAEObjective:
    if run.init_from:
        return mae_from_transformers(run.init_from, mask_ratio=run.mask_ratio, norm_pix_loss=not run.no_norm_pix_loss)
    image = {"image_size": run.image_size, **({"patch_size": run.patch_size} if run.patch_size else {})}
    return mae(run.model_size, image=image, mask_ratio=run.mask_ratio, norm_pix_loss=not run.no_norm_pix_loss)


def make_eval_fn(objective: MAEObjective, grid_pixels: torch.Tensor, fit: EvalImages | None,
                 score: EvalImages | None, run: MAERun, device: torch.device, knn: bool = False):
    """At each evaluation: the reconstruction loss on held-out images (fixed masks), the picture, and (``knn``:
    the monitor of ``--eval_steps``) the kNN."""
    noise = torch.rand(len(grid_pixels), objective.adapter.config.num_patches,
                       generator=torch.Generator().manual_seed(run.seed))
    out_png = Path(run.output_dir) / "reconstruction.png"

    def eval_fn(obj: MAEObjective) -> dict[str, Any]:
        batch = {"pixel_values": grid_pixels.to(device), "noise": noise.to(device)}
        result: dict[str, Any] = {"eval/mae_loss": float(obj.predict(batch)["loss"])}
        pictures = obj.reconstruct(batch)
        grid = reconstruction_grid(pictures["original"], pictures["masked"], pictures["pasted"],
                                   run.image_mean, run.image_std, out_png, max_images=run.grid_images)
        result["images/reconstruction"] = grid.image
        if fit is not None and knn:   # the kNN monitor (the end of the run has the full probe)
            result.update({f"eval/{k}": v for k, v in
                           image_probe({"": obj.encoder()}, fit, score, run, device, linear=False).items()})
        return result

    return eval_fn


def export(objective: MAEObjective, run: MAERun, metrics: dict[str, Any], source: str,
           sample: torch.Tensor) -> Path:
    """OUTPUT_DIR/export: ViTModel + processor (and ViTMAEForPreTraining in pretraining/), reloaded and compared."""
    out = Path(run.output_dir) / "export"
    processor = vit_image_processor(run.image_size, run.image_mean, run.image_std)
    metrics.update(export_mae(objective, out, processor, sample))
    c = objective.adapter.config
    facts = {"objective": "masked autoencoding (MAE)", "images": source, "steps": metrics.get("steps"),
             "model_size": run.model_size if not run.init_from else f"from {run.init_from}",
             "parameters": num_parameters(objective.encoder()), "image_size": c.image_size,
             "patch_size": c.patch_size, "mask_ratio": objective.config.mask_ratio,
             "norm_pix_loss": objective.config.norm_pix_loss}
    usage = f"""from transformers import pipeline
extract = pipeline("image-feature-extraction", model="{run.hub_model_id or out}")
features = extract("image.png")          # (1, 1 + patches, hidden): class token first

from transformers import AutoModelForPreTraining
mae = AutoModelForPreTraining.from_pretrained("{run.hub_model_id or out}", subfolder="pretraining")"""
    write_model_card(out, title=run.hub_model_id or "ViT pretrained with MAE (selfsup)",
                     pipeline_tag="image-feature-extraction",
                     summary=f"A ViT encoder pretrained as a masked autoencoder on {source}.",
                     metrics=metrics, run=facts, usage=usage, tags=("vit", "mae", "image-feature-extraction"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                 # parse
    run = settings_from(MAERun, args)
    patch_readout(run, None)                    # MAE reads whole images: --probe_readout patches stops here
    accelerator = start_run(TrainingSettings.from_args(args), run.seed)
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
    learning_rate = args.learning_rate if args.learning_rate is not None else \
        mae_learning_rate(global_batch, run.base_learning_rate)    # MAE's scaling rule over the global batch
    settings = TrainingSettings.from_args(args, learning_rate=learning_rate)
    images, source = load_training_images(run, accelerator)                                # data
    labelled = labelled_images(run, images)
    fit, score = (None, None) if labelled is None else (EvalImages(labelled[0], run), EvalImages(labelled[1], run))
    if labelled is not None:
        accelerator.print(f"kNN / probe images: {len(fit.labels)} to fit, {len(score.labels)} to score, "
                          f"from {labelled[2]}")
    loader = view_loader(images, [mae_transform(run.image_size, mean=run.image_mean, std=run.image_std)], run,
                         settings.per_device_train_batch_size, accelerator)
    grid_pixels = picture_pixels(score, images, run, run.grid_images)   # across the classes (data often sorted)
    objective = build_objective(run)                                                       # build
    accelerator.print(f"model: {num_parameters(objective.encoder()) / 1e6:.1f}M encoder parameters, "
                      f"{num_parameters(objective) / 1e6:.1f}M in all; learning rate {settings.learning_rate:.3g}")
    trainer = Trainer(objective, loader, settings, accelerator,
                      make_eval_fn(objective, grid_pixels, fit, score, run, accelerator.device,
                                   knn=bool(settings.eval_steps)),
                      run_config={"recipe": "mae", "images": source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        metrics["reconstruction_png"] = str(Path(run.output_dir) / "reconstruction.png")
        if fit is not None:                                                                # evaluate
            fresh = random_init_encoders(build_objective_fresh(objective), run.random_init_seeds, run.seed,
                                         accelerator.device)
            metrics.update(image_probe({"": objective.encoder(), "random_init_": fresh}, fit, score, run,
                                       accelerator.device))
        export_dir = export(objective, run, metrics, source, grid_pixels[:4])             # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


def build_objective_fresh(objective: MAEObjective):
    """A builder of randomly initialised MAEs of ``objective``'s shape (the probes' reference)."""
    from selfsup.objectives.masked.hf_mae import compose_mae

    return lambda: compose_mae(objective.adapter.config, objective.backbone.config, objective.decoder.config,
                               objective.config)


if __name__ == "__main__":
    run_cli(main)
