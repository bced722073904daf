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

from selfsup.backbones.transformer import PRESETS, num_parameters, preset
from selfsup.checkpoint import resolve_checkpoint
from selfsup.config import base_parser, parse_args
from selfsup.data import ShardedStream, make_train_loader
from selfsup.errors import SelfsupError, run_cli
from selfsup.evaluate import probe_encoders
from selfsup.export import push_to_hub, write_model_card
from selfsup.objectives.hf_bert import from_transformers, to_transformers
from selfsup.modalities.text import (
    collate_blocks, collate_texts, load_corpus, load_labelled_text, load_tokenizer, pack_corpus, sample_texts,
    train_tokenizer,
)
from selfsup.objectives.mlm import MaskedLanguageModeling
from selfsup.train import Trainer, make_accelerator, seed_everything, write_metrics


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/bert_mlm", max_steps=120, learning_rate=5e-4)
    g = p.add_argument_group("masked language modelling")
    g.add_argument("--tokenizer_name", default=None, help="tokenizer folder (default: train WordPiece on the corpus)")
    g.add_argument("--vocab_size", type=int, default=8000, help="size of a tokenizer trained here")
    g.add_argument("--tokenizer_train_samples", type=int, default=200_000, help="texts used to train it")
    g.add_argument("--text_column", default=None, help="column holding the text (default: 'text')")
    g.add_argument("--max_seq_length", type=int, default=128, help="length of the packed blocks")
    g.add_argument("--mlm_probability", type=float, default=0.15)
    g.add_argument("--whole_word_mask", action="store_true", help="mask whole words, not word pieces")
    g.add_argument("--dropout", type=float, default=0.1)
    g.add_argument("--hidden_size", type=int, default=None, help="override the --model_size preset's width")
    g.add_argument("--num_layers", type=int, default=None, help="... its depth")
    g.add_argument("--num_heads", type=int, default=None, help="... its attention heads (default: width / 64, >= 2)")
    g.add_argument("--max_eval_blocks", type=int, default=256, help="validation blocks for MLM accuracy")
    g.add_argument("--streaming_validation_examples", type=int, default=1000)
    return p


def get_tokenizer(args: Namespace, train_texts, accelerator):
    """--tokenizer_name, else the --init_from checkpoint's, else the one this run trained (reused on resume)."""
    if args.tokenizer_name:
        return load_tokenizer(args.tokenizer_name)
    if args.init_from and (Path(args.init_from) / "tokenizer.json").is_file():
        return load_tokenizer(args.init_from)
    saved = Path(args.output_dir) / "tokenizer"
    resuming = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) is not None
    if accelerator.is_main_process and not (resuming and (saved / "tokenizer.json").is_file()):
        accelerator.print(f"training a WordPiece tokenizer (vocab {args.vocab_size}) on the corpus")
        tok = train_tokenizer(sample_texts(train_texts, args.tokenizer_train_samples), args.vocab_size,
                              max_length=args.max_seq_length)
        tok.save_pretrained(str(saved))
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved))


def size_overrides(args: Namespace) -> dict[str, int]:
    """--hidden_size / --num_layers / --num_heads over the preset (the FFN is 4x the width, as in BERT)."""
    out: dict[str, int] = {}
    if args.hidden_size:
        out.update(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                   num_heads=max(2, args.hidden_size // 64))
    if args.num_layers:
        out["num_layers"] = args.num_layers
    if args.num_heads:
        out["num_heads"] = args.num_heads
    width = out.get("hidden_size", PRESETS[args.model_size]["hidden_size"])
    heads = out.get("num_heads", PRESETS[args.model_size]["num_heads"])
    if width % heads:
        raise SelfsupError(f"hidden size {width} is not a multiple of the {heads} attention heads")
    return out


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
    cfg = preset(args.model_size, dropout=args.dropout, attention_dropout=args.dropout,
                 gradient_checkpointing=args.gradient_checkpointing, **size_overrides(args))
    return MaskedLanguageModeling(cfg, len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id, special,
                                  max_positions=max(512, args.max_seq_length), mlm_probability=args.mlm_probability,
                                  continuation_ids=cont)


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


def run_probe(objective: MaskedLanguageModeling, tokenizer, args: Namespace, device) -> dict[str, float]:
    train_x, train_y = load_labelled_text(args.eval_train_file)
    test_x, test_y = load_labelled_text(args.eval_test_file)
    texts = {"train": train_x, "test": test_x}
    fresh = []
    for k in range(max(1, args.random_init_seeds)):
        torch.manual_seed(args.seed + 1 + k)
        fresh.append(MaskedLanguageModeling(objective.config, objective.vocab_size, objective.mask_token_id,
                                            objective.pad_token_id,
                                            max_positions=objective.adapter.max_positions).to(device).encoder())

    def batches(split: str):
        data, bs = texts[split], args.per_device_eval_batch_size
        for i in range(0, len(data), bs):
            yield collate_texts(tokenizer, data[i:i + bs], args.max_seq_length)

    return probe_encoders({"": objective.encoder(), "random_init_": fresh}, batches, train_y, test_y, device,
                          all_layers=True)


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
    args = parse_args(build_parser(), argv)
    accelerator = make_accelerator(args)
    seed_everything(args.seed)
    with accelerator.main_process_first():
        train_texts, val_texts, source = load_corpus(args)
    accelerator.print(f"corpus: {source}")
    tokenizer = get_tokenizer(args, train_texts, accelerator)
    with accelerator.main_process_first():
        train_blocks = pack_corpus(train_texts, tokenizer, args.max_seq_length)
        val_blocks = [b["input_ids"] for _, b in zip(range(args.max_eval_blocks),
                                                      pack_corpus(val_texts, tokenizer, args.max_seq_length))]
    if args.streaming:
        shuffled = train_blocks.shuffle(seed=args.seed, buffer_size=10_000)
        data = ShardedStream(lambda epoch: (shuffled.set_epoch(epoch), iter(shuffled))[1],
                             args.per_device_train_batch_size, accelerator.num_processes,
                             accelerator.process_index, collate_blocks)
    else:
        data = train_blocks
        if len(data) == 0:
            raise SelfsupError(f"{source}: too little text for one block of {args.max_seq_length} tokens")
        accelerator.print(f"{len(data)} training blocks of {args.max_seq_length} tokens")
    if not val_blocks:
        raise SelfsupError(f"{source}: validation text is shorter than one block of {args.max_seq_length} tokens")
    loader = make_train_loader(data, collate_blocks, args.per_device_train_batch_size, accelerator.num_processes,
                               accelerator.process_index, args.seed, args.dataloader_num_workers)
    objective = build_objective(args, tokenizer)
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.1f}M parameters")
    trainer = Trainer(objective, loader, args, accelerator, make_eval_fn(val_blocks, args, accelerator.device),
                      run_config={"recipe": "bert_mlm", "corpus": source})
    metrics = trainer.train()
    objective = trainer.objective
    if accelerator.is_main_process:
        if args.eval_train_file and args.eval_test_file:
            metrics.update(run_probe(objective, tokenizer, args, accelerator.device))
        export_dir = export(objective, tokenizer, args, metrics, source, val_blocks)
        write_metrics(args.output_dir, metrics)
        accelerator.print(f"metrics: {Path(args.output_dir) / 'metrics.json'}; export: {export_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        metrics["hub_url"] = push_to_hub(export_dir, args.hub_model_id, args.hub_private_repo)
        write_metrics(args.output_dir, metrics)
    return metrics


if __name__ == "__main__":
    run_cli(main)
