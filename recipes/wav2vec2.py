"""Pretrain a wav2vec 2.0 speech encoder on raw waveforms (Baevski et al., 2020).

    accelerate launch recipes/wav2vec2.py                        # built-in SYNTHETIC corpus, minutes on CPU
    accelerate launch recipes/wav2vec2.py --train_dir my_audio/ --model_size small --max_steps 5000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (``Wav2Vec2ForPreTraining`` + feature extractor + card).
"""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Sequence


from selfsup.recipes._speech import add_audio_args, export_speech, run_speech_recipe
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args
from selfsup.errors import run_cli
from selfsup.objectives.hf_wav2vec2 import from_transformers, to_transformers
from selfsup.objectives.wav2vec2 import Wav2Vec2Objective, build

OBJECTIVE_FLAGS = ("mask_prob", "mask_length", "num_negatives", "diversity_loss_weight", "feature_penalty_weight",
                   "max_gumbel_temperature", "min_gumbel_temperature", "gumbel_temperature_decay")


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/wav2vec2", max_steps=200, learning_rate=5e-4,
                    per_device_train_batch_size=8, per_device_eval_batch_size=16, warmup_ratio=0.08,
                    validation_split_percentage=10.0)
    add_audio_args(p)
    g = p.add_argument_group("wav2vec 2.0")
    g.add_argument("--stable_layer_norm", action="store_true", help="pre-LN Transformer (wav2vec2-large style)")
    g.add_argument("--mask_prob", type=float, default=0.65)
    g.add_argument("--mask_length", type=int, default=10)
    g.add_argument("--num_negatives", type=int, default=None, help="default: by model size (100 for base)")
    g.add_argument("--diversity_loss_weight", type=float, default=0.1)
    g.add_argument("--feature_penalty_weight", type=float, default=0.0, help="fairseq's features_pen weight")
    g.add_argument("--max_gumbel_temperature", type=float, default=2.0)
    g.add_argument("--min_gumbel_temperature", type=float, default=0.5)
    g.add_argument("--gumbel_temperature_decay", type=float, default=0.999995,
                   help="per step; 0.999995 anneals over ~280k steps as in the paper; lower for short runs")
    g.add_argument("--dropout", type=float, default=0.1,
                   help="every dropout: Transformer, feature projection and the quantizer's input")
    return p


def build_objective(args: Namespace) -> Wav2Vec2Objective:
    settings = {k: getattr(args, k) for k in OBJECTIVE_FLAGS if getattr(args, k) is not None}
    if args.init_from:
        return from_transformers(args.init_from, dropout=args.dropout, **settings)
    backbone = dict(dropout=args.dropout, attention_dropout=args.dropout,
                    gradient_checkpointing=args.gradient_checkpointing)
    return build(args.model_size, stable_layer_norm=args.stable_layer_norm, backbone=backbone,
                 audio={"feat_proj_dropout": args.dropout}, dropout_features=args.dropout, **settings)


def export(objective: Wav2Vec2Objective, args: Namespace, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export: Wav2Vec2ForPreTraining + feature extractor + card, reloaded and checked (1e-4)."""
    objective = objective.float().cpu().eval()
    return export_speech(args, objective, to_transformers(objective), metrics, source, sample, name="wav2vec 2.0",
                         usage_class="Wav2Vec2Model", tags=("wav2vec2", "audio", "speech"),
                         auto_class="AutoModelForPreTraining", base=lambda model: model.wav2vec2,
                         run={"parameters": num_parameters(objective), "mask_length": objective.config.mask_length})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_speech_recipe(parse_args(build_parser(), argv), "wav2vec2", build_objective, export)


if __name__ == "__main__":
    run_cli(main)
