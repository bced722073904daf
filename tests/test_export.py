"""The export is a native BertForMaskedLM + tokenizer that plain transformers loads, with our logits."""
import json

import importlib
import pytest
import torch
from tests.conftest import tiny_argv

from selfsup.errors import SelfsupError
from selfsup.modalities.text import load_tokenizer
from selfsup.objectives.masked.hf_bert import from_transformers

bert_mlm = importlib.import_module("selfsup.recipes.bert_mlm")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert")
    metrics = bert_mlm.main(tiny_argv(out, steps=6))
    return out, metrics


def test_metrics_json_has_the_conventional_keys(run):
    out, metrics = run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("num_processes", "steps", "train_loss", "samples_per_second", "eval/mlm_accuracy",
                "eval/perplexity", "export/max_abs_logit_diff"):
        assert key in saved, key
    assert saved["steps"] == 6 and saved["num_processes"] == 1
    assert saved["export/max_abs_logit_diff"] <= 1e-4


def test_export_loads_with_auto_classes_and_matches_our_logits(run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    out, _ = run
    export = out / "export"
    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    tok = AutoTokenizer.from_pretrained(export)
    assert isinstance(model, BertForMaskedLM)
    ours = from_transformers(export).eval()
    enc = tok(["the for statement is used to iterate", "a [MASK] of lines"], padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        ref = model(**batch).logits
        got = ours.logits(batch)
    real = enc["attention_mask"].bool()
    assert (ref[real] - got[real]).abs().max() < 1e-4
    card = (export / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and "eval/mlm_accuracy" in card


def test_fill_mask_pipeline_runs_on_the_export(run):
    from transformers import pipeline

    out, _ = run
    fill = pipeline("fill-mask", model=str(out / "export"))
    preds = fill("the [MASK] statement")
    assert len(preds) == 5 and all("token_str" in p for p in preds)


def test_init_from_the_export_reproduces_its_logits_and_trains_on(run, tmp_path):
    out, _ = run
    export = out / "export"
    from transformers import AutoModelForMaskedLM

    ids = torch.randint(5, 500, (2, 12))
    with torch.no_grad():
        ref = AutoModelForMaskedLM.from_pretrained(export).eval()(input_ids=ids).logits
        args = bert_mlm.build_parser().parse_args(["--init_from", str(export)])
        obj = bert_mlm.build_objective(args, load_tokenizer(str(export))).eval()
        assert torch.allclose(obj.logits({"input_ids": ids}), ref, atol=1e-5)
    # continued pretraining starts where the export ended: with a zero learning rate the held-out loss
    # (same corpus, seed, tokenizer and masks) is the one the original run reported
    metrics = bert_mlm.main(tiny_argv(tmp_path / "more", "--init_from", str(export), "--learning_rate", "0",
                                      steps=1))
    assert metrics["steps"] == 1
    assert abs(metrics["eval/mlm_loss"] - run[1]["eval/mlm_loss"]) < 1e-5


def test_init_from_rejects_what_is_not_bert(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SelfsupError, match="needs a bert checkpoint"):
        from_transformers(tmp_path)
    with pytest.raises(SelfsupError, match="not a transformers checkpoint"):
        from_transformers(tmp_path / "missing")


def test_push_to_hub_offline_fails_in_one_line_and_keeps_the_export(run, tmp_path, monkeypatch):
    out, _ = run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SelfsupError) as err:
        bert_mlm.main(tiny_argv(tmp_path / "push", "--push_to_hub", "--hub_model_id", "someone/tiny", steps=1))
    msg = str(err.value)
    assert "could not push to the Hub as someone/tiny" in msg and "is intact" in msg and "\n" not in msg
    assert (tmp_path / "push" / "export" / "model.safetensors").is_file()
    assert (tmp_path / "push" / "metrics.json").is_file()
