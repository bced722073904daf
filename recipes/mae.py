"""Pretrain a ViT with masked autoencoding (MAE; He et al., 2021) on your own images.

    accelerate launch recipes/mae.py                                    # built-in digits, a minute on CPU
    accelerate launch recipes/mae.py --train_file cifar10/train.parquet --eval_dir cifar10 --max_steps 3000
    python recipes/mae.py --init_from outputs/mae/export --train_dir my_images/

Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/reconstruction.png (original / masked / reconstruction, at every
evaluation; also in tensorboard) and OUTPUT_DIR/export/ (``ViTModel`` + ``ViTImageProcessor``, and the whole MAE
as ``ViTMAEForPreTraining`` in export/pretraining/, with a model card).
"""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_vit import vit_image_processor
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args
from selfsup.errors import run_cli
from selfsup.export import write_model_card
from selfsup.modalities.image import reconstruction_grid
from selfsup.modalities.image_views import mae_transform
from selfsup.objectives.masked.build import mae
from selfsup.objectives.masked.hf_mae import export_mae, mae_from_transformers
from selfsup.objectives.masked.mae import MAEObjective
from selfsup.objectives.masked.sizes import MAE_TRAINING, mae_learning_rate
from selfsup.recipes._image import (EvalImages, add_image_args, image_probe, labelled_images, load_training_images,
                                    view_loader)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


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


def build_objective(args: Namespace) -> MAEObjective:
    if args.init_from:
        return mae_from_transformers(args.init_from, mask_ratio=args.mask_ratio,
                                     norm_pix_loss=not args.no_norm_pix_loss)
    image = {"image_size": args.image_size, **({"patch_size": args.patch_size} if args.patch_size else {})}
    return mae(args.model_size, image=image, mask_ratio=args.mask_ratio, norm_pix_loss=not args.no_norm_pix_loss)


def make_eval_fn(objective: MAEObjective, grid_pixels: torch.Tensor, fit: EvalImages | None,
                 score: EvalImages | None, args: Namespace, device: torch.device):
    """At each evaluation: the reconstruction loss on held-out images (fixed masks), the picture, and the kNN."""
    noise = torch.rand(len(grid_pixels), objective.adapter.config.num_patches, generator=torch.Generator().manual_seed(args.seed))
    out_png = Path(args.output_dir) / "reconstruction.png"

    def eval_fn(obj: MAEObjective) -> dict[str, Any]:
        batch = {"pixel_values": grid_pixels.to(device), "noise": noise.to(device)}
        result: dict[str, Any] = {"eval/mae_loss": float(obj.predict(batch)["loss"])}
        pictures = obj.reconstruct(batch)
        grid = reconstruction_grid(pictures["original"], pictures["masked"], pictures["pasted"],
                                   args.image_mean, args.image_std, out_png, max_images=args.grid_images)
        result["images/reconstruction"] = grid.image
        if fit is not None and args.eval_steps:   # the kNN monitor (the end of the run has the full probe)
            result.update({f"eval/{k}": v for k, v in
                           image_probe({"": obj.encoder()}, fit, score, args, device, linear=False).items()})
        return result

    return eval_fn


def export(objective: MAEObjective, args: Namespace, metrics: dict[str, Any], source: str,
           sample: torch.Tensor) -> Path:
    """OUTPUT_DIR/export: ViTModel + processor (and ViTMAEForPreTraining in pretraining/), reloaded and compared."""
    out = Path(args.output_dir) / "export"
    processor = vit_image_processor(args.image_size, args.image_mean, args.image_std)
    metrics.update(export_mae(objective, out, processor, sample))
    c = objective.adapter.config
    run = {"objective": "masked autoencoding (MAE)", "images": source, "steps": metrics.get("steps"),
           "model_size": args.model_size if not args.init_from else f"from {args.init_from}",
           "parameters": num_parameters(objective.encoder()), "image_size": c.image_size, "patch_size": c.patch_size,
           "mask_ratio": objective.config.mask_ratio, "norm_pix_loss": objective.config.norm_pix_loss}
    usage = f"""from transformers import pipeline
extract = pipeline("image-feature-extraction", model="{args.hub_model_id or out}")
features = extract("image.png")          # (1, 1 + patches, hidden): class token first

from transformers import AutoModelForPreTraining
mae = AutoModelForPreTraining.from_pretrained("{args.hub_model_id or out}", subfolder="pretraining")"""
    write_model_card(out, title=args.hub_model_id or "ViT pretrained with MAE (selfsup)",
                     pipeline_tag="image-feature-extraction",
                     summary=f"A ViT encoder pretrained as a masked autoencoder on {source}.",
                     metrics=metrics, run=run, usage=usage, tags=("vit", "mae", "image-feature-extraction"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                 # parse
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    accelerator = start_run(TrainingSettings.from_args(args), args.seed)
    if args.learning_rate is None:   # MAE's scaling rule over the global batch
        args.learning_rate = mae_learning_rate(global_batch * accelerator.num_processes, args.base_learning_rate)
    settings = TrainingSettings.from_args(args)
    images, source = load_training_images(args, accelerator)                               # data
    labelled = labelled_images(args, images)
    fit, score = (None, None) if labelled is None else (EvalImages(labelled[0], args), EvalImages(labelled[1], args))
    if labelled is not None:
        accelerator.print(f"kNN / probe images: {len(fit.labels)} to fit, {len(score.labels)} to score, "
                          f"from {labelled[2]}")
    loader = view_loader(images, [mae_transform(args.image_size, mean=args.image_mean, std=args.image_std)],
                         args, accelerator)
    if score is not None:   # spread over the held-out images (often sorted by class)
        spread = torch.linspace(0, len(score.pixels) - 1, min(args.grid_images, len(score.pixels))).long()
        grid_pixels = score.pixels[spread]
    else:
        grid_pixels = next(iter(loader))["pixel_values"][:args.grid_images]
    objective = build_objective(args)                                                      # build
    accelerator.print(f"model: {num_parameters(objective.encoder()) / 1e6:.1f}M encoder parameters, "
                      f"{num_parameters(objective) / 1e6:.1f}M in all; learning rate {args.learning_rate:.3g}")
    trainer = Trainer(objective, loader, settings, accelerator,
                      make_eval_fn(objective, grid_pixels, fit, score, args, accelerator.device),
                      run_config={"recipe": "mae", "images": source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.objective, None
    if accelerator.is_main_process:
        metrics["reconstruction_png"] = str(Path(args.output_dir) / "reconstruction.png")
        if fit is not None:                                                                # evaluate
            fresh = random_init_encoders(build_objective_fresh(objective), args.random_init_seeds, args.seed,
                                         accelerator.device)
            metrics.update(image_probe({"": objective.encoder(), "random_init_": fresh}, fit, score, args,
                                       accelerator.device))
        export_dir = export(objective, args, metrics, source, grid_pixels[:4])            # export
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


def build_objective_fresh(objective: MAEObjective):
    """A builder of randomly initialised MAEs of ``objective``'s shape (the probes' reference)."""
    from selfsup.objectives.masked.build import compose_mae

    return lambda: compose_mae(objective.adapter.config, objective.backbone.config, objective.decoder.config,
                               objective.config)


if __name__ == "__main__":
    run_cli(main)
