"""What a shard is for each modality, and how its records are read and made into examples, for
``selfsup.streaming.ShardStream`` (``--streaming``): each process opens only its own shards.

* a **file shard**: one data file; text (``.txt/.jsonl/.json/.csv/.parquet``), images and image-text pairs in
  HF-layout ``.parquet`` files, and the ``.arrow`` files of a ``save_to_disk`` folder (``--dataset_name``), read a
  record batch at a time (only the columns used, nothing decoded until the record is trained on);
* a **folder shard**: ``shard_size`` consecutive files (sorted) of a folder of images or audio (or of an audio file
  list, or of a dataset folder's audio rows): listing a folder reads no image or clip.

A record's identity is its shard and its position in the shard (``selfsup.streaming.record_index``); the per-example
seeds and views come from it. Bad records are skipped and counted (or stop the run, as the modality's policy says)
when they are met, not up front.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from selfsup.errors import SelfsupError

SHARD_SIZE = 1000   # files of a folder per shard


def groups(items: Sequence[Any], size: int) -> list[list[Any]]:
    """``items`` cut into folder shards of ``size`` (the last may be shorter)."""
    size = max(1, size)
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


# -- tables: parquet files and save_to_disk arrow files -------------------------------------------------------------
def saved_files(folder: str | Path, split: str = "train") -> list[Path]:
    """The ``.arrow`` files of a ``save_to_disk`` folder (a DatasetDict: of its ``split``), in their order."""
    root = Path(folder)
    if (root / "dataset_dict.json").is_file():
        root = root / split
        if not root.is_dir():
            raise SelfsupError(f"{folder}: dataset has no {split!r} split")
    state = root / "state.json"
    if not state.is_file():
        raise SelfsupError(f"{folder}: not a dataset folder written by save_to_disk (no state.json)")
    files = [root / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
    if not files:
        raise SelfsupError(f"{folder}: the dataset has no data files")
    return files


def table_schema(path: str | Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if str(path).endswith(".parquet"):
            return pq.read_schema(path)
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).schema
    except Exception as err:  # noqa: BLE001 - any reader error becomes one line naming the file
        raise SelfsupError(f"{path}: cannot read as a table ({str(err).strip().splitlines()[0]})") from None


def table_rows(path: str | Path, columns: Sequence[str], batch_rows: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of a parquet or arrow file (only ``columns``), a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if str(path).endswith(".parquet"):
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=list(columns))
        for batch in batches:
            yield from batch.to_pylist()
        return
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            yield from batch.select(list(columns)).to_pylist()


def table_num_rows(path: str | Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if str(path).endswith(".parquet"):
        return pq.ParquetFile(path).metadata.num_rows
    with pa.memory_map(str(path)) as source:
        return sum(b.num_rows for b in pa.ipc.open_stream(source))


def table_columns(path: str | Path, image_column: str | None, label_column: str | None,
                  text_column: str | None = None, want_text: bool = False) -> tuple[str, str | None, str | None, list]:
    """(image column, label column, text column, class names) of a table file, guessed as the in-memory loaders
    guess them (``image_data``, ``image_text``)."""
    from selfsup.modalities.image_data import _guess_image_column, _guess_label_column, _hf_features
    from selfsup.modalities.image_text import _text_column

    schema = table_schema(path)
    features = _hf_features(schema)
    img = image_column or _guess_image_column(schema.names, features, schema)
    if img not in schema.names:
        raise SelfsupError(f"{path}: no image column{f' {img!r}' if img else ''}; name one with --image_column "
                           f"(columns: {', '.join(schema.names)})")
    lab = label_column or _guess_label_column(schema.names, features)
    if lab is not None and lab not in schema.names:
        raise SelfsupError(f"{path}: no label column {lab!r} (columns: {', '.join(schema.names)})")
    text = _text_column(schema.names, text_column, str(path)) if want_text else None
    names = features.get(lab, {}).get("names") if lab else None
    return img, lab, text, names


def _label(value: Any) -> int:
    """An integer class id, else -1 (class-name strings need every row to be numbered; a stream has not read them)."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else -1


# -- images ---------------------------------------------------------------------------------------------------------
class ImageStream:
    """The training images of a streamed run: ``shards`` and :meth:`read` for ``ShardStream``; ``len()`` the
    records listed (bad images are only found when met). ``skipped`` counts bad images this process met."""

    def __init__(self, train_dir: str | None = None, train_file: Sequence[str] | str | None = None,
                 dataset_name: str | None = None, image_column: str | None = None, label_column: str | None = None,
                 bad_images: str = "skip", shard_size: int = SHARD_SIZE) -> None:
        from selfsup.data import check_files
        from selfsup.modalities.image_data import folder_entries

        given = [x for x in (train_dir, train_file, dataset_name) if x]
        if len(given) != 1:
            raise SelfsupError("--streaming images need one of --train_dir, --train_file or --dataset_name (a "
                               "save_to_disk folder)")
        self.bad_images, self.skipped, self.skip_examples = bad_images, {}, {}
        self.class_names, self.columns = None, None
        if train_dir:
            entries, self.class_names = folder_entries(train_dir, label_column)
            self.shards: list[Any] = groups(entries, shard_size)
            self.num_records, self.source = len(entries), str(train_dir)
        else:
            files = check_files([train_file] if isinstance(train_file, str) else list(train_file), [".parquet"],
                                what="image parquet file") if train_file else saved_files(dataset_name)
            img, lab, _, self.class_names = table_columns(files[0], image_column, label_column)
            self.columns = (img, lab)
            self.shards = [str(f) for f in files]
            self.num_records = sum(table_num_rows(f) for f in files)
            self.source = str(train_file[0] if isinstance(train_file, (list, tuple)) else train_file or dataset_name)

    def __len__(self) -> int:
        return self.num_records

    def read(self, shard: Any) -> Iterator[Any]:
        """The image entries of a shard (``image_data.ImageEntry``), undecoded."""
        from selfsup.modalities.image_data import ImageEntry, _image_source

        if isinstance(shard, list):
            yield from shard
            return
        img, lab = self.columns
        for i, row in enumerate(table_rows(shard, [img] + ([lab] if lab else []))):
            yield ImageEntry(f"{shard}[{i}]", _image_source(row[img], Path(shard).parent),
                             _label(row[lab]) if lab else -1)

    def decode(self, entry: Any):
        """The RGB image of ``entry``, or None when it is bad (counted; ``bad_images="error"``: a one-line error)."""
        from selfsup.modalities.image_data import BadImage, check_image, decode_image

        try:
            check_image(entry, scan="header")      # size limits from the header before decoding
            return decode_image(entry)
        except BadImage as err:
            if self.bad_images == "error":
                raise SelfsupError(f"{entry.name}: {err.reason}") from None
            self.skipped[err.kind] = self.skipped.get(err.kind, 0) + 1
            self.skip_examples.setdefault(err.kind, f"{entry.name}: {err.reason}")
            return None

    def head(self, n: int):
        """The first ``n`` good images of the first shard, as an ``ImageSet`` (pictures, export samples)."""
        from selfsup.modalities.image_data import ImageSet

        return ImageSet(list(itertools.islice(self.read(self.shards[0]), 4 * n)), bad_images="skip", max_examples=n,
                        source=self.source)


# -- image-text pairs -------------------------------------------------------------------------------------------------
class PairStream(ImageStream):
    """Streamed image-text pairs: records are ``image_text.Pair``; captions from a text column, else templated from
    the class names (``image_text``); captions are tokenized when a pair is trained on."""

    def __init__(self, train_dir: str | None = None, train_file: Sequence[str] | str | None = None,
                 dataset_name: str | None = None, image_column: str | None = None, text_column: str | None = None,
                 label_column: str | None = None, templates: Sequence[str] = (), bad_input: str = "skip",
                 shard_size: int = SHARD_SIZE) -> None:
        from selfsup.modalities.image_text import _from_rows, metadata_pairs

        self.templates, self.text_column, self.templated = list(templates), None, False
        super().__init__(train_dir, train_file, dataset_name, image_column, label_column, bad_input, shard_size)
        if train_dir:                               # listing: the pairs of the metadata or of the class folders
            root = Path(train_dir)
            if any(p.suffix in (".jsonl", ".csv") for p in root.rglob("metadata.*")):
                pairs, names, self.templated = metadata_pairs(root, text_column, label_column, self.templates)
            else:
                entries = [e for shard in self.shards for e in shard]
                pairs, names, self.templated = _from_rows(entries, None, self.class_names, str(root), self.templates)
            self.class_names, self.shards = names, groups(pairs, shard_size)
        else:
            img, lab, self.text_column, names = table_columns(self.shards[0], image_column, label_column, text_column,
                                                              want_text=True)
            self.columns, self.class_names = (img, lab), names
            if self.text_column is None:
                _from_rows([], None, names, self.source, self.templates)   # the one-line error when there are none
                self.templated = True

    def read(self, shard: Any) -> Iterator[Any]:
        from selfsup.modalities.image_data import ImageEntry, _image_source
        from selfsup.modalities.image_text import Pair, _caption_cell, templated

        if isinstance(shard, list):
            yield from shard
            return
        img, lab = self.columns
        cols = [img] + [c for c in (lab, self.text_column) if c]
        per_class = templated(self.class_names, self.templates) if self.text_column is None else None
        for i, row in enumerate(table_rows(shard, cols)):
            label = _label(row[lab]) if lab else -1
            captions = _caption_cell(row[self.text_column]) if per_class is None else \
                (per_class[label] if 0 <= label < len(per_class) else ())
            yield Pair(ImageEntry(f"{shard}[{i}]", _image_source(row[img], Path(shard).parent), label), captions, label)

    def captions(self, limit: int = 200_000) -> list[str]:
        """Distinct captions of the first ``limit`` pairs in shard order (what the caption tokenizer learns on)."""
        if self.templated and self.class_names:
            from selfsup.modalities.image_text import templated

            return list(dict.fromkeys(c for caps in templated(self.class_names, self.templates) for c in caps))
        seen: dict[str, None] = {}
        for n, pair in enumerate(p for shard in self.shards for p in self.read_captions(shard)):
            if n >= limit:
                break
            seen.update(dict.fromkeys(c for c in pair if isinstance(c, str) and c.strip()))
        return list(seen)

    def read_captions(self, shard: Any) -> Iterator[tuple[str, ...]]:
        from selfsup.modalities.image_text import _caption_cell

        if isinstance(shard, list):
            yield from (p.captions for p in shard)
        else:
            yield from (_caption_cell(r[self.text_column]) for r in table_rows(shard, [self.text_column]))

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"skipped {sum(self.skipped.values())} pairs" + (f": {kinds}" if kinds else "") + " (this process)"

    def reject(self, name: str, kind: str, reason: str) -> None:
        if self.bad_images == "error":
            raise SelfsupError(f"{name}: {reason}")
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        self.skip_examples.setdefault(kind, f"{name}: {reason}")

    def caption_ids(self, pair: Any, tokenizer, context_length: int) -> list[list[int]] | None:
        """Token ids of the pair's captions that fit the text context, or None (counted) when none does."""
        captions = [c for c in pair.captions if isinstance(c, str) and c.strip()]
        if not captions:
            self.reject(pair.entry.name, "empty caption" if pair.captions else "no caption", "image has no caption")
            return None
        ids = tokenizer(captions, add_special_tokens=True)["input_ids"]
        fits = [x for x in ids if len(x) <= context_length]
        if not fits:
            self.reject(pair.entry.name, "caption too long", f"caption is {max(map(len, ids))} tokens, longer than "
                                                             f"the text context of {context_length}")
            return None
        return fits


# -- audio ------------------------------------------------------------------------------------------------------------
class AudioStream:
    """Streamed training clips: folder shards of ``shard_size`` entries (``audio_data.AudioEntry``: a folder's files,
    the paths of file lists, a dataset folder's rows; listed, not opened). :meth:`example` reads a clip's header,
    skips it when shorter than ``min_duration``, crops ``max_duration`` at a place drawn from ``(seed, epoch,
    index)`` (``selfsup.data.example_rng``, as ``AudioDataset``) and decodes only that span."""

    def __init__(self, entries: Sequence[Any], source: str, max_duration: float | None, min_duration: float,
                 on_bad_audio: str, seed: int, shard_size: int = SHARD_SIZE, target_sr: int = 16_000) -> None:
        from selfsup.modalities.audio_data import SkipStats

        self.shards, self.source, self.seed, self.on_bad_audio = groups(list(entries), shard_size), source, seed, \
            on_bad_audio
        self.target_sr, self.min_samples = target_sr, int(min_duration * target_sr)
        self.max_samples = None if max_duration is None else max(1, int(max_duration * target_sr))
        self.num_records = len(entries)
        self.skipped = SkipStats(total=len(entries))

    def __len__(self) -> int:
        return self.num_records

    def read(self, shard: list[Any]) -> Iterator[Any]:
        return iter(shard)

    def example(self, entry: Any, epoch: int, index: int) -> dict[str, Any] | None:
        from selfsup.data import example_rng, example_seed
        from selfsup.modalities.audio_data import BadAudio, decode, probe_audio

        try:
            n = probe_audio(entry, self.target_sr)
            if n < self.min_samples:
                raise BadAudio("too short", f"shorter than min_duration ({n / self.target_sr:.3f} s)")
            excess = n - (self.max_samples or n)
            start = int(example_rng(self.seed, epoch, index).integers(0, excess + 1)) if excess > 0 else 0
            wave = decode(entry, self.target_sr, start, self.max_samples)
            if wave.numel() == 0 or not bool(wave.isfinite().all()):
                raise BadAudio("unreadable", "decoded to no samples or to non-finite values")
        except BadAudio as err:
            if self.on_bad_audio == "error" and err.kind != "too short":
                raise SelfsupError(f"{entry.path}: {err.reason}") from None
            self.skipped.add(err, entry.path)
            return None
        out = {"input_values": wave, "length": wave.numel(), "index": index, "start": start,
               "seed": example_seed(self.seed, epoch, index)}
        if entry.label is not None:
            out["label"] = entry.label
        return out


# -- text ---------------------------------------------------------------------------------------------------------------
def text_reader(tokenizer, block_size: int, pack: Callable | None = None, text_column: str | None = None,
                sample_by: str = "line", hold_out: dict[str, int] | None = None) -> Callable[[str], Iterator[dict]]:
    """``read(file)``: the packed blocks of a text file (``modalities.text``: blank texts dropped, each 1,000 texts
    tokenized and cut into blocks as ``pack_corpus`` does), in order. ``hold_out`` ``{file: n}``: the first ``n``
    texts of those files are the validation texts, not trained on."""
    from selfsup.modalities.text import pack_function

    pack_fn = (pack or pack_function)(tokenizer, block_size)

    def read(path: str) -> Iterator[dict]:
        texts = (ex["text"] for ex in file_texts(path, text_column, sample_by))
        if (hold_out or {}).get(path):
            texts = itertools.islice(texts, hold_out[path], None)
        while chunk := list(itertools.islice(texts, 1000)):
            yield from ({"input_ids": ids} for ids in pack_fn({"text": chunk})["input_ids"])

    return read


def file_texts(path: str, column: str | None = None, sample_by: str = "line"):
    """The non-blank texts of one corpus file, streamed (``modalities.text``: the ``text`` column, or ``column``)."""
    from types import SimpleNamespace

    from selfsup.modalities.text import clean, find_text_column, load_files

    ds = load_files([Path(path)], streaming=True, sample_by=sample_by)
    if ds.column_names is None:    # a streamed file whose features are not known until read: its first row's
        ds_names = SimpleNamespace(column_names=list(next(iter(ds), {}) or {}))
        return clean(ds, find_text_column(ds_names, path, column))
    return clean(ds, find_text_column(ds, path, column))


__all__ = ["file_texts", "ImageStream", "PairStream", "AudioStream", "text_reader", "saved_files", "table_rows", "groups", "SHARD_SIZE"]
