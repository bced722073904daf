"""Pretrain a speech encoder on raw waveforms: wav2vec 2.0 (Baevski et al., 2020) or CPC (van den Oord et al., 2018).

    accelerate launch recipes/wav2vec2.py                        # built-in SYNTHETIC corpus, minutes on CPU
    accelerate launch recipes/wav2vec2.py --train_dir my_audio/ --model_size small --max_steps 5000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso
    accelerate launch recipes/wav2vec2.py --method cpc --model_size base --max_duration 1.28 --learning_rate 2e-4

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/: for wav2vec 2.0 ``Wav2Vec2ForPreTraining`` + feature
extractor + card; for CPC (the conv encoder and a GRU context, ``recipes/builders/predictive.py``; the paper's
windows are 1.28 s, its Adam rate 2e-4) the encoder's weights (``model.safetensors``, selfsup's names) with its
config and a card. The wav2vec 2.0 flags (masking, negatives, Gumbel) do not apply to CPC.
"""
from __future__ import annotations

import json
from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_speech import feature_extractor_for
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.modalities.audio_data import collate_audio
from selfsup.objectives import registry
from selfsup.recipes.builders.predictive import cpc_speech, speech_encoder
from selfsup.recipes.builders.speech_quantised import wav2vec2
from selfsup.objectives.speech_quantised.hf_wav2vec2 import from_transformers, to_transformers
from selfsup.objectives.predictive.cpc import CPC
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective
from selfsup.recipes._speech import (SpeechRun, add_audio_args, apply_training_flags, check_audio_export,
                                     export_sample, load_audio, speech_card, speech_loader, speech_probe)
from selfsup.run import finish_run, held_out_eval, start_run
from selfsup.train import Trainer, TrainingSettings

METHODS = ("wav2vec2", "cpc")   # the registry's methods this recipe builds on raw waveforms
METHOD_HELP = "; ".join(f"{m} = {registry.get(m).summary}" for m in METHODS).replace("%", "%%")
CPC_FLAGS = ("num_offsets", "context_dim")
OBJECTIVE_FLAGS = ("mask_prob", "mask_length", "num_negatives", "diversity_loss_weight", "feature_penalty_weight",
                   "max_gumbel_temperature", "min_gumbel_temperature", "gumbel_temperature_decay")


@dataclass
class Wav2Vec2Run(SpeechRun):
    """The wav2vec 2.0 recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same names.
    :data:`OBJECTIVE_FLAGS` go to the objective as given (None: the size's default)."""

    method: str = "wav2vec2"
    num_offsets: int | None = None
    context_dim: int | None = None
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
    p.add_argument("--method", default="wav2vec2", choices=METHODS, help=METHOD_HELP)
    g = p.add_argument_group("CPC")
    g.add_argument("--num_offsets", type=int, default=None, help="CPC: K, the steps predicted (default: the "
                   "size's, 12 as in the paper)")
    g.add_argument("--context_dim", type=int, default=None, help="CPC: the GRU's width (default: the size's, 256)")
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


def build_objective(run: Wav2Vec2Run) -> Wav2Vec2Objective | CPC:
    if run.method == "cpc":
        if run.init_from:
            raise SelfsupError("--init_from loads wav2vec 2.0 checkpoints; CPC trains from scratch")
        return cpc_speech(run.model_size, **{k: getattr(run, k) for k in CPC_FLAGS if getattr(run, k) is not None})
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


def export_cpc(objective: CPC, run: Wav2Vec2Run, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export for CPC: the encoder's weights (``model.safetensors``, selfsup's names: the conv encoder
    and its projection; the GRU and predictors are the objective's), ``config.json`` (what
    ``recipes.builders.predictive.speech_encoder`` rebuilds it from) and a card; reloaded into a fresh encoder and
    compared (1e-4)."""
    from safetensors.torch import load_file, save_file

    objective, out = objective.float().cpu().eval(), Path(run.output_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    encoder = objective.encoder()
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(out / "model.safetensors"))
    config = {"model_type": "selfsup_cpc_audio", "model_size": run.model_size,
              "audio": encoder.adapter.config.to_dict(), "hidden_size": encoder.adapter.hidden_size,
              "cpc": objective.config.to_dict()}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    reloaded = speech_encoder(run.model_size, config["audio"])
    reloaded.load_state_dict(load_file(str(out / "model.safetensors")))
    with torch.no_grad():
        ours, padding = encoder(sample)
        theirs, _ = reloaded.eval()(sample)
    real = ~padding if padding is not None else torch.ones(ours.last_hidden_state.shape[:2], dtype=torch.bool)
    metrics["export/max_abs_hidden_diff"] = diff = float((ours.last_hidden_state - theirs.last_hidden_state)[real]
                                                         .abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"export check failed: reloaded latents differ by {diff:.2e}")
    where = run.hub_model_id or out
    usage = f"""from safetensors.torch import load_file
from selfsup.recipes.builders.predictive import speech_encoder
encoder = speech_encoder("{run.model_size}")
encoder.load_state_dict(load_file("{where}/model.safetensors"))
latents, padding = encoder({{"input_values": waveform_16khz[None]}})   # one latent per 10 ms"""
    write_model_card(out, title=run.hub_model_id or "CPC speech encoder pretrained with selfsup",
                     pipeline_tag="feature-extraction", summary=f"A CPC conv encoder pretrained on {source}.",
                     metrics=metrics, usage=usage, tags=("cpc", "audio", "speech"),
                     run={"objective": "cpc", "audio": source, "steps": metrics.get("steps"),
                          "model_size": run.model_size, "parameters": num_parameters(encoder),
                          **objective.config.to_dict()})
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
                      run_config={"recipe": "wav2vec2", "method": run.method, "audio": source})
    metrics = {**trainer.train(), **train.skipped.as_dict()}                               # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:                                                        # evaluate
        metrics.update(speech_probe(objective, run, lambda: build_objective(run), accelerator.device))
        write = export_cpc if run.method == "cpc" else export
        export_dir = write(objective, run, metrics, source, export_sample(val))            # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
