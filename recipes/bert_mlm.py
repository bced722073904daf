"""Pretrain a BERT-style encoder with masked language modelling on your own corpus.

    accelerate launch recipes/bert_mlm.py                                # built-in corpus, a few minutes on CPU
    accelerate launch recipes/bert_mlm.py --train_file corpus.txt --model_size small --max_steps 2000
    python recipes/bert_mlm.py --init_from outputs/bert_mlm/export --train_file more.txt

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (a ``BertForMaskedLM`` + tokenizer + model card).
"""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.objectives.masked.build import bert_mlm, compose_bert
from selfsup.objectives.masked.hf_bert import from_transformers, to_transformers
from selfsup.objectives.masked.mlm import MaskedLanguageModeling
from selfsup.recipes._text import add_text_args, get_tokenizer, load_text, size_overrides, text_blocks, text_probe
from selfsup.run import finish_run, random_init_encoders, start_run
from selfsup.train import Trainer, TrainingSettings


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


def build_objective(args: Namespace, tokenizer) -> MaskedLanguageModeling:
    special = tokenizer.all_special_ids
    cont = [i for t, i in tokenizer.get_vocab().items() if t.startswith("##")] if args.whole_word_mask else None
    if args.init_from:
        obj = from_transformers(args.init_from, args.mlm_probability, args.dropout, special,
                                tokenizer.mask_token_id, cont)
        if obj.vocab_size != len(tokenizer):
            raise SelfsupError(f"{args.init_from}: model vocabulary ({obj.vocab_size}) does not match the "
                               f"tokenizer's ({len(tokenizer)})")
        return obj
    return bert_mlm(args.model_size, len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id, special,
                    max_positions=max(512, args.max_seq_length), mlm_probability=args.mlm_probability,
                    continuation_ids=cont, dropout=args.dropout, attention_dropout=args.dropout,
                    gradient_checkpointing=args.gradient_checkpointing, **size_overrides(args, "bert_mlm"))


def make_eval_fn(val_blocks: list[list[int]], args: Namespace, device: torch.device):
    """Held-out MLM loss, accuracy and perplexity with masks fixed by the seed (same masks at every eval)."""

    def eval_fn(objective: MaskedLanguageModeling) -> dict[str, float]:
        gen = torch.Generator().manual_seed(args.seed)
        loss, correct, count = 0.0, 0, 0
        for i in range(0, len(val_blocks), args.per_device_eval_batch_size):
            ids = torch.tensor(val_blocks[i:i + args.per_device_eval_batch_size])
            inputs, labels = objective.corrupt(ids, generator=gen)
            out = objective({"input_ids": inputs.to(device), "labels": labels.to(device)})
            loss += float(out.loss)
            correct += round(float(out.metrics["mlm_accuracy"]) * int(out.num_targets))
            count += int(out.num_targets)
        mean = loss / max(count, 1)
        return {"eval/mlm_loss": mean, "eval/mlm_accuracy": correct / max(count, 1),
                "eval/perplexity": float(torch.tensor(mean).exp())}

    return eval_fn


def export(objective: MaskedLanguageModeling, tokenizer, args: Namespace, metrics: dict[str, Any],
           source: str, sample: list[list[int]]) -> Path:
    """Write OUTPUT_DIR/export as BertForMaskedLM + tokenizer + card, and check it loads and matches."""
    from transformers import AutoModelForMaskedLM

    out = Path(args.output_dir) / "export"
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
    run = {"objective": "masked language modelling", "corpus": source, "steps": metrics.get("steps"),
           "model_size": args.model_size if not args.init_from else f"from {args.init_from}",
           "parameters": num_parameters(model), "max_seq_length": args.max_seq_length,
           "mlm_probability": args.mlm_probability, "whole_word_mask": args.whole_word_mask}
    usage = f"""from transformers import pipeline
fill = pipeline("fill-mask", model="{args.hub_model_id or out}")
fill("the {tokenizer.mask_token} statement")"""
    write_model_card(out, title=args.hub_model_id or "BERT-style encoder pretrained with selfsup",
                     pipeline_tag="fill-mask", summary=f"A BERT masked language model pretrained on {source}.",
                     metrics=metrics, run=run, usage=usage, tags=("bert", "fill-mask"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                # parse
    settings = TrainingSettings.from_args(args)
    accelerator = start_run(settings, args.seed)
    train_texts, val_texts, source = load_text(args, accelerator)                          # data
    accelerator.print(f"corpus: {source}")
    tokenizer = get_tokenizer(args, train_texts, accelerator)
    loader, val_blocks = text_blocks(args, train_texts, val_texts, source, tokenizer, accelerator)
    objective = build_objective(args, tokenizer)                                           # build
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.1f}M parameters")
    trainer = Trainer(objective, loader, settings, accelerator, make_eval_fn(val_blocks, args, accelerator.device),
                      run_config={"recipe": "bert_mlm", "corpus": source})
    metrics = trainer.train()                                                              # train
    objective, export_dir = trainer.objective, None
    if accelerator.is_main_process:
        if args.eval_train_file and args.eval_test_file:                                   # evaluate
            fresh = random_init_encoders(lambda: compose_bert(objective.config, objective.masker, objective.adapter.pad_token_id,
                                                              objective.adapter.max_positions),
                                         args.random_init_seeds, args.seed, accelerator.device)
            metrics.update(text_probe({"": objective.encoder(), "random_init_": fresh}, tokenizer, args,
                                      accelerator.device))
        export_dir = export(objective, tokenizer, args, metrics, source, val_blocks)       # export
    return finish_run(accelerator, metrics, args.output_dir, export_dir, args.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
