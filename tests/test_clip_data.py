"""Image-text data (imagefolder metadata, parquet, class names x templates, the built-in digits), bad input skipped
and counted or named in one line, collation, and the engine's zero-shot classification."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.errors import SelfsupError
from selfsup.evaluate import class_embeddings, confusion_png, zero_shot_scores
from selfsup.modalities.image_text import (CLIP_TEMPLATES, collate_pairs, load_pairs, templated,
                                           train_caption_tokenizer)


def png_bytes(value=128, size=8):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_imagefolder(root, rows, suffix=".jsonl"):
    root.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        if row.get("file_name") and not row.pop("_missing", False):
            (root / row["file_name"]).write_bytes(png_bytes(10 * i))
    if suffix == ".jsonl":
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    else:
        import csv

        with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
            w.writeheader()
            w.writerows(rows)


def good_rows(n=4):
    return [{"file_name": f"{i}.png", "text": f"a picture number {i}"} for i in range(n)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_imagefolder_with_captions(tmp_path, suffix):
    write_imagefolder(tmp_path / "d", good_rows(), suffix)
    pairs = load_pairs(train_dir=str(tmp_path / "d"))
    assert len(pairs) == 4 and not pairs.templated and pairs.skipped == {}
    assert pairs.pairs[2].captions == ("a picture number 2",)


def test_bad_input_is_skipped_and_counted_or_named(tmp_path):
    rows = good_rows(3) + [{"file_name": "empty.png", "text": "   "}, {"file_name": "nocap.png"},
                           {"file_name": "gone.png", "text": "a missing image", "_missing": True},
                           {"file_name": "long.png", "text": " ".join(["word"] * 40)}]
    write_imagefolder(tmp_path / "d", rows)
    pairs = load_pairs(train_dir=str(tmp_path / "d"))
    assert pairs.skipped == {"empty caption": 1, "no caption": 1, "not found": 1}
    tok = train_caption_tokenizer(pairs.captions(), 600)
    pairs.tokenize(tok, context_length=16)
    assert pairs.skipped["caption too long"] == 1 and len(pairs) == 3
    assert "long.png" in pairs.skip_examples["caption too long"] and "16" in pairs.skip_examples["caption too long"]
    for bad, message in (({"file_name": "e.png", "text": ""}, "e.png: caption is empty"),
                         ({"file_name": "n.png"}, "n.png: image has no caption"),
                         ({"file_name": "m.png", "text": "x", "_missing": True}, "m.png: image file not found")):
        write_imagefolder(tmp_path / bad["file_name"], good_rows(2) + [bad])
        with pytest.raises(SelfsupError, match=message):
            load_pairs(train_dir=str(tmp_path / bad["file_name"]), bad_input="error")
    strict = load_pairs(train_dir=str(tmp_path / "d"), bad_input="skip")
    strict.bad_input = "error"
    with pytest.raises(SelfsupError, match="long.png: caption is 4[0-9] tokens, longer than the text context of 16"):
        strict.tokenize(tok, 16)


def test_parquet_with_text_column_and_labelled_parquet_with_templates(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": png_bytes(i * 40), "path": None} for i in range(4)]
    pq.write_table(pa.table({"image": images, "caption": ["one", "two", None, "four"]}), tmp_path / "cap.parquet")
    pairs = load_pairs(train_file=str(tmp_path / "cap.parquet"))
    assert len(pairs) == 3 and pairs.skipped == {"no caption": 1}
    assert "cap.parquet[2]" in pairs.skip_examples["no caption"]
    meta = {"info": {"features": {"image": {"_type": "Image"},
                                  "label": {"_type": "ClassLabel", "names": ["cat", "dog"]}}}}
    table = pa.table({"image": images, "label": [0, 1, 1, 0]}).replace_schema_metadata({"huggingface": json.dumps(meta)})
    pq.write_table(table, tmp_path / "lab.parquet")
    labelled = load_pairs(train_file=str(tmp_path / "lab.parquet"), templates=["a photo of a {}.", "a {} picture."])
    assert labelled.templated and labelled.class_names == ["cat", "dog"] and labelled.labels == [0, 1, 1, 0]
    assert labelled.pairs[1].captions == ("a photo of a dog.", "a dog picture.")


def test_datasets_folder_with_image_and_text_columns_or_class_labels(tmp_path):
    """A ``save_to_disk`` folder is read by the same code as a Hub data set (``datasets`` rows)."""
    import datasets

    images = [{"bytes": png_bytes(i * 40), "path": None} for i in range(4)]
    captioned = datasets.Dataset.from_dict({"img": images, "sentences": [["one", "uno"], ["two"], [], ["four"]]},
                                           features=datasets.Features({"img": datasets.Image(),
                                                                       "sentences": [datasets.Value("string")]}))
    datasets.DatasetDict(train=captioned, test=captioned.select([0])).save_to_disk(tmp_path / "cap")
    pairs = load_pairs(dataset_name=str(tmp_path / "cap"), text_column="sentences")
    assert len(pairs) == 3 and pairs.skipped == {"no caption": 1} and not pairs.templated
    assert pairs.pairs[0].captions == ("one", "uno") and f"{tmp_path / 'cap'}[2]" in pairs.skip_examples["no caption"]
    tok = train_caption_tokenizer(pairs.captions(), 300, min_frequency=1)
    pairs.tokenize(tok, 16).with_views(lambda im: torch.tensor(np.asarray(im, dtype=np.float32).mean()), seed=0)
    assert [round(float(pairs[i]["pixel_values"])) for i in range(3)] == [0, 40, 120]
    assert len(load_pairs(dataset_name=str(tmp_path / "cap"), split="test", text_column="sentences")) == 1
    with pytest.raises(SelfsupError, match="no 'validation' split"):
        load_pairs(dataset_name=str(tmp_path / "cap"), split="validation")
    with pytest.raises(SelfsupError, match="no text column 'caption'"):
        load_pairs(dataset_name=str(tmp_path / "cap"), text_column="caption")
    labelled = datasets.Dataset.from_dict({"image": images, "label": [1, 0, 1, 1]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])}))
    labelled.save_to_disk(tmp_path / "lab")
    lab = load_pairs(dataset_name=str(tmp_path / "lab"), templates=["a photo of a {}."])
    assert lab.templated and lab.class_names == ["cat", "dog"] and lab.labels == [1, 0, 1, 1]
    assert lab.pairs[0].captions == ("a photo of a dog.",)


def test_class_names_with_duplicates_and_templates_without_a_slot_stop(tmp_path):
    for name in ("Cat", "cat"):
        (tmp_path / "classes" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "classes" / name / "a.png").write_bytes(png_bytes())
    with pytest.raises(SelfsupError, match="class names repeat: 'cat' at positions 0 and 1"):
        load_pairs(train_dir=str(tmp_path / "classes"))
    with pytest.raises(SelfsupError, match=r"needs a '\{\}'"):
        templated(["cat"], ["a photo"])


def test_builtin_digits_get_templated_captions_and_collate(caplog):
    pairs = load_pairs(max_examples=40)
    assert pairs.source == "builtin:digits" and pairs.templated and len(pairs) == 40
    assert "digits" in caplog.text and "templates" in caplog.text
    assert pairs.pairs[0].captions[0] == CLIP_TEMPLATES[0].format("zero") and len(pairs.pairs[0].captions) == 18
    tok = train_caption_tokenizer(pairs.captions(), 700)
    from torchvision.transforms import v2

    t = v2.Compose([v2.Resize(16), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    pairs.tokenize(tok, 77).with_views(t, seed=3)
    a, b = pairs[5], pairs[5]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["input_ids"] == b["input_ids"]
    batch = collate_pairs([pairs[i] for i in range(4)], tok.pad_token_id)
    assert batch["pixel_values"].shape == (4, 3, 16, 16) and batch["input_ids"].shape == batch["attention_mask"].shape
    assert ((batch["input_ids"] == tok.eos_token_id).sum(1) >= 1).all()
    padded = collate_pairs([pairs[i] for i in range(4)], tok.pad_token_id, pad_to=64, attention_mask=False)
    assert padded["input_ids"].shape == (4, 64) and "attention_mask" not in padded


def test_captions_vary_over_epochs_but_not_between_calls():
    pairs = load_pairs(max_examples=20)
    tok = train_caption_tokenizer(pairs.captions(), 700)
    pairs.tokenize(tok, 77).with_views(lambda im: torch.zeros(1), seed=0)
    per_epoch = []
    for epoch in range(6):
        pairs.set_epoch(epoch)
        per_epoch.append(tuple(tuple(pairs[i]["input_ids"]) for i in range(20)))
        assert per_epoch[-1] == tuple(tuple(pairs[i]["input_ids"]) for i in range(20))
    assert len(set(per_epoch)) == 6


def test_zero_shot_scores_class_embeddings_and_confusion_png(tmp_path):
    names = ["cat", "dog", "ship"]
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)

    def encode(texts):   # a "text model" that knows the class word and adds template noise
        return torch.stack([centres[next(i for i, n in enumerate(names) if n in t)] + 0.01 * len(t) for t in texts])

    classes = class_embeddings(encode, names, ["a {}.", "a photo of a {}."])
    assert classes.shape == (3, 8) and torch.allclose(classes.norm(dim=1), torch.ones(3))
    labels = np.array([0, 1, 2, 2, 1])
    features = centres[labels] + 0.05 * torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    features[4] = centres[0]   # one mistake: a dog that looks like a cat
    out = zero_shot_scores(features, labels, classes, k=2)
    assert out["accuracy"] == pytest.approx(0.8) and out["top5_accuracy"] >= out["accuracy"]
    assert out["confusion"].tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 2]]
    path = confusion_png(out["confusion"], names, str(tmp_path / "cm.png"))
    assert Image.open(path).size[0] > 100
