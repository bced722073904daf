"""Image data: finding, checking and decoding labelled or unlabelled images, every one as RGB.

Sources (one at a time): a folder (class subfolders give the labels, sorted as torchvision's ``ImageFolder``;
or an HF ``imagefolder`` layout with ``metadata.jsonl``/``metadata.csv``; or a flat folder, unlabelled),
``.parquet`` files in the HF-datasets layout (an ``image`` struct of ``bytes``/``path`` and a ``label``,
possibly a ClassLabel whose names sit in the file's ``huggingface`` metadata), or a Hub name / a
``save_to_disk`` folder through ``datasets``. With none, scikit-learn's bundled digits (1,797 8×8 images).

Images stay encoded (paths or bytes) and are decoded in ``__getitem__``, but bad ones are found up front:
:class:`ImageSet` opens every image once (header: format and size; then a cheap decode to catch truncation,
JPEG at 1/8 scale through PIL's ``draft``: 50,000 CIFAR JPEGs take about 3 s on two cores, 1 s with
``scan="header"``). ``bad_images="skip"`` leaves a bad image out and counts it per reason in ``skipped``;
``"error"`` stops with one line naming the file or row. Mode conversion is never "bad": see :func:`to_rgb`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from selfsup.data import check_files, suffix_of
from selfsup.errors import SelfsupError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
BAD_IMAGE_POLICIES = ("skip", "error")
SCANS = ("decode", "header")
MAX_PIXELS = 8192 * 8192
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")


@dataclass(frozen=True)
class ImageEntry:
    """One image. ``name`` is what messages show (the file, or ``train.parquet[12]``); ``source`` the file path,
    the encoded bytes, or an (H, W[, C]) uint8 array already decoded; ``label`` -1 when unknown."""

    name: str
    source: str | bytes | np.ndarray
    label: int = -1


class BadImage(Exception):
    """An image that cannot be used; ``kind`` is its key in :attr:`ImageSet.skipped` (``"too small"``...)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


# -- modes -----------------------------------------------------------------------------------------------------
def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    * 16/32-bit integer and float modes (``I;16``, ``I;16B``, ``I``, ``F``): the image's actual range
      ``[min, max]`` is stretched to 0..255 (a 12-bit scan stored in 16 bits would be nearly black divided by
      257, and clipping would saturate it); a constant image becomes 0.
    * modes with alpha (``RGBA``, ``LA``, ``PA``, palettes with a transparent entry): composited on black,
      ``rgb * alpha / 255``. Black because it is what premultiplied alpha gives, and it makes the result
      independent of the colour a file happens to store under fully transparent pixels.
    * everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``HSV``...): PIL's own conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in HIGH_BIT_MODES:
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(values.min()), float(values.max())
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and ("transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")):
        mode, image = "RGBA", image.convert("RGBA")
    if mode in ALPHA_MODES:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # rounded rgb * alpha / 255
        return Image.fromarray(rgb.astype(np.uint8), "RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise BadImage("unreadable", f"cannot convert image mode {mode} to RGB ({err})") from None


# -- opening and checking ----------------------------------------------------------------------------------------
def open_image(entry: ImageEntry) -> Image.Image:
    """The (lazily decoded) PIL image of ``entry``; BadImage when it is missing, empty or not an image.

    PIL's own decompression-bomb limit (an error above ``2 * Image.MAX_IMAGE_PIXELS``) counts as too large."""
    source = entry.source
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise BadImage("empty", "no image bytes (0 bytes)")
        fp: Any = io.BytesIO(source)
    else:
        if not os.path.isfile(source):
            raise BadImage("not found", "image file not found")
        if os.path.getsize(source) == 0:
            raise BadImage("empty", "image file is empty (0 bytes)")
        fp = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except Image.DecompressionBombError as err:
        raise BadImage("too large", f"image too large to open ({err})") from None
    except Exception as err:  # noqa: BLE001 - PIL raises several classes for undecodable data
        raise BadImage("unreadable", f"cannot be decoded as an image ({_first_line(err)})") from None


def check_image(entry: ImageEntry, min_size: int = 2, max_pixels: int = MAX_PIXELS, scan: str = "decode") -> None:
    """Raise BadImage if ``entry`` cannot be used. The size comes from the header, before any decoding, so a
    giant image is never decoded. ``scan="decode"`` then decodes it (JPEG at 1/8 scale via ``draft``, which
    still reads the whole entropy-coded stream) to catch truncated files; ``"header"`` only runs PIL's
    ``verify()`` (chunk CRCs for PNG, almost nothing for JPEG) and leaves decode failures to ``__getitem__``."""
    image = open_image(entry)
    width, height = image.size
    if min(width, height) < min_size:
        raise BadImage("too small", f"image is {width}x{height}, smaller than min_size {min_size} on a side")
    if width * height > max_pixels:
        raise BadImage("too large", f"image is {width}x{height}, more than max_pixels {max_pixels}")
    try:
        if scan == "header":
            image.verify()
        else:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except Exception as err:  # noqa: BLE001
        raise BadImage("unreadable", f"cannot be decoded ({_first_line(err)})") from None


def decode_image(entry: ImageEntry) -> Image.Image:
    """The fully decoded image of ``entry`` as RGB (:func:`to_rgb`); BadImage if it fails."""
    image = open_image(entry)
    try:
        image.load()
    except Exception as err:  # noqa: BLE001
        raise BadImage("unreadable", f"cannot be decoded ({_first_line(err)})") from None
    return to_rgb(image)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- the data set --------------------------------------------------------------------------------------------------
class ImageSet(Dataset):
    """Map-style images: ``{"image": PIL RGB image, "label": int (-1 if unknown)}``, decoded on access.

    ``check()`` (run by the constructor unless ``check=False``) looks at every entry once (:func:`check_image`)
    and keeps the good ones, at most ``max_examples`` (the first ones, in order). ``bad_images``: ``"skip"``
    counts each bad image in ``skipped`` (reason -> count; ``skip_examples`` keeps the first ``name: reason``
    of each) and logs a warning; ``"error"`` raises a one-line :class:`SelfsupError`. An image that passed the
    check but fails to decode later (``scan="header"``, or a file changed) follows the same policy: raise, or
    count it and return the next good image (counted in the process that met it; DataLoader workers keep their
    own counts).
    """

    def __init__(self, entries: Sequence[ImageEntry], class_names: list[str] | None = None, *,
                 bad_images: str = "skip", min_size: int = 2, max_pixels: int = MAX_PIXELS, scan: str = "decode",
                 max_examples: int | None = None, source: str = "images", check: bool = True) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise SelfsupError(f"{source}: bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, "
                               f"not {bad_images!r}")
        if scan not in SCANS:
            raise SelfsupError(f"{source}: scan must be one of {', '.join(SCANS)}, not {scan!r}")
        self.entries, self.class_names, self.source = list(entries), class_names, source
        self.bad_images, self.min_size, self.max_pixels, self.scan = bad_images, min_size, max_pixels, scan
        self.max_examples = max_examples
        self.skipped: dict[str, int] = {}
        self.skip_examples: dict[str, str] = {}
        self.checked = False
        self._bad: set[int] = set()
        if check:
            self.check()

    def check(self) -> "ImageSet":
        """Validate every entry once, keep the good ones (idempotent); returns self."""
        if self.checked:
            return self
        good = []
        for entry in self.entries:
            if self.max_examples is not None and len(good) >= self.max_examples:
                break
            try:
                check_image(entry, self.min_size, self.max_pixels, self.scan)
            except BadImage as err:
                self._reject(entry, err)
                continue
            good.append(entry)
        self.entries, self.checked = good, True
        if not good:
            first = next(iter(self.skip_examples.values()), "no images given")
            raise SelfsupError(f"{self.source}: no usable images ({self.summary()}; first: {first})")
        if self.skipped:
            logger.warning("%s: %s (first: %s)", self.source, self.summary(), next(iter(self.skip_examples.values())))
        return self

    def _reject(self, entry: ImageEntry, err: BadImage) -> None:
        if self.bad_images == "error":
            raise SelfsupError(f"{entry.name}: {err.reason}")
        self.skipped[err.kind] = self.skipped.get(err.kind, 0) + 1
        self.skip_examples.setdefault(err.kind, f"{entry.name}: {err.reason}")

    def summary(self) -> str:
        """``"skipped 3 images: 2 unreadable, 1 too small"`` (or ``"skipped 0 images"``)."""
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
        return f"skipped {sum(self.skipped.values())} images" + (f": {kinds}" if kinds else "")

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    @property
    def num_classes(self) -> int:
        """Classes named, else the largest label + 1 (0 when unlabelled)."""
        return len(self.class_names) if self.class_names else max(self.labels, default=-1) + 1

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (already checked), with the same class names, policy and skip counts."""
        out = ImageSet([self.entries[i] for i in indices], self.class_names, bad_images=self.bad_images,
                       min_size=self.min_size, max_pixels=self.max_pixels, scan=self.scan, source=self.source,
                       check=False)
        out.skipped, out.skip_examples, out.checked = dict(self.skipped), dict(self.skip_examples), self.checked
        return out

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image index {index} out of range for {len(self)} images")
        for k in range(len(self)):
            i = (index + k) % len(self)
            if i in self._bad:
                continue
            entry = self.entries[i]
            try:
                return {"image": decode_image(entry), "label": int(entry.label)}
            except BadImage as err:
                self._reject(entry, err)
                self._bad.add(i)
        raise SelfsupError(f"{self.source}: no image could be decoded ({self.summary()})")


def split_images(images: ImageSet, test_fraction: float = 0.1, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """(train, held out): a random ``test_fraction`` of the images (at least one), drawn from ``seed``."""
    if not 0 < test_fraction < 1 or len(images) < 2:
        raise SelfsupError(f"{images.source}: cannot hold out {test_fraction} of {len(images)} images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, int(round(len(images) * test_fraction)))
    return images.subset(sorted(order[n_test:])), images.subset(sorted(order[:n_test]))


# -- sources -------------------------------------------------------------------------------------------------------
def load_images(train_dir: str | None = None, train_file: str | Sequence[str] | None = None,
                dataset_name: str | None = None, dataset_config: str | None = None, split: str = "train",
                image_column: str | None = None, label_column: str | None = None, bad_images: str = "skip",
                min_size: int = 2, max_pixels: int = MAX_PIXELS, max_examples: int | None = None,
                scan: str = "decode") -> ImageSet:
    """Checked images from one source (see the module docstring); with none, scikit-learn's digits.

    ``max_examples`` keeps the first N usable images (in file / row order). ``split`` applies to
    ``dataset_name``; ``image_column`` / ``label_column`` override the guesses for parquet files and datasets
    (and name the label column of an imagefolder's metadata).
    """
    given = [x for x in (train_dir, train_file, dataset_name) if x]
    if len(given) > 1:
        raise SelfsupError(f"{given[0]}: give one image source (train_dir, train_file or dataset_name)")
    if train_dir:
        (entries, names), source = folder_entries(train_dir, label_column), str(train_dir)
    elif train_file:
        files = [train_file] if isinstance(train_file, (str, Path)) else list(train_file)
        (entries, names), source = parquet_entries(files, image_column, label_column), str(files[0])
    elif dataset_name:
        entries, names = dataset_entries(dataset_name, dataset_config, split, image_column, label_column)
        source = dataset_name
    else:
        logger.warning("no image data given: using scikit-learn's built-in digits "
                       "(1,797 8x8 grayscale images, 10 classes)")
        entries, names, source = digits_entries(), [str(d) for d in range(10)], "builtin:digits"
    return ImageSet(entries, names, bad_images=bad_images, min_size=min_size, max_pixels=max_pixels, scan=scan,
                    max_examples=max_examples, source=source)


def digits_entries() -> list[ImageEntry]:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to 0..255 uint8, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return [ImageEntry(f"digits[{i}]", pixels[i], int(y)) for i, y in enumerate(digits.target)]


def folder_entries(folder: str | Path, label_column: str | None = None) -> tuple[list[ImageEntry], list[str] | None]:
    """(entries, class names) of a folder: HF imagefolder metadata if present, else class subfolders
    (torchvision ``ImageFolder``: every non-hidden subfolder is a class, sorted; images below it, recursively),
    else the images of a flat folder, unlabelled."""
    root = Path(folder)
    if not root.is_dir():
        raise SelfsupError(f"{folder}: folder not found")
    metadata = sorted(p for p in root.rglob("metadata.*") if p.suffix in (".jsonl", ".csv"))
    if metadata:
        return metadata_entries(metadata, label_column)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        files = _images_below(root)
        if not files:
            raise SelfsupError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
        return [ImageEntry(str(p), str(p)) for p in files], None
    entries = []
    for label, name in enumerate(classes):
        files = _images_below(root / name)
        if not files:
            raise SelfsupError(f"{root / name}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
        entries += [ImageEntry(str(p), str(p), label) for p in files]
    loose = [p for p in root.iterdir() if p.is_file() and suffix_of(p) in IMAGE_EXTENSIONS]
    if loose:
        logger.warning("%s: %d images beside the class folders are ignored", folder, len(loose))
    return entries, classes


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and suffix_of(p) in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def metadata_entries(files: Sequence[Path], label_column: str | None) -> tuple[list[ImageEntry], list[str] | None]:
    """Rows of HF imagefolder ``metadata.jsonl`` / ``metadata.csv`` files: ``file_name`` relative to the
    metadata's folder; the label from ``label_column`` (or ``label``), strings mapped to sorted class names."""
    rows: list[tuple[Path, dict]] = []
    for meta in files:
        try:
            if meta.suffix == ".jsonl":
                lines = meta.read_text(encoding="utf-8").splitlines()
                records = [json.loads(ln) for ln in lines if ln.strip()]
            else:
                with open(meta, newline="", encoding="utf-8") as f:
                    records = list(csv.DictReader(f))
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
            raise SelfsupError(f"{meta}: cannot read image metadata ({_first_line(err)})") from None
        for record in records:
            if not isinstance(record, dict) or "file_name" not in record:
                raise SelfsupError(f"{meta}: every metadata row needs a file_name")
            rows.append((meta.parent / record["file_name"], record))
    column = label_column or ("label" if any("label" in r for _, r in rows) else None)
    if column is not None and rows and column not in rows[0][1]:
        raise SelfsupError(f"{files[0]}: no label column {column!r} (columns: {', '.join(rows[0][1])})")
    labels, names = encode_labels([r.get(column) for _, r in rows] if column else [None] * len(rows), str(files[0]))
    return [ImageEntry(str(path), str(path), y) for (path, _), y in zip(rows, labels)], names


def encode_labels(values: Sequence[Any], where: str,
                  names: list[str] | None = None) -> tuple[list[int], list[str] | None]:
    """Integer labels (None / "" -> -1); strings become indices into their sorted set, returned as names."""
    present = [v for v in values if v is not None and v != ""]
    if present and all(isinstance(v, str) for v in present):
        if all(v.lstrip("-").isdigit() for v in present):  # a CSV's "3"
            return [int(v) if v not in (None, "") else -1 for v in values], names
        names = sorted(set(present))
        index = {n: i for i, n in enumerate(names)}
        return [index[v] if v not in (None, "") else -1 for v in values], names
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        raise SelfsupError(f"{where}: labels must be integer class ids or class names")
    return [int(v) if v is not None else -1 for v in values], names


def parquet_files(files: Sequence[str | Path], image_column: str | None = None, label_column: str | None = None,
                  extra_column: Callable[[Sequence[str], str], str | None] | None = None):
    """Per HF-layout parquet file: ``(path, entries, class names so far, extra)``. The image struct (``bytes``, or
    a ``path`` relative to the file) and the label (a ClassLabel's names read from the ``huggingface`` schema
    metadata) become :class:`ImageEntry` rows; ``extra_column(columns, path)`` may name one more column whose
    values come back as ``extra`` (image-text pairs: the caption), else ``extra`` is None."""
    import pyarrow.parquet as pq

    names: list[str] | None = None
    for path in check_files(files, [".parquet"], what="image parquet file"):
        try:
            schema = pq.read_schema(path)
        except Exception as err:  # noqa: BLE001
            raise SelfsupError(f"{path}: cannot read parquet ({_first_line(err)})") from None
        features = _hf_features(schema)
        img_col = image_column or _guess_image_column(schema.names, features, schema)
        if img_col not in schema.names:
            raise SelfsupError(f"{path}: no image column{f' {img_col!r}' if img_col else ''}; name one with "
                               f"image_column (columns: {', '.join(schema.names)})")
        lab_col = label_column or _guess_label_column(schema.names, features)
        if lab_col is not None and lab_col not in schema.names:
            raise SelfsupError(f"{path}: no label column {lab_col!r} (columns: {', '.join(schema.names)})")
        extra_col = extra_column(schema.names, str(path)) if extra_column else None
        table = pq.read_table(path, columns=[img_col] + [c for c in (lab_col, extra_col) if c])
        file_names = features.get(lab_col, {}).get("names") if lab_col else None
        if names is not None and file_names is not None and file_names != names:
            raise SelfsupError(f"{path}: class names differ from those of {files[0]}")
        names = names or file_names
        values = table.column(img_col).to_pylist()
        labels, names = encode_labels(table.column(lab_col).to_pylist() if lab_col else [None] * len(values),
                                      str(path), names)
        entries = [ImageEntry(f"{path}[{i}]", _image_source(v, path.parent), y)
                   for i, (v, y) in enumerate(zip(values, labels))]
        yield path, entries, names, table.column(extra_col).to_pylist() if extra_col else None


def parquet_entries(files: Sequence[str | Path], image_column: str | None = None,
                    label_column: str | None = None) -> tuple[list[ImageEntry], list[str] | None]:
    """Rows of HF-layout parquet files (:func:`parquet_files`) and the class names."""
    entries: list[ImageEntry] = []
    names: list[str] | None = None
    for _, more, names, _ in parquet_files(files, image_column, label_column):
        entries += more
    return entries, names


def _hf_features(schema) -> dict[str, dict]:
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        return json.loads(raw)["info"]["features"] if raw else {}
    except (ValueError, KeyError, TypeError):
        return {}


def _guess_image_column(columns: Sequence[str], features: dict, schema=None) -> str | None:
    for col in columns:
        if isinstance(features.get(col), dict) and features[col].get("_type") == "Image":
            return col
    if schema is not None:
        for col in columns:
            t = schema.field(col).type
            if hasattr(t, "get_field_index") and t.get_field_index("bytes") >= 0:
                return col
    return next((c for c in ("image", "img") if c in columns), None)


def _guess_label_column(columns: Sequence[str], features: dict) -> str | None:
    for col in columns:
        if isinstance(features.get(col), dict) and features[col].get("_type") == "ClassLabel":
            return col
    return next((c for c in ("label", "labels") if c in columns), None)


def _image_source(value: Any, root: Path) -> str | bytes:
    """Bytes of an image cell (a {bytes, path} struct or raw bytes), else its path (relative to ``root``)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not value:
        return b""  # neither bytes nor path: counted as empty
    path = Path(value)
    return str(path if path.is_absolute() or path.exists() else root / path)


def dataset_entries(name: str, config: str | None = None, split: str = "train", image_column: str | None = None,
                    label_column: str | None = None) -> tuple[list[ImageEntry], list[str] | None]:
    """Rows of a ``save_to_disk`` folder or a Hub data set (``datasets.load_dataset``), images undecoded."""
    import datasets

    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise SelfsupError(f"{name}: dataset has no {split!r} split (splits: {', '.join(ds)})")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except SelfsupError:
        raise
    except Exception as err:  # noqa: BLE001 - any loader error becomes one line naming the data set
        raise SelfsupError(f"{name}: cannot load dataset ({_first_line(err)})") from None
    features = ds.features
    col = image_column or next((c for c, f in features.items() if isinstance(f, datasets.Image)),
                               next((c for c in ("image", "img") if c in ds.column_names), None))
    if col not in ds.column_names:
        raise SelfsupError(f"{name}: no image column{f' {col!r}' if col else ''}; name one with image_column "
                           f"(columns: {', '.join(ds.column_names)})")
    if isinstance(features[col], datasets.Image):
        ds = ds.cast_column(col, datasets.Image(decode=False))
    lab = label_column or next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)),
                               next((c for c in ("label", "labels") if c in ds.column_names), None))
    if lab is not None and lab not in ds.column_names:
        raise SelfsupError(f"{name}: no label column {lab!r} (columns: {', '.join(ds.column_names)})")
    table = ds.with_format("arrow")[:]
    names = features[lab].names if lab and isinstance(features[lab], datasets.ClassLabel) else None
    values = table.column(col).to_pylist()
    labels, names = encode_labels(table.column(lab).to_pylist() if lab else [None] * len(values), name, names)
    return [ImageEntry(f"{name}[{i}]", _image_source(v, Path(name)), y)
            for i, (v, y) in enumerate(zip(values, labels))], names
