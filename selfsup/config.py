"""The recipe command line shared by every recipe, named as in the HF example scripts.

A YAML or JSON file given with ``--config`` supplies defaults for any flag; flags on the command line win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from selfsup.errors import SelfsupError


def base_parser(description: str, **defaults: Any) -> argparse.ArgumentParser:
    """The shared flags; a recipe adds its own and may change defaults (``output_dir=...``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML/JSON file whose keys are flag names; flags given here win")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default="outputs/run", help="checkpoints, logs, metrics.json and export/")
    g.add_argument("--model_size", default="small", choices=["tiny", "small", "base"])
    g.add_argument("--max_steps", type=int, default=300, help="optimizer steps")
    g.add_argument("--per_device_train_batch_size", type=int, default=32)
    g.add_argument("--per_device_eval_batch_size", type=int, default=64)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--contrastive_accumulation", action="store_true",
                   help="GradCache: the contrastive loss keeps every negative across the "
                        "--gradient_accumulation_steps micro-batches (CLIP, SigLIP, SimCLR, MoCo v2, DINO without "
                        "batch norm; docs/features.md)")
    g.add_argument("--learning_rate", type=float, default=5e-4)
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.98)
    g.add_argument("--adam_epsilon", type=float, default=1e-6)
    g.add_argument("--lr_scheduler_type", default="cosine", choices=["cosine", "linear", "constant"])
    g.add_argument("--min_learning_rate", type=float, default=None,
                   help="where the cosine / linear decay ends (default 0; recipes/gpt.py: --learning_rate / 10)")
    g.add_argument("--warmup_steps", type=int, default=None, help="default: --warmup_ratio of --max_steps")
    g.add_argument("--warmup_ratio", type=float, default=0.06)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "lars"],
                   help="AdamW (--adam_*), SGD with --momentum, or LARS (You et al., 2017) with --momentum")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD / LARS momentum")
    g.add_argument("--mixed_precision", default=None, choices=["no", "bf16", "fp16"],
                   help="default: what `accelerate config`/`accelerate launch` set, else no")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state over the processes (FSDP2, one unit per "
                        "backbone layer; docs/scaling.md); also on with an accelerate FSDP config")
    g.add_argument("--fsdp_checkpoint", default="sharded", choices=["sharded", "full"],
                   help="FSDP checkpoints: each process's pieces, or the gathered whole files of a plain run "
                        "(either resumes on any number of processes)")
    g.add_argument("--torch_compile", action="store_true", help="compile the backbone(s) in place with torch.compile")
    g.add_argument("--torch_compile_backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--eval_steps", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    g.add_argument("--checkpointing_steps", type=int, default=0, help="checkpoint every N steps (0: never)")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep the last K checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb, all or none")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--init_from", default=None, help="continue pretraining a checkpoint in transformers format")
    d = p.add_argument_group("data")
    d.add_argument("--train_file", nargs="+", default=None, help="one or more data files")
    d.add_argument("--train_dir", default=None, help="a folder of data files")
    d.add_argument("--dataset_name", default=None, help="a Hub dataset name or a local dataset folder")
    d.add_argument("--dataset_config_name", default=None)
    d.add_argument("--validation_file", nargs="+", default=None)
    d.add_argument("--validation_split_percentage", type=float, default=5.0,
                   help="held-out share of the training data when no --validation_file is given")
    d.add_argument("--streaming", action="store_true",
                   help="stream the training data: each process reads only its own shards (files; runs of "
                        "--stream_shard_size files of a folder) and checkpoints keep its position (docs/streaming.md)")
    d.add_argument("--stream_shard_size", type=int, default=1000,
                   help="--streaming a folder of images or audio files: files per shard")
    d.add_argument("--stream_shuffle_chunk", type=int, default=10_000,
                   help="--streaming: records of a shard shuffled together (a buffer that replays on resume)")
    d.add_argument("--max_train_samples", type=int, default=None)
    e = p.add_argument_group("evaluation on labelled data (linear probe and kNN on frozen features)")
    e.add_argument("--eval_train_file", default=None)
    e.add_argument("--eval_test_file", default=None)
    e.add_argument("--random_init_seeds", type=int, default=3,
                   help="random-init encoders (seeds) whose mean probe accuracy is the reference")
    h = p.add_argument_group("hub")
    h.add_argument("--push_to_hub", action="store_true")
    h.add_argument("--hub_model_id", default=None)
    h.add_argument("--hub_private_repo", action="store_true")
    p.set_defaults(**defaults)
    return p


@dataclasses.dataclass
class RecipeSettings:
    """The shared recipe flags of :func:`base_parser` that are not the training loop's (those are
    ``selfsup.train.TrainingSettings``): which model, from where, the seed, the random-init references of the
    probes, where the run writes and pushes, and the data flags every recipe reads (where the training data is).
    A recipe's own settings dataclass extends it (through its modality's, ``recipes/_image.py``'s ``ImageRun`` and
    the like) and is filled with :func:`settings_from`."""

    output_dir: str = "outputs/run"
    train_file: list[str] | None = None
    train_dir: str | None = None
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    max_train_samples: int | None = None
    streaming: bool = False
    stream_shard_size: int = 1000
    stream_shuffle_chunk: int = 10_000
    model_size: str = "small"
    init_from: str | None = None
    seed: int = 42
    gradient_checkpointing: bool = False
    per_device_eval_batch_size: int = 64
    dataloader_num_workers: int = 0
    random_init_seeds: int = 3
    resume_from_checkpoint: str | None = None
    hub_model_id: str | None = None


def settings_from(cls: type, args: Any, **overrides: Any):
    """A settings dataclass ``cls`` filled from the same-named attributes of ``args`` (a parsed command line),
    ``overrides`` winning: what recipe helpers take instead of the namespace."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML or JSON mapping of flag names to values."""
    file = Path(path)
    if not file.is_file():
        raise SelfsupError(f"{path}: config file not found")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error becomes one line
        raise SelfsupError(f"{path}: not valid {'JSON' if file.suffix == '.json' else 'YAML'} ({err})") from None
    if not isinstance(data, dict):
        raise SelfsupError(f"{path}: expected a mapping of flag names to values")
    return data


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               presets: dict[str, dict[str, Any]] | None = None) -> argparse.Namespace:
    """Parse flags. Defaults come, from weakest to strongest, from the parser, the ``--preset NAME`` of
    ``presets`` (a recipe's named settings, flag name -> value), a ``--config FILE``; flags given win."""
    pre, _ = parser.parse_known_args(argv)
    if presets is not None and getattr(pre, "preset", None):
        if pre.preset not in presets:
            raise SelfsupError(f"unknown --preset {pre.preset!r}; choose from {sorted(presets)}")
        known = {a.dest for a in parser._actions}
        if unknown := sorted(set(presets[pre.preset]) - known):
            raise SelfsupError(f"preset {pre.preset}: unknown option(s) {', '.join(unknown)}")
        parser.set_defaults(**presets[pre.preset])
    if pre.config:
        values = load_config_file(pre.config)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SelfsupError(f"{pre.config}: unknown option(s) {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise SelfsupError("--push_to_hub needs --hub_model_id NAME")
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:   # None: the recipe fills it in
            raise SelfsupError(f"--{name} must be at least 1")
    return args
