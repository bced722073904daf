"""Pretrain a series encoder: PatchTST's masked patch reconstruction (the MAE class) or data2vec, on the shared
Transformer over channel-independent patches.

    accelerate launch recipes/timeseries.py                                          # generated series
    accelerate launch recipes/timeseries.py --train_dir ../shared/data/timeseries/UCR/GunPoint
    accelerate launch recipes/timeseries.py --method data2vec --train_dir ../shared/data/timeseries/UCR/Coffee
    accelerate launch recipes/timeseries.py --train_file series.csv --label_column label

With labels and a test split (UCR), the frozen encoder is scored by a linear probe (logistic regression on the
pooled patch embeddings, channels side by side) beside a randomly initialised encoder and beside 1-NN Euclidean on
the raw series. Writes OUTPUT_DIR/metrics.json, OUTPUT_DIR/reconstruction.png (PatchTST: held-out series with
their masked patches and the reconstruction, in the series' units) and OUTPUT_DIR/export/ (transformers'
``PatchTSTModel``; PatchTST runs also OUTPUT_DIR/export/pretraining/, the whole ``PatchTSTForPretraining``). Data
formats: docs/recipes/timeseries.md.
"""
from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any, Sequence

from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import run_cli
from selfsup.modalities.timeseries.data import collate_series
from selfsup.objectives.masked.hf_patchtst import export_patchtst
from selfsup.recipes._timeseries import (PRESETS, SeriesRun, add_series_args, build_objective, load_series,
                                         probe_figures, readout, reconstruction_picture, series_config,
                                         series_loader, steps_for)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/timeseries", max_steps=200, learning_rate=1e-3,
                    weight_decay=0.0, per_device_train_batch_size=32, warmup_ratio=0.0, max_grad_norm=0.0,
                    lr_scheduler_type="constant", random_init_seeds=1, mixed_precision="no")
    add_series_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv, PRESETS)                                     # parse
    run = settings_from(SeriesRun, args)
    accelerator = start_run(TrainingSettings.from_args(args), run.seed)
    train, test = load_series(run)                                                       # data
    series = series_config(run, train)
    accelerator.print(f"series: {len(train)} for training, {len(test)} for testing, from {train.source} "
                      f"({train.num_channels} channels, {train.min_length}-{train.max_length} steps, "
                      f"{train.num_classes} classes); {series.num_patches} patches of {series.patch_length}")
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    max_steps = steps_for(run, len(train), global_batch, args.max_steps)
    settings = TrainingSettings.from_args(args, max_steps=max_steps)
    objective = build_objective(run, series, max_steps)                                  # build
    build_fresh = lambda: build_objective(run, series, max_steps)                        # noqa: E731
    loader = series_loader(run, train, args.per_device_train_batch_size, accelerator, args.dataloader_num_workers)
    accelerator.print(f"{run.method} on a Transformer: {num_parameters(objective.encoder()) / 1e3:.1f}k encoder "
                      f"parameters, {max_steps} steps of {global_batch} series, lr {args.learning_rate:.3g}")
    trainer = Trainer(objective, loader, settings, accelerator,
                      run_config={"recipe": "timeseries", "method": run.method, "data": train.source})
    metrics = trainer.train()                                                            # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        device = accelerator.device                                                      # evaluate
        fresh = [readout(e, run) for e in random_init_encoders(build_fresh, args.random_init_seeds, run.seed, device)]
        metrics.update(probe_figures({"": readout(objective.encoder(), run), "random_init_": fresh}, train, test,
                                     device, run.probe, run.probe_layers))
        held_out = test if len(test) else train
        picture = reconstruction_picture(objective, held_out, Path(args.output_dir) / "reconstruction.png", device,
                                         title=run.method)
        if picture is not None:
            metrics["reconstruction_png"] = picture.path
        export_dir = Path(args.output_dir) / "export"                                    # export
        sample = collate_series([train[i] for i in range(min(4, len(train)))])
        metrics.update(export_patchtst(objective, export_dir, sample, metrics, run={
            "objective": run.method, "data": train.source, "steps": metrics.get("steps")}))
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
