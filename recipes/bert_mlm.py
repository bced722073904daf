"""Pretrain a BERT-style encoder with masked language modelling on your own corpus.

    accelerate launch recipes/bert_mlm.py                                # built-in corpus, a few minutes on CPU
    accelerate launch recipes/bert_mlm.py --train_file corpus.txt --model_size small --max_steps 2000
    python recipes/bert_mlm.py --init_from outputs/bert_mlm/export --train_file more.txt

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (a ``BertForMaskedLM`` + tokenizer + model card).
"""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.recipes.builders.masked import bert_mlm
from selfsup.objectives.masked.hf_bert import compose_bert
from selfsup.objectives.masked.hf_bert import from_transformers, to_transformers
from selfsup.objectives.masked.mlm import MaskedLanguageModeling
from selfsup.recipes._text import (TextModel, add_text_args, get_tokenizer, load_text, size_overrides, text_blocks,
                                   text_probe)
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


@dataclass
class BertRun(TextModel):
    """The masked-language-modelling recipe's own settings (the engine's are ``TrainingSettings``); the flags of
    the same names."""

    mlm_probability: float = 0.15
    whole_word_mask: bool = False


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/bert_mlm", max_steps=120, learning_rate=5e-4)
    add_text_args(p)
    g = p.add_argument_group("masked language modelling")
    g.add_argument("--mlm_probability", type=float, default=0.15)
    g.add_argument("--whole_word_mask", action="store_true", help="mask whole words, not word pieces")
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--hidden_size", type=int, default=None, help="override the --model_size preset's width")
    g.add_argument("--num_layers", type=int, default=None, help="... its depth")
    g.add_argument("--num_heads", type=int, default=None, help="... its attention heads (default: width / 64, >= 2)")
    return p


def build_objective(run: BertRun, tokenizer) -> MaskedLanguageModeling:
    special = tokenizer.all_special_ids
    cont = [i for t, i in tokenizer.get_vocab().items() if t.startswith("##")] if run.whole_word_mask else None
    if run.init_from:
        obj = from_transformers(run.init_from, run.mlm_probability, run.dropout, special,
                                tokenizer.mask_token_id, cont)
        if obj.vocab_size != len(tokenizer):
            raise SelfsupError(f"{run.init_from}: model vocabulary ({obj.vocab_size}) does not match the "
                               f"tokenizer's ({len(tokenizer)})")
        return obj
    return bert_mlm(run.model_size, len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id, special,
                    max_positions=max(512, run.max_seq_length), mlm_probability=run.mlm_probability,
                    continuation_ids=cont, dropout=run.dropout, attention_dropout=run.dropout,
                    gradient_checkpointing=run.gradient_checkpointing, **size_overrides(run, "bert_mlm"))


def make_eval_fn(val_blocks: list[list[int]], run: BertRun, device: torch.device):
    """Held-out MLM loss, accuracy and perplexity with masks fixed by the seed (same masks at every eval)."""

    def eval_fn(objective: MaskedLanguageModeling) -> dict[str, float]:
        gen = torch.Generator().manual_seed(run.seed)
        loss, correct, count = 0.0, 0, 0
        for i in range(0, len(val_blocks), run.per_device_eval_batch_size):
            ids = torch.tensor(val_blocks[i:i + run.per_device_eval_batch_size])
            inputs, labels = objective.corrupt(ids, generator=gen)
            out = objective({"input_ids": inputs.to(device), "labels": labels.to(device)})
            loss += float(out.loss)
            correct += round(float(out.metrics["mlm_accuracy"]) * int(out.num_targets))
            count += int(out.num_targets)
        mean = loss / max(count, 1)
        return {"eval/mlm_loss": mean, "eval/mlm_accuracy": correct / max(count, 1),
                "eval/perplexity": float(torch.tensor(mean).exp())}

    return eval_fn


def export(objective: MaskedLanguageModeling, tokenizer, run: BertRun, metrics: dict[str, Any],
           source: str, sample: list[list[int]]) -> Path:
    """Write OUTPUT_DIR/export as BertForMaskedLM + tokenizer + card, and check it loads and matches."""
    from transformers import AutoModelForMaskedLM

    out = Path(run.output_dir) / "export"
    model = to_transformers(objective.float().cpu())
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    reloaded = AutoModelForMaskedLM.from_pretrained(str(out)).eval()
    objective.eval()
    ids = torch.tensor(sample[:4])
    with torch.no_grad():
        diff = float((reloaded(input_ids=ids).logits - objective.logits({"input_ids": ids})).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"export check failed: reloaded logits differ by {diff:.2e}")
    metrics["export/max_abs_logit_diff"] = diff
    facts = {"objective": "masked language modelling", "corpus": source, "steps": metrics.get("steps"),
             "model_size": run.model_size if not run.init_from else f"from {run.init_from}",
             "parameters": num_parameters(model), "max_seq_length": run.max_seq_length,
             "mlm_probability": run.mlm_probability, "whole_word_mask": run.whole_word_mask}
    usage = f"""from transformers import pipeline
fill = pipeline("fill-mask", model="{run.hub_model_id or out}")
fill("the {tokenizer.mask_token} statement")"""
    write_model_card(out, title=run.hub_model_id or "BERT-style encoder pretrained with selfsup",
                     pipeline_tag="fill-mask", summary=f"A BERT masked language model pretrained on {source}.",
                     metrics=metrics, run=facts, usage=usage, tags=("bert", "fill-mask"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                # parse
    run = settings_from(BertRun, args)
    settings = TrainingSettings.from_args(args)
    accelerator = start_run(settings, run.seed)
    train_texts, val_texts, source = load_text(run, accelerator)                           # data
    accelerator.print(f"corpus: {source}")
    tokenizer = get_tokenizer(run, train_texts, accelerator)
    loader, val_blocks = text_blocks(run, train_texts, val_texts, source, tokenizer,
                                     settings.per_device_train_batch_size, accelerator)
    objective = build_objective(run, tokenizer)                                            # build
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.1f}M parameters")
    trainer = Trainer(objective, loader, settings, accelerator, make_eval_fn(val_blocks, run, accelerator.device),
                      run_config={"recipe": "bert_mlm", "corpus": source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        if run.eval_train_file and run.eval_test_file:                                     # evaluate
            fresh = random_init_encoders(lambda: compose_bert(objective.config, objective.masker,
                                                              objective.adapter.pad_token_id,
                                                              objective.adapter.max_positions),
                                         run.random_init_seeds, run.seed, accelerator.device)
            metrics.update(text_probe({"": objective.encoder(), "random_init_": fresh}, tokenizer, run,
                                      accelerator.device))
        export_dir = export(objective, tokenizer, run, metrics, source, val_blocks)        # export
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
