"""Text loading: every supported source works; bad input ends in one line naming the file and the problem."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from selfsup.errors import SelfsupError
from selfsup.modalities.text import collate_texts, load_corpus, load_labelled_text, pack_function, train_tokenizer
from tests.conftest import ROOT, tiny_argv

bert_mlm = importlib.import_module("selfsup.recipes.bert_mlm")

PARAGRAPH = "The quick brown fox jumps over the lazy dog while the cat watches from the window."


def corpus_args(**kw) -> dict:
    """load_corpus's explicit arguments (its defaults but a 10 % validation share and seed 0)."""
    return {"validation_split_percentage": 10.0, "seed": 0, **kw}


def lines(n: int = 40) -> list[str]:
    return [f"{PARAGRAPH} Line number {i}." for i in range(n)]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "json", "csv", "parquet"])
def test_every_file_type_loads(tmp_path, kind):
    import datasets

    path = tmp_path / f"corpus.{kind}"
    if kind == "txt":
        path.write_text("\n".join(lines()) + "\n\n\n")
    else:
        ds = datasets.Dataset.from_dict({"text": lines(), "id": list(range(40))})
        {"jsonl": lambda: ds.to_json(str(path)), "json": lambda: ds.to_json(str(path)),
         "csv": lambda: ds.to_csv(str(path)), "parquet": lambda: ds.to_parquet(str(path))}[kind]()
    train, val, source = load_corpus(**corpus_args(train_file=[str(path)]))
    assert len(train) + len(val) == 40 and train.column_names == ["text"]
    assert source == str(path)


def test_folder_saved_dataset_and_streaming(tmp_path):
    import datasets

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(lines(20)))
    (folder / "sub" / "b.txt").write_text("\n".join(lines(20)))
    train, val, _ = load_corpus(**corpus_args(train_dir=str(folder)))
    assert len(train) + len(val) == 40
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": lines(30)}),
                          "validation": datasets.Dataset.from_dict({"body": lines(5)})}).save_to_disk(str(saved))
    train, val, _ = load_corpus(**corpus_args(dataset_name=str(saved), text_column="body"))
    assert (len(train), len(val)) == (30, 5)
    train, val, _ = load_corpus(**corpus_args(train_dir=str(folder), streaming=True, streaming_validation_examples=5))
    assert sum(1 for _ in val) == 5 and sum(1 for _ in train) == 35


def test_packing_makes_fixed_blocks_with_cls_and_sep():
    tok = train_tokenizer(lines(200), vocab_size=300)
    pack = pack_function(tok, 16)
    blocks = pack({"text": lines(10)})["input_ids"]
    assert blocks and all(len(b) == 16 and b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in blocks)
    flat = [t for b in blocks for t in b[1:-1]]
    assert tok.sep_token_id in flat  # documents are joined with [SEP]
    batch = collate_texts(tok, ["short", "a somewhat longer sentence here"], 32)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["attention_mask"][0, -1] == 0


def test_labelled_text_formats(tmp_path):
    sst = tmp_path / "train.txt"
    sst.write_text("1 a fine film\n0 a dull film\n\n1 great\n")
    texts, labels = load_labelled_text(str(sst))
    assert texts == ["a fine film", "a dull film", "great"] and labels == [1, 0, 1]
    bad = tmp_path / "bad.txt"
    bad.write_text("positive a fine film\n")
    with pytest.raises(SelfsupError, match=r"bad.txt:1: expected 'label sentence'"):
        load_labelled_text(str(bad))


def bad_inputs(tmp_path):
    binary = tmp_path / "model.txt"
    binary.write_bytes(bytes(range(256)) * 10)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me br\u00fbl\u00e9e\n".encode("latin-1") * 10)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\t\n\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    not_tok = tmp_path / "not_a_tokenizer"
    not_tok.mkdir()
    (not_tok / "notes.md").write_text("hello")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(lines()))
    return [
        (["--train_file", str(tmp_path / "missing.txt")], "missing.txt: text file not found"),
        (["--train_file", str(empty)], "empty.txt: text file is empty"),
        (["--train_file", str(binary)], "model.txt: looks like a binary file"),
        (["--train_file", str(latin)], "latin1.txt: not UTF-8 text"),
        (["--train_file", str(blank)], "blank.txt: contains no text (only blank lines)"),
        (["--train_file", str(good), "--tokenizer_name", str(not_tok)], "not_a_tokenizer: not a tokenizer folder"),
        (["--train_file", str(good), "--tokenizer_name", str(tmp_path / "nope")], "nope: tokenizer not found"),
        (["--train_dir", str(tmp_path / "nodir")], "nodir: folder not found"),
        (["--train_file", str(tmp_path)], "is a folder; pass folders with --train_dir"),
    ]


def test_bad_input_raises_one_line_naming_the_file(tmp_path):
    for argv, expected in bad_inputs(tmp_path):
        with pytest.raises(SelfsupError) as err:
            bert_mlm.main(tiny_argv(tmp_path / "out", *argv, steps=1))
        assert expected in str(err.value), (argv, str(err.value))
        assert "\n" not in str(err.value)


def test_command_line_prints_one_line_and_no_traceback(tmp_path):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "bert_mlm.py"), "--train_file", str(binary),
                           "--output_dir", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(binary) in last and "binary" in last


def test_config_file_supplies_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max_steps: 2\nmodel_size: tiny\nlearning_rate: 0.001\n")
    args = bert_mlm.build_parser()
    from selfsup.config import parse_args

    parsed = parse_args(args, ["--config", str(cfg), "--learning_rate", "0.01"])
    assert (parsed.max_steps, parsed.model_size, parsed.learning_rate) == (2, "tiny", 0.01)
    cfg.write_text("max_stepz: 2\n")
    with pytest.raises(SelfsupError, match="unknown option"):
        parse_args(bert_mlm.build_parser(), ["--config", str(cfg)])


def test_streaming_recipe_trains(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in lines(300)))
    metrics = bert_mlm.main(tiny_argv(tmp_path / "s", "--train_file", str(corpus), "--streaming",
                                      "--streaming_validation_examples", "20", steps=3))
    assert metrics["steps"] == 3 and 0 <= metrics["eval/mlm_accuracy"] <= 1
