"""Pretrain a wav2vec 2.0 speech encoder on raw waveforms (Baevski et al., 2020).

    accelerate launch recipes/wav2vec2.py                        # built-in SYNTHETIC corpus, minutes on CPU
    accelerate launch recipes/wav2vec2.py --train_dir my_audio/ --model_size small --max_steps 5000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (``Wav2Vec2ForPreTraining`` + feature extractor + card).
"""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from selfsup.backbones.hf_speech import feature_extractor_for
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import run_cli
from selfsup.export import write_model_card
from selfsup.modalities.audio_data import collate_audio
from selfsup.recipes.builders.speech_quantised import wav2vec2
from selfsup.objectives.speech_quantised.hf_wav2vec2 import from_transformers, to_transformers
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective
from selfsup.recipes._speech import (SpeechRun, add_audio_args, apply_training_flags, check_audio_export,
                                     export_sample, load_audio, speech_card, speech_loader, speech_probe)
from selfsup.run import finish_run, held_out_eval, start_run
from selfsup.train import Trainer, TrainingSettings

OBJECTIVE_FLAGS = ("mask_prob", "mask_length", "num_negatives", "diversity_loss_weight", "feature_penalty_weight",
                   "max_gumbel_temperature", "min_gumbel_temperature", "gumbel_temperature_decay")


@dataclass
class Wav2Vec2Run(SpeechRun):
    """The wav2vec 2.0 recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names.
    :data:`OBJECTIVE_FLAGS` go to the objective as given (None: the size's default)."""

    stable_layer_norm: bool = False
    mask_prob: float = 0.65
    mask_length: int = 10
    num_negatives: int | None = None
    diversity_loss_weight: float = 0.1
    feature_penalty_weight: float = 0.0
    max_gumbel_temperature: float = 2.0
    min_gumbel_temperature: float = 0.5
    gumbel_temperature_decay: float = 0.999995
    dropout: float = 0.1


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


def build_objective(run: Wav2Vec2Run) -> Wav2Vec2Objective:
    settings = {k: getattr(run, k) for k in OBJECTIVE_FLAGS if getattr(run, k) is not None}
    if run.init_from:
        return from_transformers(run.init_from, dropout=run.dropout, **settings)
    backbone = dict(dropout=run.dropout, attention_dropout=run.dropout,
                    gradient_checkpointing=run.gradient_checkpointing)
    return wav2vec2(run.model_size, stable_layer_norm=run.stable_layer_norm, backbone=backbone,
                 audio={"feat_proj_dropout": run.dropout}, dropout_features=run.dropout, **settings)


def export(objective: Wav2Vec2Objective, run: Wav2Vec2Run, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export: Wav2Vec2ForPreTraining + feature extractor + card, reloaded and checked (1e-4)."""
    from transformers import AutoModelForPreTraining

    objective, out = objective.float().cpu().eval(), Path(run.output_dir) / "export"
    to_transformers(objective).save_pretrained(str(out))
    feature_extractor_for(objective).save_pretrained(str(out))
    check_audio_export(objective, AutoModelForPreTraining.from_pretrained(str(out)).eval().wav2vec2, sample, metrics)
    write_model_card(out, **speech_card(run, objective, metrics, source, name="wav2vec 2.0",
                                        usage_class="Wav2Vec2ForPreTraining", encoder_of="wav2vec2",
                                        tags=("wav2vec2", "audio", "speech"),
                                        facts={"parameters": num_parameters(objective),
                                               "mask_length": objective.config.mask_length}))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                # parse
    run = settings_from(Wav2Vec2Run, args)
    settings = TrainingSettings.from_args(args)
    accelerator = start_run(settings, run.seed)
    train, val, source = load_audio(run)                                                   # data
    accelerator.print(f"audio: {source}: {len(train)} training clips, {len(val)} held out"
                      + ("" if run.streaming else f", {sum(train.durations) / 3600:.2f} h"))
    objective = build_objective(run)                                                       # build
    apply_training_flags(objective, run, accelerator)
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.1f}M parameters")
    eval_fn = held_out_eval(val, collate_audio, run.per_device_eval_batch_size, run.seed, accelerator.device)
    loader = speech_loader(train, collate_audio, run, settings.per_device_train_batch_size, accelerator)
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "wav2vec2", "audio": source})
    metrics = {**trainer.train(), **train.skipped.as_dict()}                               # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:                                                        # evaluate
        metrics.update(speech_probe(objective, run, lambda: build_objective(run), accelerator.device))
        export_dir = export(objective, run, metrics, source, export_sample(val))           # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
