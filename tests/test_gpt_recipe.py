"""recipes/gpt.py end to end (tiny): export that plain transformers loads and pipelines, the character-level
tokenizer, packing that never makes a short block, exact resume, bad input, --init_from, the schedule."""
import json
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.modalities.text import causal_pack_function, pack_corpus
from selfsup.modalities.tokenizer_train import train_char_level
from selfsup.recipes import gpt
from tests.conftest import straight_and_resumed, tiny_argv

SHAKESPEARE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
"""


def run(out, *extra, steps=3):
    return gpt.main(tiny_argv(out, "--eval_steps", "0", "--num_samples", "1", "--max_new_tokens", "4", *extra,
                              steps=steps))


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt_bpe")
    return out, run(out)


def test_default_run_writes_metrics_and_an_export_that_transformers_pipelines(bpe_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out, metrics = bpe_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 3 and saved["num_processes"] == 1
    for key in ("train_loss", "eval/loss", "eval/perplexity", "eval/accuracy", "samples_per_second"):
        assert key in saved, key
    assert saved["export/max_abs_logit_diff"] <= 1e-4
    perplexity = torch.tensor(saved["eval/loss"]).exp().item()
    assert abs(saved["eval/perplexity"] - perplexity) < 1e-3 * perplexity
    export = out / "export"
    model = AutoModelForCausalLM.from_pretrained(export)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_positions == 32
    tok = AutoTokenizer.from_pretrained(export)
    assert tok.eos_token == "<|endoftext|>" and len(tok) == model.config.vocab_size == 600
    generated = pipeline("text-generation", model=str(export))("The object", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"].startswith("The object")
    assert len(tok(generated[0]["generated_text"])["input_ids"]) > len(tok("The object")["input_ids"])
    card = (export / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "eval/loss" in card


def test_every_block_is_exactly_context_plus_one_ids():
    """run_clm's group_texts kept a short last block (transformers#23424); ours makes only whole blocks."""
    import datasets

    tok = train_char_level(["abcdefghij "])
    texts = ["abc", "defghij", "a b c d e f", "j" * 23, "hi"]
    ds = datasets.Dataset.from_dict({"text": texts})
    for context in (4, 7, 10):
        blocks = pack_corpus(ds, tok, context, pack=causal_pack_function)["input_ids"]
        stream = [t for text in texts for t in (*tok(text)["input_ids"], tok.eos_token_id)]
        assert len(blocks) == (len(stream) - 1) // context > 0
        assert all(len(b) == context + 1 for b in blocks)
        for k, block in enumerate(blocks):  # stride = context: every id after the first is a target exactly once
            assert block == stream[k * context:k * context + context + 1]
    # overlapping windows: a block every `stride` ids, still all whole
    blocks = pack_corpus(ds, tok, 7, pack=partial(causal_pack_function, stride=3))["input_ids"]
    assert len(blocks) == (len(stream) - 1 - 7) // 3 + 1
    assert all(b == stream[3 * k:3 * k + 8] for k, b in enumerate(blocks))
    # a batch of documents shorter than one block gives no block at all (not a short one)
    pack = causal_pack_function(tok, 64)
    assert pack({"text": ["abc", "de"]}) == {"input_ids": []}


def test_char_tokenizer_saves_loads_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tok = train_char_level([SHAKESPEARE])
    assert len(tok) == len(set(SHAKESPEARE)) + 1 and tok.convert_ids_to_tokens(0) == "<|endoftext|>"
    chars = [tok.convert_ids_to_tokens(i) for i in range(1, len(tok))]
    assert chars == sorted(chars)  # deterministic: sorted alphabet after the special
    text = "Speak, speak.\n\nAll: You are"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids and again.decode(ids) == text
    assert again("Z")["input_ids"] == [again.eos_token_id]  # an unseen character
    assert again("a<|endoftext|>b")["input_ids"][1] == 0


def test_char_level_document_run_and_pipeline(tmp_path):
    from transformers import pipeline

    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(SHAKESPEARE * 8)
    val.write_text(SHAKESPEARE * 2)
    out = tmp_path / "run"
    metrics = run(out, "--train_file", str(train), "--validation_file", str(val), "--tokenizer", "char",
                  "--sample_by", "document", "--per_device_train_batch_size", "4")
    assert metrics["eval/loss"] > 0
    tok = json.loads((out / "export" / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == len(set(SHAKESPEARE)) + 1  # line breaks kept: "\n" is a token
    text = pipeline("text-generation", model=str(out / "export"))("Speak", max_new_tokens=6,
                                                                    do_sample=False)[0]["generated_text"]
    assert text.startswith("Speak") and len(text) == len("Speak") + 6


def test_resume_reproduces_the_straight_run_exactly(tmp_path, capsys):
    def argv(out, *extra, steps):  # dropout on: the restored RNG must give the same dropout masks
        return tiny_argv(out, "--dropout", "0.1", "--eval_steps", "0", "--num_samples", "0", "--max_new_tokens", "2",
                         "--per_device_train_batch_size", "4", "--max_train_samples", "40", *extra, steps=steps)

    a, b, mid = straight_and_resumed(gpt.main, argv, tmp_path, steps=6, at=3)
    assert "checkpoint-3 at step 3" in capsys.readouterr().out  # resumed, not trained again from the start
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not all(torch.equal(a[k], mid[k]) for k in a)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_corpus_stops_with_one_line_naming_the_file(tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    with pytest.raises(SelfsupError) as err:
        run(tmp_path / "out", "--train_file", str(empty))
    message = str(err.value)
    assert str(empty) in message and "\n" not in message and ("empty" in message or "no text" in message)


def test_too_little_text_for_one_block_names_the_file(tmp_path):
    short, val = tmp_path / "short.txt", tmp_path / "val.txt"
    short.write_text("a few words\n")
    val.write_text("more words here\n")
    with pytest.raises(SelfsupError, match="short.txt: too little text"):
        run(tmp_path / "out", "--train_file", str(short), "--validation_file", str(val), "--tokenizer", "char")


def test_init_from_continues_from_the_export(bpe_run, tmp_path):
    out, _ = bpe_run
    args = gpt.build_parser().parse_args(["--init_from", str(out / "export"), "--output_dir", str(tmp_path),
                                          "--max_seq_length", "32"])
    tok = gpt.get_causal_tokenizer(args, None, SimpleNamespace(is_main_process=True, print=print,
                                                               wait_for_everyone=lambda: None))
    obj = gpt.build_objective(args, tok)
    from safetensors.torch import load_file

    exported = load_file(out / "export" / "model.safetensors")
    assert torch.equal(obj.adapter.word_embeddings.weight, exported["transformer.wte.weight"])
    assert torch.equal(obj.backbone.layers[1].fc1.weight, exported["transformer.h.1.mlp.c_fc.weight"].t())
    args.max_seq_length = 64
    with pytest.raises(SelfsupError, match="positions"):
        gpt.build_objective(args, tok)


def test_an_existing_tokenizer_is_used_as_given(bpe_run, tmp_path):
    out, _ = bpe_run
    metrics = run(tmp_path / "run", "--tokenizer_name", str(out / "export"), "--vocab_size", "50", steps=1)
    assert metrics["steps"] == 1
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tmp_path / "run" / "export").vocab_size == 600  # not a new 50-token one
    assert not (tmp_path / "run" / "tokenizer").exists()


def test_schedule_warms_up_then_ends_at_min_learning_rate():
    """nanoGPT's schedule through the engine: warmup, then cosine down to --min_learning_rate, which the GPT recipe
    sets to a tenth of the peak when it is not given."""
    from selfsup.config import parse_args
    from selfsup.train import TrainingSettings, lr_lambda, schedule_floor

    settings = TrainingSettings(learning_rate=1e-3, warmup_steps=10, max_steps=100, min_learning_rate=1e-4)
    f = lr_lambda(settings.lr_scheduler_type, settings.warmup, settings.max_steps, schedule_floor(settings))
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1) and f(55) == pytest.approx(0.55)
    assert lr_lambda("cosine", 10, 100)(100) == pytest.approx(0.0)          # the engine's default floor
    with pytest.raises(ValueError, match="min_learning_rate"):
        schedule_floor(TrainingSettings(learning_rate=1e-3, min_learning_rate=2e-3))
    assert parse_args(gpt.build_parser(), ["--learning_rate", "1e-3"]).min_learning_rate is None