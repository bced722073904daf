"""Pretrain a data2vec speech encoder on raw waveforms (Baevski et al., 2022).

    accelerate launch recipes/data2vec.py                        # built-in SYNTHETIC corpus, minutes on CPU
    accelerate launch recipes/data2vec.py --train_dir my_audio/ --model_size small --max_steps 20000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso

The student sees span-masked audio and regresses, at the masked frames, the average of the top-K layers of an
EMA teacher that sees the whole clip (each layer instance-normalised). The teacher and its momentum are saved
in every checkpoint and restored on resume. Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/
(``Data2VecAudioModel`` + feature extractor + card).
"""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Sequence


from selfsup.recipes._speech import add_audio_args, export_speech, run_speech_recipe
from selfsup.config import base_parser, parse_args
from selfsup.errors import run_cli
from selfsup.objectives.hf_data2vec import from_transformers, to_transformers
from selfsup.objectives.data2vec import Data2VecObjective, build

OBJECTIVE_FLAGS = ("mask_prob", "mask_length", "average_top_k_layers", "ema_decay", "ema_end_decay",
                   "ema_anneal_end_step", "loss_beta")


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/data2vec", max_steps=200, learning_rate=5e-4,
                    per_device_train_batch_size=8, per_device_eval_batch_size=16, warmup_ratio=0.08,
                    validation_split_percentage=10.0)
    add_audio_args(p)
    g = p.add_argument_group("data2vec")
    g.add_argument("--mask_prob", type=float, default=0.65)
    g.add_argument("--mask_length", type=int, default=10)
    g.add_argument("--average_top_k_layers", type=int, default=None, help="default: by size (8 for base)")
    g.add_argument("--ema_decay", type=float, default=0.999, help="teacher momentum at step 0")
    g.add_argument("--ema_end_decay", type=float, default=0.9999, help="... rising linearly to this")
    g.add_argument("--ema_anneal_end_step", type=int, default=None, help="... at this step (default: max_steps)")
    g.add_argument("--loss_beta", type=float, default=0.0, help="0: L2; else smooth L1 with this beta")
    g.add_argument("--dropout", type=float, default=0.1)
    return p


def build_objective(args: Namespace) -> Data2VecObjective:
    if args.ema_anneal_end_step is None:
        args.ema_anneal_end_step = args.max_steps
    settings = {k: getattr(args, k) for k in OBJECTIVE_FLAGS if getattr(args, k) is not None}
    if args.init_from:
        return from_transformers(args.init_from, dropout=args.dropout, **settings)
    backbone = dict(dropout=args.dropout, attention_dropout=args.dropout,
                    gradient_checkpointing=args.gradient_checkpointing)
    return build(args.model_size, backbone=backbone, **settings)


def export(objective: Data2VecObjective, args: Namespace, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export: the student as Data2VecAudioModel + feature extractor + card, reloaded and checked."""
    objective = objective.float().cpu().eval()
    return export_speech(args, objective, to_transformers(objective), metrics, source, sample,
                         name="data2vec (audio)", usage_class="Data2VecAudioModel",
                         tags=("data2vec-audio", "audio", "speech"),
                         run={"average_top_k_layers": objective.config.average_top_k_layers})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_speech_recipe(parse_args(build_parser(), argv), "data2vec", build_objective, export)


if __name__ == "__main__":
    run_cli(main)
