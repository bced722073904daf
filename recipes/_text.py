"""Helpers the text recipes (BERT MLM, GPT, data2vec text) call, each one step of their ``main``, on typed settings
(:class:`TextRun`, :class:`TextModel`): the text flags, the tokenizer (trained here deterministically, or given), the
packed blocks and their loader, the linear probe / kNN on labelled sentences, and the size flags over a preset.
Nothing here calls back into a recipe."""
from __future__ import annotations

from argparse import ArgumentParser
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones.transformer import SIZES as TRANSFORMER_SIZES
from selfsup.checkpoint import resolve_checkpoint
from selfsup.config import RecipeSettings
from selfsup.distributed import writes_node_files
from selfsup.data import SeededExamples, ShardedStream, example_seed, make_train_loader
from selfsup.errors import SelfsupError
from selfsup.evaluate import probe_encoders
from selfsup.modalities.shards import file_texts, text_reader
from selfsup.modalities.text import (collate_blocks, collate_texts, corpus_files, load_corpus, load_labelled_text,
                                     load_tokenizer, pack_corpus, sample_texts, train_causal_tokenizer, train_tokenizer)
from selfsup.streaming import ShardStream, record_index
from selfsup.types import Encoder


@dataclass
class TextRun(RecipeSettings):
    """What the text recipes share: the run's settings and the flags of :func:`add_text_args` (with the data and
    probe flags they read); a recipe's own settings extend it. The flags of the same names."""

    validation_file: list[str] | None = None
    validation_split_percentage: float = 5.0
    streaming: bool = False
    eval_train_file: str | None = None
    eval_test_file: str | None = None
    tokenizer_name: str | None = None
    vocab_size: int = 8000
    tokenizer_train_samples: int = 200_000
    text_column: str | None = None
    max_seq_length: int = 128
    max_eval_blocks: int = 256
    streaming_validation_examples: int = 1000


@dataclass
class TextModel(TextRun):
    """A text recipe whose Transformer the flags may resize over the ``--model_size`` preset (BERT, GPT)."""

    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    dropout: float = 0.1


def add_text_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("text")
    g.add_argument("--tokenizer_name", default=None, help="tokenizer folder (default: train WordPiece on the corpus)")
    g.add_argument("--vocab_size", type=int, default=8000, help="size of a tokenizer trained here")
    g.add_argument("--tokenizer_train_samples", type=int, default=200_000, help="texts used to train it")
    g.add_argument("--text_column", default=None, help="column holding the text (default: 'text')")
    g.add_argument("--max_seq_length", type=int, default=128, help="length of the packed blocks")
    g.add_argument("--max_eval_blocks", type=int, default=256, help="validation blocks for the held-out figures")
    g.add_argument("--streaming_validation_examples", type=int, default=1000)


def get_tokenizer(run: TextRun, train_texts, accelerator):
    """--tokenizer_name, else the --init_from checkpoint's, else the one this run trained (reused on resume).
    Training is deterministic (``selfsup.modalities.tokenizer_train``): the same corpus gives the same
    vocabulary in every fresh run."""
    if run.tokenizer_name:
        return load_tokenizer(run.tokenizer_name)
    if run.init_from and (Path(run.init_from) / "tokenizer.json").is_file():
        return load_tokenizer(run.init_from)
    saved = Path(run.output_dir) / "tokenizer"
    resuming = resolve_checkpoint(run.resume_from_checkpoint, run.output_dir) is not None
    writer = writes_node_files(accelerator, run.output_dir)   # each machine with its own disk trains its copy
    if writer and not (resuming and (saved / "tokenizer.json").is_file()):
        accelerator.print(f"training a WordPiece tokenizer (vocab {run.vocab_size}) on the corpus")
        tok = train_tokenizer(sample_texts(train_texts, run.tokenizer_train_samples), run.vocab_size,
                              max_length=run.max_seq_length)
        tok.save_pretrained(str(saved))
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved))


def load_text(run: TextRun, accelerator, sample_by: str = "line"):
    """(train texts, validation texts, source) from the data flags (or the built-in corpus); ``sample_by``: one
    example of a .txt file (``modalities.text.SAMPLE_BY``)."""
    with accelerator.main_process_first():
        return load_corpus(train_file=run.train_file, train_dir=run.train_dir, dataset_name=run.dataset_name,
                           dataset_config_name=run.dataset_config_name, validation_file=run.validation_file,
                           text_column=run.text_column, streaming=run.streaming,
                           max_train_samples=run.max_train_samples,
                           validation_split_percentage=run.validation_split_percentage, seed=run.seed,
                           streaming_validation_examples=run.streaming_validation_examples,
                           sample_by=sample_by)


def get_causal_tokenizer(run: TextRun, train_texts, accelerator, kind: str = "bpe"):
    """A GPT recipe's tokenizer: --tokenizer_name, else the --init_from checkpoint's, else one trained here on the
    corpus (``kind`` ``bpe``: byte-level BPE of ``--vocab_size``; ``char``: characters), deterministically, and
    reused on resume."""
    if run.tokenizer_name:
        return load_tokenizer(run.tokenizer_name, masked_lm=False)
    if run.init_from and (Path(run.init_from) / "tokenizer.json").is_file():
        return load_tokenizer(run.init_from, masked_lm=False)
    saved = Path(run.output_dir) / "tokenizer"
    resuming = resolve_checkpoint(run.resume_from_checkpoint, run.output_dir) is not None
    writer = writes_node_files(accelerator, run.output_dir)   # each machine with its own disk trains its copy
    if writer and not (resuming and (saved / "tokenizer.json").is_file()):
        what = f"a byte-level BPE tokenizer (vocab {run.vocab_size})" if kind == "bpe" else \
            "a character-level tokenizer"
        accelerator.print(f"training {what} on the corpus")
        tok = train_causal_tokenizer(sample_texts(train_texts, run.tokenizer_train_samples), kind,
                                     run.vocab_size, max_length=run.max_seq_length)
        tok.save_pretrained(str(saved))
    accelerator.wait_for_everyone()
    return load_tokenizer(str(saved), masked_lm=False)


def text_blocks(run: TextRun, train_texts, val_texts, source: str, tokenizer, batch_size: int, accelerator, pack=None,
                eval_pack=None):
    """(training loader over packed blocks of ``--max_seq_length`` ids, ``batch_size`` per process, held-out blocks
    as id lists). ``pack``: how blocks are cut (``pack_corpus``'s; default BERT's ``[CLS] ... [SEP]`` blocks);
    ``eval_pack``: the same for the held-out blocks (default ``pack``). ``--streaming`` files: each process reads
    only its own (:func:`sharded_text`)."""
    if run.streaming and (run.train_file or run.train_dir):
        data, val_blocks = sharded_text(run, val_texts, tokenizer, batch_size, accelerator, pack, eval_pack)
        if not val_blocks:
            raise SelfsupError(f"{source}: validation text is shorter than one block of {run.max_seq_length} tokens")
        return make_train_loader(data, collate_blocks, batch_size, accelerator.num_processes,
                                 accelerator.process_index, run.seed), val_blocks
    with accelerator.main_process_first():
        train_blocks = pack_corpus(train_texts, tokenizer, run.max_seq_length, pack=pack)
        val_blocks = [b["input_ids"] for _, b in zip(range(run.max_eval_blocks),
                                                      pack_corpus(val_texts, tokenizer, run.max_seq_length,
                                                                  pack=eval_pack or pack))]
    if run.streaming:   # a Hub name or a dataset folder: one stream that every process reads, keeping its slice of each batch
        shuffled = train_blocks.shuffle(seed=run.seed, buffer_size=10_000)
        data = ShardedStream(lambda epoch: (shuffled.set_epoch(epoch), iter(shuffled))[1], batch_size,
                             accelerator.num_processes, accelerator.process_index, collate_blocks)
    else:
        if len(train_blocks) == 0:
            raise SelfsupError(f"{source}: too little text for one block of {run.max_seq_length} tokens")
        data = SeededExamples(train_blocks, run.seed)  # each block's mask from its own seed
        accelerator.print(f"{len(data)} training blocks of {run.max_seq_length} tokens")
    if not val_blocks:
        raise SelfsupError(f"{source}: validation text is shorter than one block of {run.max_seq_length} tokens")
    loader = make_train_loader(data, collate_blocks, batch_size, accelerator.num_processes, accelerator.process_index,
                               run.seed, run.dataloader_num_workers)
    return loader, val_blocks


def sharded_text(run: TextRun, val_texts, tokenizer, batch_size: int, accelerator, pack=None, eval_pack=None):
    """(the ``ShardStream`` of packed blocks over the corpus files, held-out blocks). Without ``--validation_file``
    the first ``--streaming_validation_examples`` texts of the corpus (in file order) are held out, as
    :func:`load_corpus` holds them out, and the shards skip them; with it, ``val_texts`` are."""
    files = [str(p) for p in corpus_files(run.train_file, run.train_dir)]
    sample_by = getattr(run, "sample_by", "line")
    hold_out: dict[str, int] = {}
    held: list[str] = []
    val = val_texts
    if not run.validation_file:
        for path in files:
            if len(held) >= run.streaming_validation_examples:
                break
            texts = file_texts(path, run.text_column, sample_by)
            got = [ex["text"] for _, ex in zip(range(run.streaming_validation_examples - len(held)), texts)]
            hold_out[path] = len(got)
            held += got
        val = datasets_from_texts(held)
    read = text_reader(tokenizer, run.max_seq_length, pack, run.text_column, sample_by, hold_out)

    def prepare(block: dict, shard: int, position: int, epoch: int) -> dict:
        return {**block, "seed": example_seed(run.seed, epoch, record_index(shard, position))}

    stream = ShardStream(files, read, prepare, collate_blocks, batch_size, accelerator.num_processes,
                         accelerator.process_index, run.seed, shuffle_chunk=run.stream_shuffle_chunk,
                         source=run.train_dir or files[0])
    stream.warn_if_uneven(accelerator.print)
    accelerator.print(f"streaming {len(files)} text files, about {len(files) / accelerator.num_processes:.1f} per "
                      "process")
    val_blocks = [b["input_ids"] for _, b in zip(range(run.max_eval_blocks),
                                                 pack_corpus(val, tokenizer, run.max_seq_length,
                                                             pack=eval_pack or pack))]
    return stream, val_blocks


def datasets_from_texts(texts: list[str]):
    import datasets

    return datasets.Dataset.from_dict({"text": texts})


def text_probe(encoders: dict[str, Encoder | list[Encoder]], tokenizer, run: TextRun,
               device: torch.device) -> dict[str, float]:
    """Linear probe and kNN on labelled sentences (``--eval_train_file`` / ``--eval_test_file``) for each encoder
    (``{"": trained, "random_init_": [fresh, ...]}``), on the last layer and on all layers."""
    train_x, train_y = load_labelled_text(run.eval_train_file)
    test_x, test_y = load_labelled_text(run.eval_test_file)
    texts = {"train": train_x, "test": test_x}

    def batches(split: str):
        data, bs = texts[split], run.per_device_eval_batch_size
        for i in range(0, len(data), bs):
            yield collate_texts(tokenizer, data[i:i + bs], run.max_seq_length)

    return probe_encoders(encoders, batches, train_y, test_y, device, all_layers=True)


def block_sample(val_blocks: list[list[int]], n: int = 4) -> dict[str, Any]:
    """A few held-out blocks as a batch, for the export check."""
    return {"input_ids": torch.tensor(val_blocks[:n])}


def size_overrides(run: TextModel, family: str) -> dict[str, int]:
    """--hidden_size / --num_layers / --num_heads over the ``--model_size`` preset of ``family`` (the MLP 4x the
    width, as BERT and GPT-2; heads width / 64, at least 2), checked to divide."""
    out: dict[str, int] = {}
    if run.hidden_size:
        out.update(hidden_size=run.hidden_size, intermediate_size=4 * run.hidden_size,
                   num_heads=max(2, run.hidden_size // 64))
    if run.num_layers:
        out["num_layers"] = run.num_layers
    if run.num_heads:
        out["num_heads"] = run.num_heads
    preset = TRANSFORMER_SIZES[run.model_size]
    width, heads = out.get("hidden_size", preset["hidden_size"]), out.get("num_heads", preset["num_heads"])
    if width % heads:
        raise SelfsupError(f"hidden size {width} is not a multiple of the {heads} attention heads")
    return out


__all__ = ["TextRun", "TextModel", "add_text_args", "get_tokenizer", "load_text", "get_causal_tokenizer", "text_blocks",
           "text_probe", "block_sample", "size_overrides"]
