"""Pretrain a GPT-2-style autoregressive language model on your own corpus.

    accelerate launch recipes/gpt.py                                    # built-in corpus, about a minute on CPU
    accelerate launch recipes/gpt.py --train_file corpus.txt --model_size small --max_steps 5000
    python recipes/gpt.py --train_file shakespeare.txt --tokenizer char --sample_by document \\
        --validation_file shakespeare_val.txt
    python recipes/gpt.py --init_from outputs/gpt/export --train_file more.txt

Writes OUTPUT_DIR/metrics.json and OUTPUT_DIR/export/ (a ``GPT2LMHeadModel`` + tokenizer + model card).
"""
from __future__ import annotations

import math
from argparse import ArgumentParser
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch

from selfsup.backbones.transformer import num_parameters
from selfsup.config import base_parser, parse_args, settings_from
from selfsup.convert import check_close, max_abs_diff
from selfsup.errors import SelfsupError, run_cli
from selfsup.export import write_model_card
from selfsup.modalities.text import SAMPLE_BY, causal_pack_function
from selfsup.recipes.builders.autoregressive import gpt
from selfsup.objectives.autoregressive.clm import CausalLanguageModeling, generate
from selfsup.objectives.autoregressive.hf_gpt2 import from_transformers, to_transformers
from selfsup.recipes._text import TextModel, add_text_args, get_causal_tokenizer, load_text, size_overrides, text_blocks
from selfsup.run import finish_run, start_run
from selfsup.train import Trainer, TrainingSettings


@dataclass
class GPTRun(TextModel):
    """The autoregressive recipe's own settings (the engine's are ``TrainingSettings``); the flags of the same
    names, checked."""

    tokenizer: str = "bpe"
    sample_by: str = "line"
    block_stride: int | None = None
    dropout: float = 0.0
    num_samples: int = 2
    max_new_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 40
    prompt: str | None = None
    prompt_tokens: int = 16

    def __post_init__(self) -> None:
        if self.eval_train_file or self.eval_test_file:
            raise SelfsupError("the GPT recipe reports held-out loss and perplexity; --eval_train_file/"
                               "--eval_test_file (probes) are not supported here")
        if self.max_seq_length < 2:
            raise SelfsupError("--max_seq_length must be at least 2")
        if self.block_stride is not None and not 0 < self.block_stride <= self.max_seq_length:
            raise SelfsupError(f"--block_stride must be between 1 and --max_seq_length ({self.max_seq_length})")


def build_parser() -> ArgumentParser:
    p = base_parser(__doc__.splitlines()[0], output_dir="outputs/gpt", max_steps=100, learning_rate=1e-3,
                    per_device_train_batch_size=16, weight_decay=0.1, adam_beta2=0.99, adam_epsilon=1e-8,
                    eval_steps=50)
    add_text_args(p)
    g = p.add_argument_group("autoregressive language modelling")
    g.add_argument("--tokenizer", default="bpe", choices=["bpe", "char"],
                   help="tokenizer trained on the corpus: byte-level BPE (--vocab_size) or one token per character")
    g.add_argument("--sample_by", default="line", choices=SAMPLE_BY,
                   help="one example of a .txt file: a line, a paragraph or the whole file (line breaks kept)")
    g.add_argument("--block_stride", type=int, default=None,
                   help="start a training block every N tokens (default --max_seq_length: no overlap; held-out "
                        "blocks never overlap)")
    g.add_argument("--dropout", type=float, default=0.0, help="hidden, attention and embedding dropout")
    g.add_argument("--hidden_size", type=int, default=None, help="override the --model_size preset's width")
    g.add_argument("--num_layers", type=int, default=None, help="... its depth")
    g.add_argument("--num_heads", type=int, default=None, help="... its attention heads (default: width / 64, >= 2)")
    s = p.add_argument_group("samples printed at each evaluation")
    s.add_argument("--num_samples", type=int, default=2, help="sampled continuations (besides the greedy one)")
    s.add_argument("--max_new_tokens", type=int, default=48)
    s.add_argument("--temperature", type=float, default=0.8)
    s.add_argument("--top_k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    s.add_argument("--prompt", default=None, help="text to continue (default: the start of held-out blocks)")
    s.add_argument("--prompt_tokens", type=int, default=16, help="length of the held-out prompts")
    p.set_defaults(max_seq_length=128, vocab_size=4096)
    return p


def build_objective(run: GPTRun, tokenizer) -> CausalLanguageModeling:
    if run.init_from:
        obj = from_transformers(run.init_from, run.dropout)
        if obj.vocab_size < len(tokenizer):
            raise SelfsupError(f"{run.init_from}: model vocabulary ({obj.vocab_size}) is smaller than the "
                               f"tokenizer's ({len(tokenizer)})")
        if obj.max_positions < run.max_seq_length:
            raise SelfsupError(f"{run.init_from}: the model holds {obj.max_positions} positions; lower "
                               f"--max_seq_length ({run.max_seq_length})")
        return obj
    return gpt(run.model_size, len(tokenizer), max_positions=run.max_seq_length, dropout=run.dropout,
               attention_dropout=run.dropout, gradient_checkpointing=run.gradient_checkpointing,
               **size_overrides(run, "gpt"))


def prompts(tokenizer, val_blocks: list[list[int]], run: GPTRun) -> list[list[int]]:
    """The prompts the samples continue: --prompt, or the start of the first and the middle held-out block."""
    if run.prompt:
        ids = tokenizer(run.prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise SelfsupError("--prompt is empty after tokenization")
        return [ids]
    picks = sorted({0, len(val_blocks) // 2})
    return [val_blocks[i][:max(1, run.prompt_tokens)] for i in picks]


def print_samples(objective: CausalLanguageModeling, tokenizer, starts: list[list[int]], run: GPTRun,
                  device: torch.device) -> str:
    """Greedy and sampled (--temperature, --top_k) continuations of each prompt, printed; the first greedy one
    returned (it goes into the model card)."""
    from tqdm.auto import tqdm

    gen = torch.Generator(device=device).manual_seed(run.seed)
    lines, first = [], ""
    for start in starts:
        ids = torch.tensor([start], device=device)
        greedy = generate(objective, ids, run.max_new_tokens, greedy=True)
        text = tokenizer.decode(greedy[0, len(start):].tolist())
        first = first or tokenizer.decode(start) + text
        lines.append(f"  greedy   | {tokenizer.decode(start)!r} -> {text!r}")
        for _ in range(run.num_samples):
            out = generate(objective, ids, run.max_new_tokens, temperature=run.temperature,
                           top_k=run.top_k or None, generator=gen)
            sampled = tokenizer.decode(out[0, len(start):].tolist())
            lines.append(f"  sampled  | {tokenizer.decode(start)!r} -> {sampled!r}")
    tqdm.write("samples (greedy; temperature %g, top-k %s):\n%s" % (run.temperature, run.top_k or "all",
                                                                    "\n".join(lines)))
    return first


def make_eval_fn(val_blocks: list[list[int]], tokenizer, run: GPTRun, device: torch.device, samples: dict):
    """Held-out next-token loss (per target), perplexity and accuracy on every validation block, then samples."""
    starts = prompts(tokenizer, val_blocks, run)

    def eval_fn(objective: CausalLanguageModeling) -> dict[str, float]:
        loss, correct, count = 0.0, 0, 0
        for i in range(0, len(val_blocks), run.per_device_eval_batch_size):
            out = objective({"input_ids": torch.tensor(val_blocks[i:i + run.per_device_eval_batch_size],
                                                       device=device)})
            loss += float(out.loss)
            correct += round(float(out.metrics["accuracy"]) * int(out.num_targets))
            count += int(out.num_targets)
        mean = loss / max(count, 1)
        samples["greedy"] = print_samples(objective, tokenizer, starts, run, device)
        return {"eval/loss": mean, "eval/perplexity": math.exp(min(mean, 50.0)),
                "eval/accuracy": correct / max(count, 1)}

    return eval_fn


def export(objective: CausalLanguageModeling, tokenizer, run: GPTRun, metrics: dict[str, Any], source: str,
           val_blocks: list[list[int]], sample: str) -> Path:
    """Write OUTPUT_DIR/export as GPT2LMHeadModel + tokenizer + card, and check it loads and matches."""
    from transformers import AutoModelForCausalLM

    out = Path(run.output_dir) / "export"
    model = to_transformers(objective.float().cpu(), eos_token_id=tokenizer.eos_token_id)
    if tokenizer.eos_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    reloaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    objective.eval()
    ids = torch.tensor(val_blocks[:4])[:, :objective.max_positions]
    with torch.no_grad():
        diff = check_close(max_abs_diff(reloaded(input_ids=ids).logits, objective.logits({"input_ids": ids})),
                           "logits")
    metrics["export/max_abs_logit_diff"] = diff
    facts = {"objective": "causal language modelling (next token)", "corpus": source, "steps": metrics.get("steps"),
             "model_size": run.model_size if not run.init_from else f"from {run.init_from}",
             "parameters": num_parameters(model), "context": objective.max_positions,
             "tokenizer": run.tokenizer_name or (run.init_from and "from the checkpoint") or run.tokenizer,
             "vocab_size": objective.vocab_size}
    usage = f"""from transformers import pipeline
generate = pipeline("text-generation", model="{run.hub_model_id or out}")
print(generate("The", max_new_tokens=40, do_sample=True, top_k=40)[0]["generated_text"])"""
    summary = (f"A GPT-2-style causal language model pretrained on {source}. A greedy continuation of held-out "
               f"text after training:\n\n```text\n{sample}\n```")
    write_model_card(out, title=run.hub_model_id or "GPT-2-style language model pretrained with selfsup",
                     pipeline_tag="text-generation", summary=summary, metrics=metrics, run=facts, usage=usage,
                     tags=("gpt2", "text-generation"))
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(build_parser(), argv)                                                # parse
    run = settings_from(GPTRun, args)
    min_learning_rate = args.min_learning_rate if args.min_learning_rate is not None else \
        args.learning_rate / 10                                # nanoGPT's cosine ends at a tenth of the peak
    settings = TrainingSettings.from_args(args, min_learning_rate=min_learning_rate)
    accelerator = start_run(settings, run.seed)
    train_texts, val_texts, source = load_text(run, accelerator, run.sample_by)            # data
    accelerator.print(f"corpus: {source}")
    tokenizer = get_causal_tokenizer(run, train_texts, accelerator, run.tokenizer)
    loader, val_blocks = text_blocks(run, train_texts, val_texts, source, tokenizer,
                                     settings.per_device_train_batch_size, accelerator,
                                     pack=partial(causal_pack_function, stride=run.block_stride),
                                     eval_pack=causal_pack_function)
    objective = build_objective(run, tokenizer)                                            # build
    accelerator.print(f"model: {num_parameters(objective) / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    samples: dict[str, str] = {}
    trainer = Trainer(objective, loader, settings, accelerator,
                      make_eval_fn(val_blocks, tokenizer, run, accelerator.device, samples),
                      run_config={"recipe": "gpt", "corpus": source})
    metrics = trainer.train()                                                              # train + evaluate
    objective, export_dir = trainer.trained_objective(), None
    if accelerator.is_main_process:
        export_dir = export(objective, tokenizer, run, metrics, source, val_blocks,       # export
                            samples.get("greedy", ""))
    return finish_run(accelerator, metrics, run.output_dir, export_dir, run.hub_model_id,  # finish
                      args.push_to_hub, args.hub_private_repo)


if __name__ == "__main__":
    run_cli(main)
