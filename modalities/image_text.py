"""Image-text pairs: loading, checking, caption templates, the caption tokenizer, training views and collation.

Sources (one at a time), each giving images (decoded lazily, checked up front as ``image_data.ImageSet`` does)
and captions:

* a folder in the HF ``imagefolder`` layout with ``metadata.jsonl`` / ``metadata.csv``: ``file_name`` and a text
  column (``text``, ``caption`` or ``--text_column``; a cell may hold a list of captions);
* ``.parquet`` files in the HF-datasets layout with an image column and a text column;
* a Hub name or a ``save_to_disk`` folder (``datasets``) with an image and a text column;
* any *labelled* image set without a text column (class folders, a parquet with a ClassLabel, an imagefolder with
  a ``label``): its captions are made from the class names with prompt templates (CLIP's: "a photo of a {}.",
  18 of them by default), one drawn per example and epoch;
* nothing: scikit-learn's digits (1,797 8x8 images) with templated captions of the digit names.

**Bad input** is skipped and counted per reason (``skipped``), or stops with one line naming the file or row
(``bad_input="error"``): an image that is missing, empty, unreadable, tiny or huge (``image_data.check_image``),
a row with no caption, an empty caption, a caption longer than the text context (after tokenization; checked by
:meth:`ImageTextSet.tokenize`); a class list with duplicates is always an error.

**Caption tokenizer.** :func:`train_caption_tokenizer` learns a CLIP-style byte-level BPE with end-of-word
markers (``</w>``) deterministically (``tokenizer_train.learn_merges``, ties to the smallest pair) and returns a
``transformers`` ``CLIPTokenizer`` built on that vocabulary, so ``CLIPProcessor`` / ``SiglipProcessor`` reload it
and tokenize exactly as training did. Its vocabulary holds every byte and its end-of-word form, so no caption
ever maps to the unknown token (which is ``<|endoftext|>`` in CLIP, and would move the pooled position).
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from selfsup.data import example_seed
from selfsup.errors import SelfsupError
from selfsup.modalities.image_data import (BadImage, ImageEntry, _image_source, check_image, decode_image,
                                           digits_entries, encode_labels, folder_entries, parquet_files)
from selfsup.modalities.image_views import VIEW_STREAM, single_thread
from selfsup.modalities.tokenizer_train import count_words, learn_merges
from selfsup.types import Adapter, Batch, Tokens

logger = logging.getLogger(__name__)

# CLIP's CIFAR-10 prompt templates (openai/CLIP, notebooks/Prompt_Engineering_for_ImageNet.ipynb, "CIFAR10")
CLIP_TEMPLATES = ("a photo of a {}.", "a blurry photo of a {}.", "a black and white photo of a {}.",
                  "a low contrast photo of a {}.", "a high contrast photo of a {}.", "a bad photo of a {}.",
                  "a good photo of a {}.", "a photo of a small {}.", "a photo of a big {}.", "a photo of the {}.",
                  "a blurry photo of the {}.", "a black and white photo of the {}.",
                  "a low contrast photo of the {}.", "a high contrast photo of the {}.", "a bad photo of the {}.",
                  "a good photo of the {}.", "a photo of the small {}.", "a photo of the big {}.")
PIPELINE_TEMPLATE = "This is a photo of {}."  # transformers' zero-shot-image-classification default
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEXT_COLUMNS = ("text", "caption", "captions", "sentence")
BAD_INPUT_POLICIES = ("skip", "error")
SPECIALS = ("<|startoftext|>", "<|endoftext|>")   # bos 0, eos 1 (= pad); never id 2 (CLIPTextModel's old rule)
EOW, _MARK = "</w>", 0xF0000                        # end-of-word suffix; its one-character stand-in while learning


class NormedAdapter(Adapter):
    """An adapter whose output goes through a LayerNorm: CLIP's ViT normalises the patch embeddings, class token
    and positions before the first layer (``pre_layrnorm``). Attributes of the wrapped adapter are reachable
    (``num_prefix_tokens``, ``config``)."""

    def __init__(self, inner: Adapter, layer_norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.inner, self.hidden_size = inner, inner.hidden_size
        self.norm = nn.LayerNorm(inner.hidden_size, eps=layer_norm_eps)

    @property
    def num_prefix_tokens(self) -> int:
        return getattr(self.inner, "num_prefix_tokens", 0)

    @property
    def config(self):
        return self.inner.config

    def embed(self, batch: Batch) -> Tokens:
        return self.inner.embed(batch)

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None) -> Tensor:
        return self.inner.add_positions(x, padding_mask, structure)

    def add_prefix(self, x: Tensor) -> Tensor:
        return self.inner.add_prefix(x)

    batch_keys = property(lambda self: self.inner.batch_keys)
    batch_size = property(lambda self: self.inner.batch_size)
    target_size = property(lambda self: self.inner.target_size)
    target_to_input = property(lambda self: self.inner.target_to_input)
    decoder_positions = property(lambda self: self.inner.decoder_positions)

    def forward(self, batch: Batch) -> Tokens:
        tokens = self.inner(batch)
        tokens.x = self.norm(tokens.x)
        return tokens


# -- the caption tokenizer ------------------------------------------------------------------------------------
def _unmark(token: str) -> str:
    return "".join(chr(ord(ch) - _MARK) + EOW if ord(ch) >= _MARK else ch for ch in token)


def train_caption_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                            context_length: int = 77, attention_mask: bool = True):
    """A ``CLIPTokenizer`` (byte-level BPE, ``</w>`` end-of-word suffix, lower-cased, ``<|startoftext|> ...
    <|endoftext|>``) whose merges are learned deterministically on ``texts``; at most ``vocab_size`` tokens unless
    the 2 specials and the 512 byte symbols are more. ``attention_mask=False``: the tokenizer returns
    ``input_ids`` only (SigLIP's text tower sees the padding, as SigLIP's own tokenizer)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    shell = CLIPTokenizer(vocab={s: i for i, s in enumerate(SPECIALS)}, merges=[]).backend_tokenizer
    counts = count_words(texts, shell.normalizer, shell.pre_tokenizer, splits_on_space=False)
    marked = {w[:-1] + chr(_MARK + ord(w[-1])): n for w, n in sorted(counts.items()) if w}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    initial = alphabet + [chr(_MARK + ord(c)) for c in alphabet]
    learned = learn_merges(marked, vocab_size - len(SPECIALS), None, min_frequency, initial)
    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for token in learned.tokens:
        vocab.setdefault(_unmark(token), len(vocab))
    merges = [(_unmark(a), _unmark(b)) for a, b in learned.merges]
    names = ["input_ids", "attention_mask"] if attention_mask else ["input_ids"]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length, model_input_names=names)


# -- pairs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One image with its caption(s): ``captions`` holds one caption, several (any one is a positive), or a
    class's templated captions; ``label`` is the class (-1 when unknown)."""

    entry: ImageEntry
    captions: tuple[str, ...]
    label: int = -1


def check_class_names(names: Sequence[str], where: str) -> list[str]:
    """``names`` as a list; a one-line error naming the first repeated class (captions would not tell them apart)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        key = str(name).strip().lower()
        if not key:
            raise SelfsupError(f"{where}: class {i} has an empty name")
        if key in seen:
            raise SelfsupError(f"{where}: class names repeat: {name!r} at positions {seen[key]} and {i}")
        seen[key] = i
    return [str(n) for n in names]


def templated(class_names: Sequence[str], templates: Sequence[str] = CLIP_TEMPLATES) -> list[tuple[str, ...]]:
    """Per class, its captions: every template filled with the class name."""
    if not templates or any("{}" not in t for t in templates):
        raise SelfsupError("every caption template needs a '{}' where the class name goes")
    return [tuple(t.format(name) for t in templates) for name in class_names]


class ImageTextSet(Dataset):
    """Checked image-text pairs. ``check()`` (run by the constructor) keeps the pairs whose image opens and
    whose captions are there and not empty, at most ``max_examples``; :meth:`tokenize` then drops captions
    longer than the text context. Skips are counted per reason in ``skipped`` (``skip_examples``: the first
    ``name: reason`` of each). After :meth:`with_views`, items are training examples (see there)."""

    def __init__(self, pairs: Sequence[Pair], class_names: list[str] | None = None, *, bad_input: str = "skip",
                 source: str = "pairs", max_examples: int | None = None, templated_captions: bool = False) -> None:
        if bad_input not in BAD_INPUT_POLICIES:
            raise SelfsupError(f"{source}: bad_input must be one of {', '.join(BAD_INPUT_POLICIES)}, not {bad_input!r}")
        self.pairs, self.source, self.bad_input = list(pairs), source, bad_input
        self.class_names = check_class_names(class_names, source) if class_names else None
        self.templated = templated_captions
        self.skipped: dict[str, int] = {}
        self.skip_examples: dict[str, str] = {}
        self.ids: list[list[list[int]]] | None = None
        self.transform: Callable | None = None
        self.seed, self.epoch = 0, 0
        self._check(max_examples)

    def _reject(self, name: str, kind: str, reason: str) -> None:
        if self.bad_input == "error":
            raise SelfsupError(f"{name}: {reason}")
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        self.skip_examples.setdefault(kind, f"{name}: {reason}")

    def _check(self, max_examples: int | None) -> None:
        good = []
        for pair in self.pairs:
            if max_examples is not None and len(good) >= max_examples:
                break
            if not pair.captions:
                self._reject(pair.entry.name, "no caption", "image has no caption")
                continue
            if any(not isinstance(c, str) or not c.strip() for c in pair.captions):
                self._reject(pair.entry.name, "empty caption", "caption is empty")
                continue
            try:
                check_image(pair.entry)
            except BadImage as err:
                self._reject(pair.entry.name, err.kind, err.reason)
                continue
            good.append(pair)
        self.pairs = good
        self._report()

    def _report(self) -> None:
        if not self.pairs:
            first = next(iter(self.skip_examples.values()), "no pairs given")
            raise SelfsupError(f"{self.source}: no usable image-text pairs ({self.summary()}; first: {first})")
        if self.skipped:
            logger.warning("%s: %s (first: %s)", self.source, self.summary(), next(iter(self.skip_examples.values())))

    def summary(self) -> str:
        """``"skipped 3 pairs: 2 empty caption, 1 not found"`` (or ``"skipped 0 pairs"``)."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"skipped {sum(self.skipped.values())} pairs" + (f": {kinds}" if kinds else "")

    def captions(self) -> list[str]:
        """Every distinct caption, in first-seen order (what a tokenizer is trained on)."""
        return list(dict.fromkeys(c for p in self.pairs for c in p.captions))

    @property
    def labels(self) -> list[int]:
        return [p.label for p in self.pairs]

    def tokenize(self, tokenizer, context_length: int) -> "ImageTextSet":
        """Token ids of every caption (each distinct caption once); a caption longer than ``context_length``
        tokens (specials included) is dropped, and a pair left with none is skipped ("caption too long")."""
        distinct = self.captions()
        encoded = dict(zip(distinct, tokenizer(distinct, add_special_tokens=True)["input_ids"]))
        kept, ids = [], []
        for pair in self.pairs:
            fits = [encoded[c] for c in pair.captions if len(encoded[c]) <= context_length]
            if not fits:
                longest = max(len(encoded[c]) for c in pair.captions)
                self._reject(pair.entry.name, "caption too long",
                             f"caption is {longest} tokens, longer than the text context of {context_length}")
                continue
            kept.append(pair)
            ids.append(fits)
        self.pairs, self.ids = kept, ids
        self._report()
        return self

    def subset(self, indices: Sequence[int]) -> "ImageTextSet":
        out = object.__new__(ImageTextSet)
        out.__dict__.update(self.__dict__)
        out.pairs = [self.pairs[i] for i in indices]
        out.ids = None if self.ids is None else [self.ids[i] for i in indices]
        out.skipped, out.skip_examples = dict(self.skipped), dict(self.skip_examples)
        return out

    def with_views(self, transform: Callable, seed: int) -> "ImageTextSet":
        """Items become training examples: ``{"pixel_values": (C, H, W), "input_ids": list[int], "label": int,
        "seed": int}``; the view is drawn from ``example_seed(seed, epoch, i, stream=2)`` (as ``ViewDataset``)
        and the caption (when there are several) from ``example_seed(seed, epoch, i)``."""
        if self.ids is None:
            raise SelfsupError(f"{self.source}: tokenize the captions before making training views")
        self.transform, self.seed = transform, seed
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for k in range(len(self)):
            i = (index + k) % len(self)
            pair = self.pairs[i]
            try:
                image = decode_image(pair.entry)
            except BadImage as err:
                self._reject(pair.entry.name, err.kind, err.reason)
                continue
            if self.transform is None:
                return {"image": image, "captions": pair.captions, "label": pair.label}
            return training_pair(image, self.ids[i], pair.label, self.transform, self.seed, self.epoch, index)
        raise SelfsupError(f"{self.source}: no image could be decoded ({self.summary()})")


def training_pair(image: Any, options: Sequence[list[int]], label: int, transform: Callable, seed: int, epoch: int,
                  index: int) -> dict[str, Any]:
    """Example ``index`` of ``epoch`` for training: the view of ``image`` drawn from ``example_seed(seed, epoch,
    index, stream=2)``, one of the caption ``options`` (token ids) chosen by ``example_seed(seed, epoch, index)``."""
    chosen = example_seed(seed, epoch, index)
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.default_generator.manual_seed(example_seed(seed, epoch, index, stream=VIEW_STREAM))
        pixels = transform(image)
    return {"pixel_values": pixels.as_subclass(Tensor), "input_ids": options[chosen % len(options)],
            "label": label, "seed": chosen}


def collate_pairs(examples: Sequence[dict[str, Any]], pad_token_id: int, pad_to: int | None = None,
                  attention_mask: bool = True) -> dict[str, Tensor]:
    """``{"pixel_values": (B, C, H, W), "input_ids": (B, L), ["attention_mask": (B, L)], "labels": (B,),
    "example_seeds": (B,)}``; captions right-padded with ``pad_token_id`` to the longest, or to ``pad_to``
    (SigLIP: the context length)."""
    length = pad_to or max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"], dtype=torch.long)
        mask[row, :len(e["input_ids"])] = 1
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "input_ids": ids,
             "labels": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
             "example_seeds": torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)}
    if attention_mask:
        batch["attention_mask"] = mask
    return batch


# -- sources --------------------------------------------------------------------------------------------------
def _caption_cell(value: Any) -> tuple[str, ...]:
    """A text cell as captions: a string is one caption, a list several; None / missing is none."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(v if isinstance(v, str) else "" for v in value)
    return (value if isinstance(value, str) else str(value),)


def _text_column(columns: Sequence[str], text_column: str | None, where: str) -> str | None:
    if text_column:
        if text_column not in columns:
            raise SelfsupError(f"{where}: no text column {text_column!r} (columns: {', '.join(columns)})")
        return text_column
    return next((c for c in TEXT_COLUMNS if c in columns), None)


def _from_rows(entries: list[ImageEntry], texts: list[tuple[str, ...]] | None, names: list[str] | None,
               where: str, templates: Sequence[str]) -> tuple[list[Pair], list[str] | None, bool]:
    """Pairs from entries and their captions, or templated captions from the class names."""
    if texts is not None:
        return [Pair(e, t, e.label) for e, t in zip(entries, texts)], names, False
    if not names:
        raise SelfsupError(f"{where}: no text column ({', '.join(TEXT_COLUMNS)}; or name one with --text_column) "
                           "and no class names to make captions from")
    captions = templated(check_class_names(names, where), templates)
    return [Pair(e, captions[e.label] if 0 <= e.label < len(names) else (), e.label) for e in entries], names, True


def metadata_pairs(folder: Path, text_column: str | None, label_column: str | None,
                   templates: Sequence[str]) -> tuple[list[Pair], list[str] | None, bool]:
    """Rows of an imagefolder's ``metadata.jsonl`` / ``metadata.csv``: captions from the text column, else
    templated from the labels."""
    rows: list[tuple[Path, dict]] = []
    files = sorted(p for p in folder.rglob("metadata.*") if p.suffix in (".jsonl", ".csv"))
    for meta in files:
        try:
            if meta.suffix == ".jsonl":
                records = [json.loads(ln) for ln in meta.read_text(encoding="utf-8").splitlines() if ln.strip()]
            else:
                with open(meta, newline="", encoding="utf-8") as f:
                    records = list(csv.DictReader(f))
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
            raise SelfsupError(f"{meta}: cannot read image metadata ({err})") from None
        for n, record in enumerate(records, 1):
            if not isinstance(record, dict) or "file_name" not in record:
                raise SelfsupError(f"{meta}:{n}: every metadata row needs a file_name")
            rows.append((meta.parent / record["file_name"], record))
    columns = sorted({k for _, r in rows for k in r})
    text = _text_column(columns, text_column, str(files[0]))
    label = label_column or ("label" if "label" in columns else None)
    labels, names = encode_labels([r.get(label) for _, r in rows] if label else [None] * len(rows), str(files[0]))
    entries = [ImageEntry(str(p), str(p), y) for (p, _), y in zip(rows, labels)]
    texts = [_caption_cell(r.get(text)) for _, r in rows] if text else None
    return _from_rows(entries, texts, names, str(files[0]), templates)


def parquet_pairs(files: Sequence[str | Path], image_column: str | None, text_column: str | None,
                  label_column: str | None, templates: Sequence[str]) -> tuple[list[Pair], list[str] | None, bool]:
    """Rows of HF-layout parquet files (``image_data.parquet_files``): the image struct, the caption column, else
    captions templated from the ClassLabel names in the files' ``huggingface`` metadata."""
    pairs: list[Pair] = []
    names, is_templated = None, False
    for path, entries, names, captions in parquet_files(
            files, image_column, label_column, lambda columns, where: _text_column(columns, text_column, where)):
        texts = [_caption_cell(v) for v in captions] if captions is not None else None
        more, names, is_templated = _from_rows(entries, texts, names, str(path), templates)
        pairs += more
    return pairs, names, is_templated


def dataset_pairs(name: str, config: str | None, split: str, image_column: str | None, text_column: str | None,
                  label_column: str | None, templates: Sequence[str]) -> tuple[list[Pair], list[str] | None, bool]:
    """Rows of a ``save_to_disk`` folder or a Hub data set with an image column and a text column (or labels)."""
    import datasets

    try:
        ds = datasets.load_from_disk(name) if Path(name).is_dir() else datasets.load_dataset(name, config, split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise SelfsupError(f"{name}: dataset has no {split!r} split (splits: {', '.join(ds)})")
            ds = ds[split]
    except SelfsupError:
        raise
    except Exception as err:  # noqa: BLE001
        raise SelfsupError(f"{name}: cannot load dataset ({str(err).strip().splitlines()[0]})") from None
    features = ds.features
    img = image_column or next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    if img not in ds.column_names:
        raise SelfsupError(f"{name}: no image column; name one with --image_column (columns: {', '.join(ds.column_names)})")
    if isinstance(features[img], datasets.Image):
        ds = ds.cast_column(img, datasets.Image(decode=False))
    text = _text_column(ds.column_names, text_column, name)
    lab = label_column or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    table = ds.with_format("arrow")[:]
    names = features[lab].names if lab and isinstance(features[lab], datasets.ClassLabel) else None
    labels, names = encode_labels(table.column(lab).to_pylist() if lab else [None] * len(ds), name, names)
    entries = [ImageEntry(f"{name}[{i}]", _image_source(v, Path(name)), y)
               for i, (v, y) in enumerate(zip(table.column(img).to_pylist(), labels))]
    texts = [_caption_cell(v) for v in table.column(text).to_pylist()] if text else None
    return _from_rows(entries, texts, names, name, templates)


def load_pairs(train_dir: str | None = None, train_file: str | Sequence[str] | None = None,
               dataset_name: str | None = None, dataset_config: str | None = None, split: str = "train",
               image_column: str | None = None, text_column: str | None = None, label_column: str | None = None,
               templates: Sequence[str] = CLIP_TEMPLATES, bad_input: str = "skip",
               max_examples: int | None = None) -> ImageTextSet:
    """Checked image-text pairs from one source (see the module docstring); with none, the digits."""
    given = [x for x in (train_dir, train_file, dataset_name) if x]
    if len(given) > 1:
        raise SelfsupError(f"{given[0]}: give one image-text source (train_dir, train_file or dataset_name)")
    if train_dir:
        root = Path(train_dir)
        if root.is_dir() and any(p.suffix in (".jsonl", ".csv") for p in root.rglob("metadata.*")):
            pairs, names, is_templated = metadata_pairs(root, text_column, label_column, templates)
        else:
            entries, names = folder_entries(train_dir, label_column)
            pairs, names, is_templated = _from_rows(entries, None, names, str(train_dir), templates)
        source = str(train_dir)
    elif train_file:
        files = [train_file] if isinstance(train_file, (str, Path)) else list(train_file)
        (pairs, names, is_templated), source = parquet_pairs(files, image_column, text_column, label_column,
                                                             templates), str(files[0])
    elif dataset_name:
        pairs, names, is_templated = dataset_pairs(dataset_name, dataset_config, split, image_column, text_column,
                                                   label_column, templates)
        source = dataset_name
    else:
        logger.warning("no image-text data given: using scikit-learn's built-in digits with captions made from "
                       "the digit names and prompt templates")
        pairs, names, is_templated = _from_rows(digits_entries(), None, list(DIGIT_NAMES), "builtin:digits",
                                                templates)
        source = "builtin:digits"
    return ImageTextSet(pairs, names, bad_input=bad_input, source=source, max_examples=max_examples,
                        templated_captions=is_templated)


__all__ = ["ImageTextSet", "Pair", "NormedAdapter", "load_pairs", "collate_pairs", "train_caption_tokenizer",
           "templated", "check_class_names", "CLIP_TEMPLATES", "PIPELINE_TEMPLATE", "DIGIT_NAMES"]
