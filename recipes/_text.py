"""Helpers the text recipes (BERT MLM, data2vec text) call, each one step of their ``main``: the text flags,
the tokenizer (trained here deterministically, or given), the packed blocks and their loader, and the linear
probe / kNN on labelled sentences. Nothing here calls back into a recipe."""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones.transformer import SIZES as TRANSFORMER_SIZES
from selfsup.checkpoint import resolve_checkpoint
from selfsup.data import SeededExamples, ShardedStream, make_train_loader
from selfsup.errors import SelfsupError
from selfsup.evaluate import probe_encoders
from selfsup.modalities.text import (collate_blocks, collate_texts, load_corpus, load_labelled_text, load_tokenizer,
                                     pack_corpus, sample_texts, train_causal_tokenizer, train_tokenizer)
from selfsup.types import Encoder


def add_text_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("text")
    g.add_argument("--tokenizer_name", default=None, help="tokenizer folder (default: train WordPiece on the corpus)")
    g.add_argument("--vocab_size", type=int, default=8000, help="size of a tokenizer trained here")
    g.add_argument("--tokenizer_train_samples", type=int, default=200_000, help="texts used to train it")
    g.add_argument("--text_column", default=None, help="column holding the text (default: 'text')")
    g.add_argument("--max_seq_length", type=int, default=128, help="length of the packed blocks")
    g.add_argument("--max_eval_blocks", type=int, default=256, help="validation blocks for the held-out figures")
    g.add_argument("--streaming_validation_examples", type=int, default=1000)


def get_tokenizer(args: Namespace, train_texts, accelerator):
    """--tokenizer_name, else the --init_from checkpoint's, else the one this run trained (reused on resume).
    Training is deterministic (``selfsup.modalities.tokenizer_train``): the same corpus gives the same
    vocabulary in every fresh run."""
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


def load_text(args: Namespace, accelerator):
    """(train texts, validation texts, source) from the data flags (or the built-in corpus)."""
    with accelerator.main_process_first():
        return load_corpus(train_file=args.train_file, train_dir=args.train_dir, dataset_name=args.dataset_name,
                           dataset_config_name=args.dataset_config_name, validation_file=args.validation_file,
                           text_column=args.text_column, streaming=args.streaming,
                           max_train_samples=args.max_train_samples,
                           validation_split_percentage=args.validation_split_percentage, seed=args.seed,
                           streaming_validation_examples=args.streaming_validation_examples,
                           sample_by=getattr(args, "sample_by", "line"))


def get_causal_tokenizer(args: Namespace, train_texts, accelerator):
    """A GPT recipe's tokenizer: --tokenizer_name, else the --init_from checkpoint's, else one trained here on the
    corpus (``--tokenizer bpe``: byte-level BPE of ``--vocab_size``; ``char``: characters), deterministically, and
    reused on resume."""
    if args.tokenizer_name:
        return load_tokenizer(args.tokenizer_name, masked_lm=False)
    if args.init_from and (Path(args.init_from) / "tokenizer.json").is_file():
        return load_tokenizer(args.init_from, masked_lm=False)
    saved = Path(args.output_dir) / "tokenizer"
    resuming = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir) is not None
    if accelerator.is_main_process and not (resuming and (saved / "tokenizer.json").is_file()):
        what = f"a byte-level BPE tokenizer (vocab {args.vocab_size})" if args.tokenizer == "bpe" else \
            "a character-level tokenizer"
        accelerator.print(f"training {what} on the corpus")
        tok = train_causal_tokenizer(sample_texts(train_texts, args.tokenizer_train_samples), args.tokenizer,
                                     args.vocab_size, max_length=args.max_seq_length)
        tok.save_pretrained(str(saved))
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved), masked_lm=False)


def text_blocks(args: Namespace, train_texts, val_texts, source: str, tokenizer, accelerator, pack=None,
                eval_pack=None):
    """(training loader over packed blocks of ``--max_seq_length`` ids, held-out blocks as id lists). ``pack``:
    how blocks are cut (``pack_corpus``'s; default BERT's ``[CLS] ... [SEP]`` blocks); ``eval_pack``: the same
    for the held-out blocks (default ``pack``)."""
    with accelerator.main_process_first():
        train_blocks = pack_corpus(train_texts, tokenizer, args.max_seq_length, pack=pack)
        val_blocks = [b["input_ids"] for _, b in zip(range(args.max_eval_blocks),
                                                      pack_corpus(val_texts, tokenizer, args.max_seq_length,
                                                                  pack=eval_pack or pack))]
    if args.streaming:
        shuffled = train_blocks.shuffle(seed=args.seed, buffer_size=10_000)
        data = ShardedStream(lambda epoch: (shuffled.set_epoch(epoch), iter(shuffled))[1],
                             args.per_device_train_batch_size, accelerator.num_processes,
                             accelerator.process_index, collate_blocks)
    else:
        if len(train_blocks) == 0:
            raise SelfsupError(f"{source}: too little text for one block of {args.max_seq_length} tokens")
        data = SeededExamples(train_blocks, args.seed)  # each block's mask from its own seed
        accelerator.print(f"{len(data)} training blocks of {args.max_seq_length} tokens")
    if not val_blocks:
        raise SelfsupError(f"{source}: validation text is shorter than one block of {args.max_seq_length} tokens")
    loader = make_train_loader(data, collate_blocks, args.per_device_train_batch_size, accelerator.num_processes,
                               accelerator.process_index, args.seed, args.dataloader_num_workers)
    return loader, val_blocks


def text_probe(encoders: dict[str, Encoder | list[Encoder]], tokenizer, args: Namespace,
               device: torch.device) -> dict[str, float]:
    """Linear probe and kNN on labelled sentences (``--eval_train_file`` / ``--eval_test_file``) for each encoder
    (``{"": trained, "random_init_": [fresh, ...]}``), on the last layer and on all layers."""
    train_x, train_y = load_labelled_text(args.eval_train_file)
    test_x, test_y = load_labelled_text(args.eval_test_file)
    texts = {"train": train_x, "test": test_x}

    def batches(split: str):
        data, bs = texts[split], args.per_device_eval_batch_size
        for i in range(0, len(data), bs):
            yield collate_texts(tokenizer, data[i:i + bs], args.max_seq_length)

    return probe_encoders(encoders, batches, train_y, test_y, device, all_layers=True)


def block_sample(val_blocks: list[list[int]], n: int = 4) -> dict[str, Any]:
    """A few held-out blocks as a batch, for the export check."""
    return {"input_ids": torch.tensor(val_blocks[:n])}


def size_overrides(args: Namespace, family: str) -> dict[str, int]:
    """--hidden_size / --num_layers / --num_heads over the ``--model_size`` preset of ``family`` (the MLP 4x the
    width, as BERT and GPT-2; heads width / 64, at least 2), checked to divide."""
    out: dict[str, int] = {}
    if args.hidden_size:
        out.update(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                   num_heads=max(2, args.hidden_size // 64))
    if args.num_layers:
        out["num_layers"] = args.num_layers
    if args.num_heads:
        out["num_heads"] = args.num_heads
    preset = TRANSFORMER_SIZES[args.model_size]
    width, heads = out.get("hidden_size", preset["hidden_size"]), out.get("num_heads", preset["num_heads"])
    if width % heads:
        raise SelfsupError(f"hidden size {width} is not a multiple of the {heads} attention heads")
    return out
