"""Deterministic tokenizer training: the merge learner by hand and against a naive BPE, the same result in fresh
processes whatever PYTHONHASHSEED, the BERT pipeline of HF's trainer, and quality close to HF's trainer."""
import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from selfsup.modalities.text import train_tokenizer
from selfsup.modalities.tokenizer_train import (Merges, count_words, learn_merges, train_byte_level_bpe,
                                                train_wordpiece)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TRICKY = ["Σίσυφος ΟΔΟΣ café naïve 日本語の文章 🙂🙂 a\u0301b \u2028x\u00a0y\u3000z  tabs\t\tend ", "  leading",
          "trailing  ", "", " ", "x\x1c y\x1f\x1fz", "Straße İstanbul ǅ", "e\u0301\u0327 \u0327x",
          "a\n\nb\r\nc"]


def builtin_paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    return [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return builtin_paragraphs()


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_wordpiece(corpus, vocab_size=8000)


# -- the merge learner ----------------------------------------------------------------------------------------
def test_learner_by_hand_with_a_tie():
    # abab x2, abc x1, bc x2.  Pairs: ab 2*2+1 = 5, bc 1+2 = 3, ba 2  -> merge (a, b).
    # Then [ab ab] x2, [ab c] x1, [b c] x2: (ab, ab) 2 ties (b, c) 2; ("ab", "ab") < ("b", "c") -> (ab, ab) first.
    # Then (b, c) 2, then (ab, c) 1.
    learned = learn_merges({"abab": 2, "abc": 1, "bc": 2}, vocab_budget=100, min_frequency=1)
    assert learned.merges == [("a", "b"), ("ab", "ab"), ("b", "c"), ("ab", "c")]
    assert learned.tokens == ["a", "b", "c", "ab", "abab", "bc", "abc"]
    # min_frequency 2 stops before (ab, c), which occurs once
    assert learn_merges({"abab": 2, "abc": 1, "bc": 2}, 100, min_frequency=2).tokens[-1] == "bc"


def test_learner_by_hand_with_continuation_prefix():
    # a ##b ##a ##b x2, a ##b ##c x1, b ##c x2.  (a, ##b) 3 is the best -> "ab".
    # Then (ab, ##a) 2, (##a, ##b) 2, (b, ##c) 2, (ab, ##c) 1: "##a" < "ab" < "b" -> (##a, ##b) -> "##ab".
    # Then (ab, ##ab) 2 ties (b, ##c) 2: "ab" < "b" -> "abab"; then (b, ##c) -> "bc"; then (ab, ##c) -> "abc".
    words = {"abab": 2, "abc": 1, "bc": 2}
    learned = learn_merges(words, vocab_budget=100, continuation_prefix="##", min_frequency=1)
    assert learned.tokens[:6] == ["##a", "##b", "##c", "a", "b", "c"]
    assert learned.merges == [("a", "##b"), ("##a", "##b"), ("ab", "##ab"), ("b", "##c"), ("ab", "##c")]
    assert learned.tokens[6:] == ["ab", "##ab", "abab", "bc", "abc"]
    assert learn_merges(words, 8, "##", 1).tokens[6:] == ["ab", "##ab"]  # the budget counts alphabet + merges


def naive_bpe(word_counts: dict[str, int], budget: int, prefix, min_frequency: int) -> Merges:
    """Reference BPE: recount every pair at every step."""
    pre = prefix or ""
    words = {w: [w[0], *(pre + c for c in w[1:])] for w in word_counts}
    tokens = sorted({s for symbols in words.values() for s in symbols} | set("".join(word_counts)))
    result = Merges(tokens=list(tokens))
    while len(result.tokens) < budget:
        pairs = Counter()
        for w, symbols in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += word_counts[w]
        if not pairs:
            break
        (a, b), n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < min_frequency:
            break
        new = a + (b[len(pre):] if pre and b.startswith(pre) else b)
        for w, symbols in words.items():
            out, i = [], 0
            while i < len(symbols):
                hit = i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b
                out.append(new if hit else symbols[i])
                i += 2 if hit else 1
            words[w] = out
        result.merges.append((a, b))
        if new not in result.tokens:
            result.tokens.append(new)
    return result


@pytest.mark.parametrize("prefix", [None, "##"])
@pytest.mark.parametrize("seed", range(6))
def test_learner_matches_naive_bpe(prefix, seed):
    rng = random.Random(seed)
    words = {"".join(rng.choices("abcd", k=rng.randint(1, 9))): rng.randint(1, 6) for _ in range(60)}
    for budget in (10, 40, 400):
        assert learn_merges(words, budget, prefix, 2) == naive_bpe(words, budget, prefix, 2)
    assert learn_merges(words, 400, prefix, 1) == naive_bpe(words, 400, prefix, 1)


def test_learner_ignores_word_order():
    rng = random.Random(0)
    words = {"".join(rng.choices("abcdef", k=rng.randint(1, 8))): rng.randint(1, 9) for _ in range(300)}
    shuffled = list(words.items())
    rng.shuffle(shuffled)
    assert learn_merges(words, 200, "##") == learn_merges(dict(shuffled), 200, "##")


def test_word_counts_match_the_tokenizer_pipeline(corpus):
    from tokenizers import normalizers, pre_tokenizers

    texts = corpus[:300] + TRICKY
    for lowercase in (True, False):
        norm, pre = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
        expected = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
        assert count_words(texts, norm, pre, splits_on_space=True) == dict(expected)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    expected = Counter(w for t in texts for w, _ in byte_level.pre_tokenize_str(t))
    assert count_words(texts, None, byte_level, splits_on_space=False) == dict(expected)


# -- determinism across processes ------------------------------------------------------------------------------
TRAIN_IN_CHILD = """
import hashlib, json
from tests.test_tokenizer_train import builtin_paragraphs
from selfsup.modalities.tokenizer_train import train_byte_level_bpe, train_wordpiece
texts = builtin_paragraphs()
wp = train_wordpiece(texts, vocab_size=8000).backend_tokenizer.to_str()
bl = train_byte_level_bpe(texts[::2], vocab_size=3000).backend_tokenizer.to_str()
print(json.dumps([hashlib.sha256(wp.encode()).hexdigest(), hashlib.sha256(bl.encode()).hexdigest()]))
"""


@pytest.mark.long
def test_same_result_in_fresh_processes_with_different_hash_seeds(corpus, wordpiece):
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run([sys.executable, "-c", TRAIN_IN_CHILD], env=env, capture_output=True, text=True,
                              timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]
    here = hashlib.sha256(wordpiece.backend_tokenizer.to_str().encode()).hexdigest()
    assert digests[0][0] == here  # and this process, whatever its seed
    bl = train_byte_level_bpe(corpus[::2], vocab_size=3000).backend_tokenizer.to_str()
    assert digests[0][1] == hashlib.sha256(bl.encode()).hexdigest()


# -- the WordPiece tokenizer -----------------------------------------------------------------------------------
def test_specials_first_and_vocab_size_respected(corpus, wordpiece):
    assert wordpiece.convert_ids_to_tokens(list(range(5))) == SPECIALS
    assert [wordpiece.pad_token_id, wordpiece.unk_token_id, wordpiece.cls_token_id, wordpiece.sep_token_id,
            wordpiece.mask_token_id] == [0, 1, 2, 3, 4]
    assert 4000 < len(wordpiece) <= 8000  # min_frequency 2 ends merging below 8000 on this corpus
    small = train_wordpiece(corpus, vocab_size=1000)
    assert len(small) == len(small.get_vocab()) == 1000
    assert sorted(small.get_vocab().values()) == list(range(1000))


def test_every_training_word_tokenizes_without_unk(corpus, wordpiece):
    backend = wordpiece.backend_tokenizer
    words = sorted(w for w in count_words(corpus, backend.normalizer, backend.pre_tokenizer, True) if len(w) <= 100)
    assert len(words) > 3000
    for encoding in backend.encode_batch(words, add_special_tokens=False):
        assert wordpiece.unk_token_id not in encoding.ids


def test_encode_adds_cls_and_sep_and_decodes(wordpiece):
    enc = wordpiece("The interpreter evaluates the expression.")
    tokens = wordpiece.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "[UNK]" not in tokens
    assert wordpiece.decode(enc["input_ids"], skip_special_tokens=True) == "the interpreter evaluates the expression."
    pair = wordpiece.backend_tokenizer.encode("first part", "second part")
    assert pair.ids.count(wordpiece.sep_token_id) == 2 and pair.type_ids[-1] == 1


def hf_wordpiece(texts, vocab_size: int):
    """The same BERT pipeline trained by HF's own (non-deterministic) WordPieceTrainer: the reference."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                             min_frequency=2))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def test_same_pipeline_as_hf_trained_bert_tokenizer(wordpiece):
    texts = ["The quick brown fox jumps over the lazy dog; the dog sleeps."] * 3
    ours, theirs = train_tokenizer(texts, vocab_size=120), hf_wordpiece(texts, vocab_size=120)
    a, b = json.loads(ours.backend_tokenizer.to_str()), json.loads(theirs.backend_tokenizer.to_str())
    a["model"].pop("vocab"), b["model"].pop("vocab")
    assert a == b
    assert ours.init_kwargs == theirs.init_kwargs and ours.model_max_length == 512


def test_save_and_reload_gives_the_same_ids(tmp_path, wordpiece):
    from transformers import AutoTokenizer

    wordpiece.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["Decorators wrap functions.", "A généralisé naïve café, 日本語!", "x = [1, 2]  # comment"]
    assert again(texts)["input_ids"] == wordpiece(texts)["input_ids"]
    assert again.mask_token_id == 4 and again.pad_token_id == 0


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    words = sum(len(set(e.word_ids)) for e in encodings)
    return sum(len(e.ids) for e in encodings) / words


def test_quality_close_to_hf_wordpiece_trainer(corpus):
    train, held_out = [t for i, t in enumerate(corpus) if i % 10], corpus[::10]
    ours = tokens_per_word(train_wordpiece(train, vocab_size=8000), held_out)
    theirs = tokens_per_word(hf_wordpiece(train, vocab_size=8000), held_out)
    print(f"tokens per held-out word: ours {ours:.4f}, HF {theirs:.4f}")
    assert abs(ours - theirs) <= 0.10 * theirs
    assert ours < 1.5  # words mostly stay whole: a real BPE, not characters


# -- byte-level BPE --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def byte_level(corpus):
    return train_byte_level_bpe(corpus, vocab_size=4000)


def test_byte_level_round_trips_any_text(byte_level):
    rng = random.Random(0)
    samples = TRICKY + ["def f(x):\n    return x ** 2  # square\n", "\x00\x7f\ufffd\U0010ffff"]
    code_points = [c for c in range(1, 0x2FFFF) if not 0xD800 <= c < 0xE000]  # no lone surrogates
    samples += ["".join(map(chr, rng.choices(code_points, k=50))) for _ in range(20)]
    for text in samples:
        ids = byte_level(text)["input_ids"]
        assert byte_level.decode(ids) == text
    assert len(byte_level("the interpreter")["input_ids"]) == 2  # merges learned: whole words


def test_byte_level_specials_and_size(byte_level):
    assert byte_level.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert byte_level.bos_token == byte_level.eos_token == byte_level.unk_token == "<|endoftext|>"
    assert byte_level("a<|endoftext|>b")["input_ids"][1] == 0  # a special, not split into bytes
    assert len(byte_level) == 4000 and byte_level.model_max_length == 1024
    vocab = byte_level.get_vocab()
    from tokenizers import pre_tokenizers

    assert all(c in vocab for c in pre_tokenizers.ByteLevel.alphabet())
