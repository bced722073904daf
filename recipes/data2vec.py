"""Pretrain a data2vec encoder on raw audio or on text (Baevski et al., 2022): one objective, two modalities.

    accelerate launch recipes/data2vec.py                        # audio: built-in SYNTHETIC corpus, minutes on CPU
    accelerate launch recipes/data2vec.py --train_dir my_audio/ --model_size small --max_steps 20000 \\
        --eval_dir ../shared/data/speech/fsdd --eval_split loso
    accelerate launch recipes/data2vec.py --modality text        # text: built-in corpus (pydoc_data.topics)
    accelerate launch recipes/data2vec.py --modality text --train_file corpus.txt \\
        --eval_train_file ../shared/data/text/sst2/train.txt --eval_test_file ../shared/data/text/sst2/test.txt

The student sees masked input (audio: spans of frames replaced by a learned embedding; text: spans of tokens
replaced by [MASK]) and regresses, at the masked positions, the average of the top-K layers of an EMA teacher
that sees the whole input. The teacher and its momentum are saved in every checkpoint and restored on resume.
Defaults are fairseq's for each modality (audio: base_librispeech; text: data2vec text base). Writes
OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (``Data2VecAudioModel`` + feature extractor, or
``Data2VecTextModel`` + tokenizer; a model card).
"""
from __future__ import annotations

import argparse
from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.hf_speech import feature_extractor_for
from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.convert import check_close, max_abs_diff
from selfsup.errors import run_cli
from selfsup.export import write_model_card
from selfsup.modalities.audio_data import collate_audio
from selfsup.modalities.text import collate_blocks
from selfsup.recipes.builders.masked import data2vec_audio, data2vec_text
from selfsup.objectives.masked.data2vec import Data2VecObjective
from selfsup.recipes._speech import (SpeechRun, add_audio_args, apply_training_flags, check_audio_export,
                                     export_sample, load_audio, speech_card, speech_loader, speech_probe)
from selfsup.recipes._text import (TextRun, add_text_args, block_sample, get_tokenizer, load_text, text_blocks,
                                   text_probe)
from selfsup.run import finish_run, held_out_eval, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings

OBJECTIVE_FLAGS = ("average_top_k_layers", "ema_decay", "ema_end_decay", "ema_anneal_end_step", "loss_beta")
DEFAULTS = {  # per modality: fairseq's objective settings, and run sizes for a CPU
    "audio": dict(output_dir="outputs/data2vec", max_steps=200, per_device_train_batch_size=8,
                  per_device_eval_batch_size=16, warmup_ratio=0.08, validation_split_percentage=10.0,
                  mask_prob=0.65, mask_length=10, loss_beta=0.0),
    "text": dict(output_dir="outputs/data2vec_text", max_steps=120, per_device_train_batch_size=32,
                 per_device_eval_batch_size=64, warmup_ratio=0.06, validation_split_percentage=5.0,
                 mask_prob=0.35, mask_length=4, loss_beta=4.0),
}


@dataclass
class Data2VecRun(SpeechRun, TextRun):
    """The data2vec recipe's own settings (the engine's are ``TrainingSettings``), on audio or on text (the
    speech or the text recipes' shared settings, whichever ``--modality`` parsed); the flags of the same names.
    :data:`OBJECTIVE_FLAGS` go to the objective as given (None: the size's default; the EMA anneals over the run
    when ``--ema_anneal_end_step`` is not given: :meth:`objective_settings`)."""

    modality: str = "audio"
    mask_prob: float = 0.65
    mask_length: int = 10
    average_top_k_layers: int | None = None
    ema_decay: float = 0.999
    ema_end_decay: float = 0.9999
    ema_anneal_end_step: int | None = None
    loss_beta: float = 0.0
    dropout: float = 0.1

    def objective_settings(self, max_steps: int) -> dict[str, Any]:
        """The objective's settings given on the command line; the EMA anneals until ``max_steps`` unless
        ``--ema_anneal_end_step`` says otherwise."""
        given = {k: getattr(self, k) for k in OBJECTIVE_FLAGS if getattr(self, k) is not None}
        return {"ema_anneal_end_step": max_steps, **given}


def build_parser(modality: str = "audio") -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], learning_rate=5e-4, **{k: v for k, v in DEFAULTS[modality].items()
                                                                     if k not in ("mask_prob", "mask_length",
                                                                                  "loss_beta")})
    p.add_argument("--modality", choices=sorted(DEFAULTS), default="audio",
                   help="audio (raw waveforms) or text (a corpus, tokenized and packed as recipes/bert_mlm.py)")
    (add_audio_args if modality == "audio" else add_text_args)(p)
    g = p.add_argument_group("data2vec")
    d = DEFAULTS[modality]
    g.add_argument("--mask_prob", type=float, default=d["mask_prob"],
                   help="audio: span-start rate of the frames; text: share of tokens masked")
    g.add_argument("--mask_length", type=int, default=d["mask_length"], help="frames / tokens per masked span")
    g.add_argument("--average_top_k_layers", type=int, default=None,
                   help="default: by size (audio base 8 of 12, text base 10 of 12)")
    g.add_argument("--ema_decay", type=float, default=0.999, help="teacher momentum at step 0")
    g.add_argument("--ema_end_decay", type=float, default=0.9999, help="... rising linearly to this")
    g.add_argument("--ema_anneal_end_step", type=int, default=None, help="... at this step (default: max_steps)")
    g.add_argument("--loss_beta", type=float, default=d["loss_beta"], help="0: L2; else smooth L1 with this beta")
    g.add_argument("--dropout", type=float, default=0.1)
    return p


def modality_of(argv: Sequence[str] | None) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--modality", choices=sorted(DEFAULTS), default="audio")
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config and "--modality" not in (argv or []):
        from selfsup.config import load_config_file

        return str(load_config_file(known.config).get("modality", "audio"))
    return known.modality


def build_audio(run: Data2VecRun, max_steps: int) -> Data2VecObjective:
    from selfsup.objectives.masked.hf_data2vec_audio import from_transformers

    masking = dict(mask_prob=run.mask_prob, mask_length=run.mask_length)
    if run.init_from:
        return from_transformers(run.init_from, dropout=run.dropout, **masking, **run.objective_settings(max_steps))
    backbone = dict(dropout=run.dropout, attention_dropout=run.dropout,
                    gradient_checkpointing=run.gradient_checkpointing)
    return data2vec_audio(run.model_size, backbone=backbone, **masking, **run.objective_settings(max_steps))


def build_text(run: Data2VecRun, tokenizer, max_steps: int) -> Data2VecObjective:
    from selfsup.objectives.masked.hf_data2vec_text import from_transformers

    special, masking = tokenizer.all_special_ids, dict(probability=run.mask_prob, span_length=run.mask_length)
    if run.init_from:
        return from_transformers(run.init_from, tokenizer.mask_token_id, special, dropout=run.dropout,
                                 **masking, **run.objective_settings(max_steps))
    backbone = dict(dropout=run.dropout, attention_dropout=run.dropout,
                    gradient_checkpointing=run.gradient_checkpointing)
    return data2vec_text(run.model_size, len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id, special,
                         max_positions=max(512, run.max_seq_length), backbone=backbone, masker=masking,
                         **run.objective_settings(max_steps))


def export_audio(objective: Data2VecObjective, run: Data2VecRun, metrics: dict[str, Any], source: str, sample) -> Path:
    """OUTPUT_DIR/export: the student as Data2VecAudioModel + feature extractor + card, reloaded and checked."""
    from transformers import AutoModel

    from selfsup.objectives.masked.hf_data2vec_audio import to_transformers

    objective, out = objective.float().cpu().eval(), Path(run.output_dir) / "export"
    to_transformers(objective).save_pretrained(str(out))
    feature_extractor_for(objective).save_pretrained(str(out))
    check_audio_export(objective, AutoModel.from_pretrained(str(out)).eval(), sample, metrics)
    write_model_card(out, **speech_card(run, objective, metrics, source, name="data2vec (audio)",
                                        usage_class="Data2VecAudioModel", tags=("data2vec-audio", "audio", "speech"),
                                        facts={"average_top_k_layers": objective.config.average_top_k_layers}))
    return out


def export_text(objective: Data2VecObjective, tokenizer, run: Data2VecRun, metrics: dict[str, Any], source: str,
                sample: dict) -> Path:
    """OUTPUT_DIR/export: the student as Data2VecTextModel + tokenizer + card, reloaded and checked (1e-4)."""
    from transformers import AutoModel

    from selfsup.objectives.masked.hf_data2vec_text import to_transformers

    objective, out = objective.float().cpu().eval(), Path(run.output_dir) / "export"
    to_transformers(objective).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    with torch.no_grad():
        ours = objective.encoder()(sample)[0].last_hidden_state
        theirs = AutoModel.from_pretrained(str(out)).eval()(**sample).last_hidden_state
    metrics["export/max_abs_hidden_diff"] = check_close(max_abs_diff(ours, theirs), "hidden states")
    where = run.hub_model_id or out
    usage = f"""from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{where}")
model = AutoModel.from_pretrained("{where}")
hidden = model(**tokenizer("a sentence", return_tensors="pt")).last_hidden_state"""
    facts = {"objective": "data2vec (text)", "corpus": source, "steps": metrics.get("steps"),
             "model_size": run.model_size if not run.init_from else f"from {run.init_from}",
             "parameters": num_parameters(objective.encoder()), "mask_prob": objective.masker.probability,
             "average_top_k_layers": objective.config.average_top_k_layers}
    write_model_card(out, title=run.hub_model_id or "data2vec text encoder pretrained with selfsup",
                     pipeline_tag="feature-extraction", summary=f"A data2vec text encoder pretrained on {source}.",
                     metrics=metrics, run=facts, usage=usage, tags=("data2vec-text", "text"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    modality = modality_of(argv)
    args = parse_args(build_parser(modality), argv)                                        # parse
    run = settings_from(Data2VecRun, args, modality=modality)
    settings = TrainingSettings.from_args(args)
    accelerator = start_run(settings, run.seed)
    batch_size = settings.per_device_train_batch_size
    if modality == "audio":                                                                # data
        train, val, source = load_audio(run)
        accelerator.print(f"audio: {source}: {len(train)} training clips, {len(val)} held out")
        loader, held_out = speech_loader(train, collate_audio, run, batch_size, accelerator), val
        collate = collate_audio
        build = lambda: build_audio(run, settings.max_steps)  # noqa: E731
    else:
        train_texts, val_texts, source = load_text(run, accelerator)
        accelerator.print(f"corpus: {source}")
        tokenizer = get_tokenizer(run, train_texts, accelerator)
        loader, held_out = text_blocks(run, train_texts, val_texts, source, tokenizer, batch_size, accelerator)
        collate = lambda ids: collate_blocks([{"input_ids": b} for b in ids])  # noqa: E731
        build = lambda: build_text(run, tokenizer, settings.max_steps)  # noqa: E731
    objective = build()                                                                    # build
    if modality == "audio":
        apply_training_flags(objective, run, accelerator)
    accelerator.print(f"model: {num_parameters(objective.encoder()) / 1e6:.1f}M parameters (student)")
    eval_fn = held_out_eval(held_out, collate, run.per_device_eval_batch_size, run.seed, accelerator.device)
    trainer = Trainer(objective, loader, settings, accelerator, eval_fn,
                      run_config={"recipe": "data2vec", "modality": modality, "source": source})
    metrics = trainer.train()                                                              # train
    if modality == "audio":
        metrics.update(train.skipped.as_dict())
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:                                                        # evaluate
        if modality == "audio":
            metrics.update(speech_probe(objective, run, build, accelerator.device))
            export_dir = export_audio(objective, run, metrics, source, export_sample(val))  # export
        else:
            if run.eval_train_file and run.eval_test_file:
                fresh = [] if run.init_from else random_init_encoders(build, run.random_init_seeds, run.seed,
                                                                     accelerator.device)
                encoders = {"": objective.encoder(), **({"random_init_": fresh} if fresh else {})}
                metrics.update(text_probe(encoders, tokenizer, run, accelerator.device))
            export_dir = export_text(objective, tokenizer, run, metrics, source, block_sample(held_out))
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
