"""Text: the token-embedding adapter, corpus loading, tokenizer training (WordPiece for BERT; byte-level BPE or
characters for GPT), packing, collation.

Corpora load through HF ``datasets`` from ``.txt/.json/.jsonl/.csv/.parquet`` files, folders of them, a saved
dataset folder or a Hub name, in memory or streamed. The built-in default corpus is CPython's
``pydoc_data.topics`` (about 460,000 characters of English prose), so a recipe runs with no data at all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from selfsup.data import check_files, files_in_dir, suffix_of
from selfsup.dropout import Dropout
from selfsup.errors import SelfsupError
from selfsup.modalities.tokenizer_train import train_byte_level_bpe, train_char_level, train_wordpiece
from selfsup.types import Adapter, Batch, Tokens

BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TextAdapter(Adapter):
    """Token ids -> embeddings (BERT style): word (+ token type 0) embeddings; then learned positions and,
    if ``embedding_norm``, LayerNorm and dropout.

    batch: ``input_ids`` (B, N) long and optionally ``attention_mask`` (B, N), 1 = real token.
    ``roberta_positions``: positions as RoBERTa / data2vec text number them (``transformers``'
    ``create_position_ids_from_input_ids``): real tokens at rows ``pad_token_id + 1 + i``, padded tokens at row
    ``pad_token_id``; the table then has ``max_positions + pad_token_id + 1`` rows. Otherwise BERT's 0, 1, ...
    ``pad_token_id=None``: no padding row (GPT-2's ``wte``: every row is trained; ``type_vocab_size=0`` and
    ``embedding_norm=False`` give GPT-2's embeddings, word + position then dropout).
    """

    batch_keys = ("input_ids", "attention_mask")

    def __init__(self, vocab_size: int, hidden_size: int, max_positions: int = 512, type_vocab_size: int = 2,
                 pad_token_id: int | None = 0, dropout: float = 0.1, layer_norm_eps: float = 1e-12,
                 embedding_norm: bool = True, roberta_positions: bool = False) -> None:
        super().__init__()
        self.hidden_size, self.vocab_size, self.pad_token_id = hidden_size, vocab_size, pad_token_id
        if roberta_positions and pad_token_id is None:
            raise ValueError("roberta_positions need a pad_token_id")
        self.position_offset = pad_token_id + 1 if roberta_positions else 0
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions + self.position_offset, hidden_size)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden_size) if type_vocab_size else None
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if embedding_norm else nn.Identity()
        self.dropout = Dropout(dropout)
        for emb in (self.word_embeddings, self.position_embeddings, self.token_type_embeddings):
            if emb is not None:
                nn.init.normal_(emb.weight, std=0.02)
        if pad_token_id is not None:
            self.word_embeddings.weight.data[pad_token_id].zero_()
        if roberta_positions:
            self.position_embeddings.weight.data[pad_token_id].zero_()

    @property
    def max_positions(self) -> int:
        """The longest sequence the position table holds."""
        return self.position_embeddings.num_embeddings - self.position_offset

    def content_prefixes(self) -> tuple[str, ...]:
        return ("word_embeddings.", "token_type_embeddings.")

    def position_prefixes(self) -> tuple[str, ...]:
        return ("position_embeddings.", "norm.")

    def embed(self, batch: Batch) -> Tokens:
        ids: Tensor = batch["input_ids"]
        x = self.word_embeddings(ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings.weight[0]
        mask = batch.get("attention_mask")
        padding_mask = None if mask is None else mask == 0
        return Tokens(x=x, padding_mask=padding_mask, targets={"ids": ids})

    def input_ids(self, batch: Batch) -> Tensor:
        return batch["input_ids"]

    def with_input_ids(self, batch: Batch, ids: Tensor) -> dict[str, Any]:
        """``batch`` with ``input_ids`` replaced by ``ids`` (B, N'); an ``attention_mask`` is cut to N'."""
        out = {**batch, "input_ids": ids}
        mask = batch.get("attention_mask")
        if mask is not None and mask.shape[1] != ids.shape[1]:
            out["attention_mask"] = mask[:, : ids.shape[1]]
        return out

    def class_embeddings(self, name: str) -> Tensor:
        if name == "ids":
            return self.word_embeddings.weight
        return super().class_embeddings(name)

    def target_size(self, name: str) -> int:
        if name == "ids":
            return self.vocab_size
        return super().target_size(name)

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None, start: int = 0) -> Tensor:
        """Adds the position embeddings; ``start``: the position of the first token (a continuation, no padding)."""
        if not self.position_offset:
            if start + x.shape[1] > self.max_positions:
                raise ValueError(f"positions {start}..{start + x.shape[1] - 1} exceed max_positions "
                                 f"{self.max_positions}")
            return self.dropout(self.norm(x + self.position_embeddings.weight[start: start + x.shape[1]]))
        if start:
            raise ValueError("start needs positions without a padding offset")
        if x.shape[1] > self.max_positions:
            raise ValueError(f"sequence length {x.shape[1]} exceeds max_positions {self.max_positions}")
        real = torch.ones(x.shape[:2], dtype=torch.long, device=x.device) if padding_mask is None \
            else (~padding_mask).long()
        positions = (real.cumsum(dim=1) + self.pad_token_id) * real + self.pad_token_id * (1 - real)
        return self.dropout(self.norm(x + self.position_embeddings(positions)))


# -- corpus loading ---------------------------------------------------------------------------------------------
def check_text_file(path: Path, probe_bytes: int = 1 << 22) -> None:
    """A one-line error if ``path`` looks binary or is not UTF-8 (checked on its first 4 MiB)."""
    if suffix_of(path) == ".parquet":
        return
    with open(path, "rb") as f:
        head = f.read(probe_bytes)
    if b"\x00" in head:
        raise SelfsupError(f"{path}: looks like a binary file, not text (contains NUL bytes)")
    try:
        head.decode("utf-8") if len(head) < probe_bytes else _decode_prefix(head)
    except UnicodeDecodeError as err:
        raise SelfsupError(f"{path}: not UTF-8 text (invalid byte at offset {err.start})") from None


def _decode_prefix(head: bytes) -> None:
    import codecs

    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)


def corpus_files(files: Sequence[str] | None = None, folder: str | None = None) -> list[Path]:
    """The checked list of corpus files from ``--train_file``/``--train_dir`` (or the given ones)."""
    paths = check_files(files, extensions=list(BUILDERS), what="text file") if files else \
        files_in_dir(folder, list(BUILDERS))
    for p in paths:
        if p.stat().st_size == 0:
            raise SelfsupError(f"{p}: text file is empty")
        check_text_file(p)
    kinds = {BUILDERS[suffix_of(p)] for p in paths}
    if len(kinds) > 1:
        raise SelfsupError(f"{paths[0].parent}: mixes file types {sorted(kinds)}; use one type per corpus")
    return paths


SAMPLE_BY = ("line", "paragraph", "document")


def load_files(paths: list[Path], streaming: bool, sample_by: str = "line"):
    """The files as one ``datasets`` split. Text files give one example per line (``sample_by="line"``), per
    paragraph or per file (``"document"``, line breaks kept: what a character-level model reads)."""
    import datasets

    builder = BUILDERS[suffix_of(paths[0])]
    extra = {"sample_by": sample_by, "keep_linebreaks": True} if builder == "text" and sample_by != "line" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split="train", streaming=streaming,
                                   **extra)
    except Exception as err:  # noqa: BLE001 - any reader error becomes one line naming the files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SelfsupError(f"{paths[0]}{' (and others)' if len(paths) > 1 else ''}: cannot be read as "
                           f"{builder} ({first})") from None
    return ds


def load_named(name: str, config: str | None, streaming: bool):
    """A dataset folder written by ``save_to_disk``, a local dataset script-free folder, or a Hub name."""
    import datasets

    path = Path(name)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if streaming:
                ds = ds.to_iterable_dataset() if isinstance(ds, datasets.Dataset) else ds
        else:
            ds = datasets.load_dataset(name, config, streaming=streaming)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SelfsupError(f"{name}: cannot load dataset ({first})") from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if "train" not in ds:
            raise SelfsupError(f"{name}: dataset has no 'train' split (splits: {', '.join(ds)})")
        return ds["train"], ds.get("validation")
    return ds, None


def builtin_corpus():
    """CPython's ``pydoc_data.topics``: the Python reference's prose, one paragraph an example."""
    import datasets
    from pydoc_data.topics import topics

    paragraphs = [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n") if p.strip()]
    return datasets.Dataset.from_dict({"text": paragraphs})


def find_text_column(ds, source: str, column: str | None) -> str:
    names = list(ds.column_names or [])
    if column:
        if column not in names:
            raise SelfsupError(f"{source}: no column {column!r} (columns: {', '.join(names)})")
        return column
    if "text" in names:
        return "text"
    if len(names) == 1:
        return names[0]
    raise SelfsupError(f"{source}: no 'text' column; name one with --text_column (columns: {', '.join(names)})")


def load_corpus(train_file: Sequence[str] | None = None, train_dir: str | None = None,
                dataset_name: str | None = None, dataset_config_name: str | None = None,
                validation_file: Sequence[str] | None = None, text_column: str | None = None, streaming: bool = False,
                max_train_samples: int | None = None, validation_split_percentage: float = 5.0, seed: int = 42,
                streaming_validation_examples: int = 1000, sample_by: str = "line"):
    """(train, validation, source) with one ``text`` column each; blank lines dropped. With no data given, the
    built-in corpus (``pydoc_data.topics``).

    Validation comes from ``validation_file``, the dataset's own split, or ``validation_split_percentage`` of
    the training text (drawn from ``seed``); a stream holds out its first ``streaming_validation_examples``.
    ``sample_by``: what one example of a text file is (``load_files``).
    """
    val = None
    if train_file or train_dir:
        paths = corpus_files(train_file, train_dir)
        source = str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}"
        train = load_files(paths, streaming, sample_by)
    elif dataset_name:
        source = dataset_name
        train, val = load_named(dataset_name, dataset_config_name, streaming)
    else:
        source = "builtin:pydoc_data.topics"
        train = builtin_corpus()
        if streaming:
            train = train.to_iterable_dataset()
    if validation_file:
        val = load_files(corpus_files(validation_file), streaming, sample_by)
    col = find_text_column(train, source, text_column)
    train = clean(train, col)
    if val is not None:
        val = clean(val, find_text_column(val, "validation data", text_column))
    if not streaming:
        if len(train) == 0:
            raise SelfsupError(f"{source}: contains no text (only blank lines)")
        if max_train_samples:
            train = train.select(range(min(max_train_samples, len(train))))
        if val is None:
            share = validation_split_percentage / 100
            if share <= 0 or len(train) < 20:
                raise SelfsupError(f"{source}: too little text to hold out validation data; "
                                   "give --validation_file or more text")
            split = train.train_test_split(test_size=share, seed=seed, shuffle=True)
            train, val = split["train"], split["test"]
    else:
        if next(iter(train), None) is None:
            raise SelfsupError(f"{source}: contains no text (only blank lines)")
        if val is None:
            n = streaming_validation_examples
            train, val = train.skip(n), train.take(n)
    return train, val, source


def clean(ds, column: str):
    """Keep only ``column``, renamed ``text``, without blank entries."""
    if column != "text":
        ds = ds.rename_column(column, "text")
    drop = [c for c in (ds.column_names or []) if c != "text"]
    if drop:
        ds = ds.remove_columns(drop)
    return ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)


# -- tokenizer --------------------------------------------------------------------------------------------------
def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True, max_length: int = 512):
    """A BERT-style WordPiece tokenizer trained on ``texts``; a transformers tokenizer. Deterministic: the same
    texts give the same vocabulary in any process (``selfsup.modalities.tokenizer_train``; HF's own
    ``WordPieceTrainer`` breaks ties by hash-map order)."""
    return train_wordpiece(texts, vocab_size, lowercase=lowercase, max_length=max_length)


def train_causal_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 8000, max_length: int = 1024):
    """A GPT tokenizer trained deterministically on ``texts``: GPT-2-style byte-level BPE (``kind="bpe"``, at most
    ``vocab_size`` tokens) or one token per character (``"char"``), each with ``<|endoftext|>`` as bos/eos/unk."""
    if kind == "bpe":
        return train_byte_level_bpe(texts, vocab_size, max_length=max_length)
    if kind == "char":
        return train_char_level(texts, max_length=max_length)
    raise SelfsupError(f"unknown tokenizer kind {kind!r}; choose bpe or char")


def load_tokenizer(path: str, masked_lm: bool = True):
    """A tokenizer saved with ``save_pretrained`` (local folder; remote code stays off). ``masked_lm``: it must
    have a mask and a pad token."""
    from transformers import AutoTokenizer

    folder = Path(path)
    if not folder.exists():
        raise SelfsupError(f"{path}: tokenizer not found")
    if not folder.is_dir() or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt",
                                                                         "tokenizer_config.json")):
        raise SelfsupError(f"{path}: not a tokenizer folder (no tokenizer.json, vocab.txt or tokenizer_config.json)")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        raise SelfsupError(f"{path}: cannot load tokenizer ({str(err).strip().splitlines()[0]})") from None
    if masked_lm and (tok.mask_token_id is None or tok.pad_token_id is None):
        raise SelfsupError(f"{path}: tokenizer has no mask or pad token; masked LM needs both")
    return tok


def sample_texts(ds, limit: int) -> Iterator[str]:
    for i, example in enumerate(ds):
        if i >= limit:
            return
        yield example["text"]


# -- packing and collation ----------------------------------------------------------------------------------------
def pack_function(tokenizer, block_size: int):
    """A batched ``datasets.map`` function: tokenize, join documents with [SEP], cut into blocks of
    ``block_size`` ids that each start with [CLS] and end with [SEP]; the tail shorter than a block is dropped."""
    inner = block_size - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

    backend = getattr(tokenizer, "backend_tokenizer", None)

    def pack(batch: dict[str, list]) -> dict[str, list]:
        if backend is not None:  # the Rust tokenizer directly: faster, and no over-length warnings
            ids = [e.ids for e in backend.encode_batch(batch["text"], add_special_tokens=False)]
        else:
            ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = [t for doc in ids for t in (*doc, sep)]
        n = len(stream) // inner * inner
        return {"input_ids": [[cls, *stream[i:i + inner], sep] for i in range(0, n, inner)]}

    return pack


def causal_pack_function(tokenizer, context: int, stride: int | None = None):
    """A batched ``datasets.map`` function for causal LMs: tokenize, end every document with the eos token (when
    the tokenizer has one), and cut the stream into blocks of exactly ``context + 1`` ids, block ``k`` =
    ``stream[k * stride : k * stride + context + 1]``: a model reads a block's first ``context`` ids and predicts
    its last ``context``. With the default ``stride = context`` every id after the first is a target exactly once;
    a smaller stride gives overlapping windows (more alignments of the same text, as nanoGPT's random offsets).
    Only whole blocks are made; the tail of each batch of documents that does not fill one is dropped
    (``run_clm``'s ``group_texts`` kept it as a short block, huggingface/transformers#23424)."""
    eos = tokenizer.eos_token_id
    end = [] if eos is None else [eos]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    step = stride or context
    if not 0 < step <= context:
        raise ValueError(f"stride must be in [1, {context}], got {step}")

    def pack(batch: dict[str, list]) -> dict[str, list]:
        if backend is not None:
            ids = [e.ids for e in backend.encode_batch(batch["text"], add_special_tokens=False)]
        else:
            ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        stream = [t for doc in ids for t in (*doc, *end)]
        count = max(0, (len(stream) - 1 - context) // step + 1)
        return {"input_ids": [stream[k * step:k * step + context + 1] for k in range(count)]}

    return pack


def pack_corpus(ds, tokenizer, block_size: int, desc: str = "tokenize and pack", pack=None):
    """Tokenized fixed-length blocks (cached by ``datasets`` for file-backed corpora). ``pack``: a factory
    ``(tokenizer, block_size) -> map function`` (default BERT's ``pack_function``; ``causal_pack_function``)."""
    kwargs: dict[str, Any] = dict(batched=True, batch_size=1000, remove_columns=["text"])
    if not hasattr(ds, "n_shards") or hasattr(ds, "cache_files"):
        kwargs["desc"] = desc
    return ds.map((pack or pack_function)(tokenizer, block_size), **kwargs)


def collate_blocks(examples: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Fixed-length blocks -> ``{"input_ids": (B, N)}`` (no padding needed), and ``example_seeds`` (B,) when every
    block carries a ``seed`` (objectives then draw each block's mask from its own generator)."""
    batch = {"input_ids": torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)}
    if examples and all("seed" in e for e in examples):
        batch["example_seeds"] = torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)
    return batch


def collate_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, Tensor]:
    """Sentences -> padded ``input_ids`` and ``attention_mask`` (B, N)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def load_labelled_text(path: str) -> tuple[list[str], list[int]]:
    """Labelled sentences for probes: ``label sentence`` lines (SST-2 style) or csv/json with text + label."""
    file = check_files([path], extensions=list(BUILDERS), what="labelled text file")[0]
    check_text_file(file)
    if BUILDERS[suffix_of(file)] == "text":
        texts, labels = [], []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            head, _, sentence = line.strip().partition(" ")
            if not head.lstrip("-").isdigit() or not sentence:
                raise SelfsupError(f"{path}:{n}: expected 'label sentence', got {line[:40]!r}")
            labels.append(int(head))
            texts.append(sentence)
    else:
        ds = load_files([file], streaming=False)
        col = find_text_column(ds.remove_columns([c for c in ds.column_names if c == "label"]), path, None)
        if "label" not in ds.column_names:
            raise SelfsupError(f"{path}: no 'label' column")
        texts, labels = list(ds[col]), [int(v) for v in ds["label"]]
    if len(set(labels)) < 2:
        raise SelfsupError(f"{path}: needs at least two classes, found {len(set(labels))}")
    return texts, labels
