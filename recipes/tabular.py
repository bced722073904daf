"""Pretrain a table encoder: masked feature modelling, SCARF (or any two-view method) or data2vec, on a Transformer
over the column tokens (FT-Transformer style), or SCARF's MLP on them (``--backbone mlp``, two-view methods).

    accelerate launch recipes/tabular.py                                  # masked features, scikit-learn's breast cancer
    accelerate launch recipes/tabular.py --method scarf --dataset_name wine
    accelerate launch recipes/tabular.py --method scarf --backbone mlp    # SCARF's encoder: 4 ReLU layers of 256
    accelerate launch recipes/tabular.py --train_file ../shared/data/tabular/adult/train.csv \\
        --validation_file ../shared/data/tabular/adult/test.csv --label_column 14 --strip_label_suffix .

Every training row is pretrained on (the label column is never a feature); then a logistic regression on the
frozen [CLS] embeddings is fitted on the labelled training rows and scored on the test rows (``--validation_file``,
else a seeded ``--validation_split_percentage`` of the rows held out before the schema is fitted), beside randomly
initialised encoders and the one-hot raw features. Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (selfsup's
own transformers model and its processor, with the schema and scalers fitted on the training split, loadable with
``AutoModel`` / ``AutoFeatureExtractor.from_pretrained(DIR, trust_remote_code=True)`` without selfsup). Data
formats: docs/recipes/tabular.md.
"""
from __future__ import annotations

from argparse import ArgumentParser
from pathlib import Path
from typing import Any, Sequence

from selfsup.backbones.hf_tabular import export_tabular
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import run_cli
from selfsup.recipes._tabular import (TabularRun, add_tabular_args, build_objective, describe, load_tables,
                                      pooled_encoder, probe_figures, steps_for, table_loader)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/tabular", max_steps=200, learning_rate=1e-3,
                    weight_decay=1e-5, per_device_train_batch_size=128, warmup_ratio=0.05,
                    validation_split_percentage=20.0, random_init_seeds=1, mixed_precision="no")
    add_tabular_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                              # parse
    run = settings_from(TabularRun, args)
    accelerator = start_run(TrainingSettings.from_args(args), run.seed)
    data = load_tables(run)                                                              # data
    accelerator.print(describe(data))
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    max_steps = steps_for(run, len(data.train), global_batch, args.max_steps)
    settings = TrainingSettings.from_args(args, max_steps=max_steps)
    objective = build_objective(run, data.schema, max_steps)                             # build
    build_fresh = lambda: build_objective(run, data.schema, max_steps)                   # noqa: E731
    loader = table_loader(run, data.train, args.per_device_train_batch_size, accelerator, args.dataloader_num_workers)
    accelerator.print(f"{run.method}: {num_parameters(objective.encoder()) / 1e3:.1f}k encoder parameters, "
                      f"{max_steps} steps of {global_batch} rows, lr {args.learning_rate:.3g}")
    trainer = Trainer(objective, loader, settings, accelerator,
                      run_config={"recipe": "tabular", "method": run.method, "data": data.source})
    metrics = trainer.train()                                                            # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        device = accelerator.device                                                      # evaluate
        fresh = [pooled_encoder(e) for e in random_init_encoders(build_fresh, args.random_init_seeds, run.seed, device)]
        encoder = pooled_encoder(objective.encoder())
        metrics.update(probe_figures({"": encoder, "random_init_": fresh}, data, run, device))
        export_dir = Path(args.output_dir) / "export"                                    # export
        metrics.update(export_tabular(encoder, data.schema, export_dir, data.sample, metrics, run={
            "objective": run.method, "data": data.source, "steps": metrics.get("steps")}))
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
