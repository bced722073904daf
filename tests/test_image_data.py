"""Image loading: every mode to RGB with the right pixels, bad images skipped and counted or reported in one
line, labels from class folders, imagefolder metadata, HF parquet files and saved data sets, the real CIFAR-10
parquet, and the built-in digits."""
from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.errors import SelfsupError
from selfsup.modalities.image_data import ImageEntry, ImageSet, load_images, split_images, to_rgb

RNG = np.random.default_rng(0)


def rgb_array(h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg_bytes(h: int = 32, w: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_array(h, w)).save(buf, "JPEG")
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit gray) but holds almost no data: opening it is
    cheap, decoding it fails. A loader that decodes before checking the size calls it unreadable."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def write_bad_images(folder: Path) -> None:
    """One of each kind of bad image, beside two good ones."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_array()).save(folder / "good.png")
    Image.fromarray(rgb_array(16, 16)).save(folder / "good.jpg")
    jpg = jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (folder / "random.png").write_bytes(np.random.default_rng(1).bytes(300))
    (folder / "zero.png").write_bytes(b"")
    Image.fromarray(rgb_array(1, 1)).save(folder / "tiny.png")
    Image.fromarray(rgb_array(100, 100)).save(folder / "large.png")  # > max_pixels=64*64 in the tests


# -- modes -------------------------------------------------------------------------------------------------------
def test_rgb_is_returned_unchanged():
    image = Image.fromarray(rgb_array())
    assert to_rgb(image) is image


@pytest.mark.parametrize("mode, make, pixel, expected", [
    ("L", lambda: Image.fromarray(np.full((4, 4), 77, np.uint8)), (0, 0), (77, 77, 77)),
    ("1", lambda: Image.fromarray(np.eye(4, dtype=bool)), (1, 1), (255, 255, 255)),
    ("LA", lambda: Image.fromarray(np.dstack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 51, np.uint8)]), "LA"),
     (0, 0), (40, 40, 40)),
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), (0, 0), (0, 255, 255)),
    ("YCbCr", lambda: Image.new("YCbCr", (4, 4), (255, 128, 128)), (0, 0), (255, 255, 255)),
])
def test_simple_modes(mode, make, pixel, expected):
    image = make()
    assert image.mode == mode
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == image.size
    assert out.getpixel(pixel) == expected


def test_rgba_is_composited_on_black():
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (100, 200, 50, 255)   # opaque: unchanged
    a[0, 1] = (100, 200, 50, 0)     # transparent: black, whatever colour is stored
    a[1, 0] = (100, 200, 50, 51)    # 20 % alpha: colour * 0.2
    out = to_rgb(Image.fromarray(a, "RGBA"))
    assert out.getpixel((0, 0)) == (100, 200, 50)
    assert out.getpixel((1, 0)) == (0, 0, 0)
    assert out.getpixel((0, 1)) == (20, 40, 10)


def test_palette_with_transparency_goes_through_rgba(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)  # 0 white, 1 red
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0                         # index 0 is transparent
    image.save(tmp_path / "p.png")
    reread = Image.open(tmp_path / "p.png")
    assert reread.mode == "P" and "transparency" in reread.info
    out = to_rgb(reread)
    assert out.getpixel((0, 0)) == (0, 0, 0)  # transparent white -> black, not white
    assert out.getpixel((1, 1)) == (255, 0, 0)
    plain = Image.new("P", (2, 2), 1)
    plain.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert to_rgb(plain).getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16_bit_range_is_scaled_not_clipped(dtype):
    values = np.linspace(0, 4095, 64).round().astype(dtype).reshape(8, 8)
    image = Image.fromarray(values)
    assert image.mode in ("I;16", "I;16B")
    out = np.asarray(to_rgb(image))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255  # the 12 bits used span the full 8-bit range
    assert np.array_equal(out[..., 0], np.round(values.astype(np.float64) * 255 / 4095).astype(np.uint8))
    assert (out[..., 0] == out[..., 2]).all()


def test_32_bit_and_float_modes_are_scaled():
    ints = Image.fromarray(np.array([[-1000, 0], [500, 1000]], dtype=np.int32))
    assert ints.mode == "I"
    assert np.asarray(to_rgb(ints))[..., 0].tolist() == [[0, 128], [191, 255]]
    floats = Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    assert np.asarray(to_rgb(floats))[..., 0].tolist() == [[0, 64], [128, 255]]
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 7, np.int32)))).max() == 0  # constant image


def test_modes_from_files_load_as_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.linspace(0, 4095, 16).round().astype(np.uint16).reshape(4, 4)).save(tmp_path / "deep.png")
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "cmyk.tif")
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    images = load_images(train_dir=str(tmp_path))
    assert images.skipped == {}
    got = {Path(e.name).name: images[i]["image"] for i, e in enumerate(images.entries)}
    assert all(im.mode == "RGB" for im in got.values())
    assert got["gray.png"].getpixel((1, 1)) == (77, 77, 77)
    assert got["cmyk.tif"].getpixel((0, 0)) == (255, 255, 255)
    assert got["clear.png"].getpixel((0, 0)) == (0, 0, 0)
    deep = np.asarray(got["deep.png"])
    assert deep.min() == 0 and deep.max() == 255


# -- bad images --------------------------------------------------------------------------------------------------
def test_bad_images_are_skipped_and_counted(tmp_path, caplog):
    write_bad_images(tmp_path / "imgs")
    with caplog.at_level(logging.WARNING):
        images = load_images(train_dir=str(tmp_path / "imgs"), max_pixels=64 * 64)
    assert sorted(Path(e.name).name for e in images.entries) == ["good.jpg", "good.png"]
    assert images.skipped == {"unreadable": 2, "empty": 1, "too small": 1, "too large": 1}
    assert "zero.png" in images.skip_examples["empty"] and "tiny.png" in images.skip_examples["too small"]
    assert "skipped 5 images" in caplog.text
    assert [images[i]["image"].mode for i in range(2)] == ["RGB", "RGB"]
    assert [images[i]["label"] for i in range(2)] == [-1, -1]


@pytest.mark.parametrize("name, cause", [("truncated.jpg", "truncated"), ("random.png", "cannot be decoded"),
                                         ("zero.png", "empty"), ("tiny.png", "1x1"), ("large.png", "100x100")])
def test_error_policy_names_the_file_and_cause(tmp_path, name, cause):
    write_bad_images(tmp_path / "all")
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "good.png").write_bytes((tmp_path / "all" / "good.png").read_bytes())
    (folder / name).write_bytes((tmp_path / "all" / name).read_bytes())
    with pytest.raises(SelfsupError) as err:
        load_images(train_dir=str(folder), bad_images="error", max_pixels=64 * 64)
    msg = str(err.value)
    assert "\n" not in msg and str(folder / name) in msg and cause in msg


def test_large_images_are_refused_from_the_header(tmp_path):
    """Headers claiming 9000x9000 (over the default max_pixels) and 20000x20000 (over PIL's bomb limit):
    both are 'too large', not 'unreadable', so neither was decoded."""
    (tmp_path / "a.png").write_bytes(png_with_header_size(9000, 9000))
    (tmp_path / "b.png").write_bytes(png_with_header_size(20000, 20000))
    Image.fromarray(rgb_array()).save(tmp_path / "ok.png")
    images = load_images(train_dir=str(tmp_path))
    assert len(images) == 1 and images.skipped == {"too large": 2}
    small = load_images(train_dir=str(tmp_path), max_pixels=10 ** 10)  # now it is decoded, and fails
    assert small.skipped["unreadable"] == 1


def test_min_size_and_bad_policy_value(tmp_path):
    Image.fromarray(rgb_array(3, 3)).save(tmp_path / "three.png")
    Image.fromarray(rgb_array(8, 8)).save(tmp_path / "eight.png")
    assert len(load_images(train_dir=str(tmp_path))) == 2
    assert load_images(train_dir=str(tmp_path), min_size=4).skipped == {"too small": 1}
    with pytest.raises(SelfsupError, match="bad_images must be one of"):
        load_images(train_dir=str(tmp_path), bad_images="ignore")


def test_header_scan_leaves_truncation_to_getitem(tmp_path):
    jpg = jpeg_bytes()
    entries = [ImageEntry("cut.jpg", jpg[: len(jpg) // 2], 0), ImageEntry("fine.jpg", jpg, 1)]
    assert ImageSet(entries).skipped == {"unreadable": 1}  # the default decode scan finds it up front
    lazy = ImageSet(entries, scan="header")
    assert len(lazy) == 2 and lazy.skipped == {}
    assert lazy[0]["label"] == 1 and lazy.skipped == {"unreadable": 1}  # the next good image stands in
    strict = ImageSet(entries, scan="header", bad_images="error")
    with pytest.raises(SelfsupError, match=r"^cut\.jpg: cannot be decoded \(image file is truncated"):
        strict[0]


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(SelfsupError, match="no usable images"):
        load_images(train_dir=str(tmp_path))


# -- folders -----------------------------------------------------------------------------------------------------
def test_class_subfolders_give_sorted_labels(tmp_path):
    for cls, n in (("dog", 2), ("cat", 1), ("emu", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(rgb_array()).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "emu" / "deep").mkdir()
    Image.fromarray(rgb_array()).save(tmp_path / "emu" / "deep" / "x.jpg")
    (tmp_path / ".cache").mkdir()
    (tmp_path / "emu" / "notes.txt").write_text("not an image")
    images = load_images(train_dir=str(tmp_path))
    assert images.class_names == ["cat", "dog", "emu"]
    assert {Path(e.name).relative_to(tmp_path).as_posix(): e.label for e in images.entries} == {
        "cat/0.png": 0, "dog/0.png": 1, "dog/1.png": 1, "emu/0.png": 2, "emu/deep/x.jpg": 2}
    assert [images[i]["label"] for i in range(len(images))] == images.labels


def test_empty_class_folder_and_flat_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(rgb_array()).save(tmp_path / "a" / "x.png")
    with pytest.raises(SelfsupError, match=r"b: class folder has no images"):
        load_images(train_dir=str(tmp_path))
    flat = tmp_path / "a"
    images = load_images(train_dir=str(flat))
    assert images.class_names is None and images.labels == [-1]
    with pytest.raises(SelfsupError, match="folder not found"):
        load_images(train_dir=str(tmp_path / "missing"))


def test_imagefolder_metadata(tmp_path):
    for i in range(3):
        Image.fromarray(rgb_array()).save(tmp_path / f"{i}.png")
    rows = [{"file_name": "0.png", "label": "zebra"}, {"file_name": "1.png", "label": "ant"},
            {"file_name": "2.png", "label": "zebra"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    images = load_images(train_dir=str(tmp_path))
    assert images.class_names == ["ant", "zebra"] and images.labels == [1, 0, 1]
    (tmp_path / "metadata.jsonl").unlink()
    (tmp_path / "metadata.csv").write_text("file_name,kind\n0.png,3\n2.png,5\n")
    images = load_images(train_dir=str(tmp_path), label_column="kind")
    assert images.class_names is None and images.labels == [3, 5]
    assert [Path(e.name).name for e in images.entries] == ["0.png", "2.png"]


# -- parquet and datasets -------------------------------------------------------------------------------------------
def write_hf_parquet(path: Path) -> None:
    """Four rows as ``datasets`` writes them (an image struct, a ClassLabel in the schema's HF metadata): JPEG
    bytes, a path relative to the file, no bytes at all, JPEG bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    Image.fromarray(rgb_array(12, 12)).save(path.parent / "side.png")
    images = [{"bytes": jpeg_bytes(), "path": None}, {"bytes": None, "path": "side.png"},
              {"bytes": b"", "path": None}, {"bytes": jpeg_bytes(8, 8), "path": None}]
    hf = {"info": {"features": {"image": {"_type": "Image"},
                                "label": {"names": ["no", "yes"], "_type": "ClassLabel"}}}}
    table = pa.table({"image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "label": pa.array([1, 0, 1, 0], pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(hf)}), path)


def test_parquet_in_hf_layout(tmp_path):
    path = tmp_path / "train.parquet"
    write_hf_parquet(path)
    images = load_images(train_file=str(path))
    assert images.class_names == ["no", "yes"]
    assert len(images) == 3 and images.labels == [1, 0, 0] and images.skipped == {"empty": 1}
    assert images[1]["image"].size == (12, 12) and images[2]["image"].mode == "RGB"
    with pytest.raises(SelfsupError, match=r"train\.parquet\[2\]: no image bytes"):
        load_images(train_file=[str(path)], bad_images="error")
    assert len(load_images(train_file=[str(path), str(path)], max_examples=4)) == 4


def test_parquet_without_image_column_lists_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"], "label": [0]}), tmp_path / "t.parquet")
    with pytest.raises(SelfsupError, match=r"t\.parquet: no image column.*columns: text, label"):
        load_images(train_file=str(tmp_path / "t.parquet"))


def test_saved_dataset_with_guessed_columns(tmp_path):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine": datasets.ClassLabel(names=["x", "y", "z"])})
    pics = [Image.fromarray(rgb_array()) for _ in range(3)]
    ds = datasets.Dataset.from_dict({"img": pics, "fine": [2, 0, 1]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    images = load_images(dataset_name=str(tmp_path / "saved"))
    assert images.class_names == ["x", "y", "z"] and images.labels == [2, 0, 1]
    assert np.array_equal(np.asarray(images[0]["image"]), np.asarray(pics[0]))
    assert len(load_images(dataset_name=str(tmp_path / "saved"), split="test")) == 1
    with pytest.raises(SelfsupError, match="no image column 'picture'.*columns: img, fine"):
        load_images(dataset_name=str(tmp_path / "saved"), image_column="picture")


@pytest.mark.long
def test_real_cifar10_parquet(shared_data):
    folder = shared_data / "images" / "cifar10"
    if not (folder / "train.parquet").exists():
        pytest.skip("CIFAR-10 parquet absent")
    images = load_images(train_file=str(folder / "train.parquet"))
    assert len(images) == 50_000 and images.skipped == {}
    assert set(images.labels) == set(range(10)) and len(images.class_names) == 10
    assert images.class_names[0] == "airplane"
    for i in (0, 12_345, 49_999):
        image = images[i]["image"]
        assert image.mode == "RGB" and image.size == (32, 32)


# -- built-in digits, max_examples, split ------------------------------------------------------------------------
def test_digits_default(caplog):
    with caplog.at_level(logging.INFO):
        images = load_images()
    assert "built-in digits" in caplog.text
    assert len(images) == 1797 and images.class_names == [str(d) for d in range(10)]
    pixels = np.stack([np.asarray(images[i]["image"]) for i in range(len(images))])
    assert pixels.shape == (1797, 8, 8, 3) and pixels.min() == 0 and pixels.max() == 255
    assert set(images.labels) == set(range(10))


def test_max_examples_keeps_the_first_good_ones(tmp_path):
    for i in range(5):
        Image.fromarray(rgb_array()).save(tmp_path / f"{i}.png")
    (tmp_path / "1.png").write_bytes(b"")
    images = load_images(train_dir=str(tmp_path), max_examples=3)
    assert [Path(e.name).name for e in images.entries] == ["0.png", "2.png", "3.png"]
    assert len(load_images(max_examples=10)) == 10


def test_split_images_is_disjoint_and_seeded():
    images = ImageSet([ImageEntry(f"a[{i}]", rgb_array(), i % 3) for i in range(20)], ["a", "b", "c"])
    train, test = split_images(images, test_fraction=0.25, seed=3)
    assert len(train) == 15 and len(test) == 5 and train.class_names == ["a", "b", "c"]
    assert not {e.name for e in train.entries} & {e.name for e in test.entries}
    assert [e.name for e in split_images(images, 0.25, seed=3)[1].entries] == [e.name for e in test.entries]
    assert [e.name for e in split_images(images, 0.25, seed=4)[1].entries] != [e.name for e in test.entries]
