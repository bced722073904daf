"""Deterministic tokenizer training: a pure-Python BPE merge learner, and WordPiece / byte-level BPE tokenizers on it.

HF ``tokenizers``' trainers break ties by Rust hash-map order, so two runs on the same corpus can give different
vocabularies (huggingface/tokenizers#1794). Here every choice is ordered: words are sorted, the alphabet is sorted,
and the best pair is the one with the highest count, then the lexicographically smallest ``(left, right)`` strings.
Nothing iterates over a set or dict of strings whose order matters, so the result ignores ``PYTHONHASHSEED``.

The normalizer and pre-tokenizer of the built tokenizer itself split the training texts into words, so inference
sees words exactly as training did.
"""
from __future__ import annotations

import heapq
import itertools
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

Pair = tuple[int, int]
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PROGRESS_AFTER_SECONDS = 2.0  # the progress bar shows only once training has taken this long


@dataclass
class Merges:
    """What ``learn_merges`` learned: ``tokens`` (the alphabet, then each new merged token in merge order) and
    ``merges`` (each merged pair of token strings, in order; a merge may rebuild a token already in ``tokens``)."""

    tokens: list[str] = field(default_factory=list)
    merges: list[tuple[str, str]] = field(default_factory=list)


def make_alphabet(words: Iterable[str], prefix: str | None, initial: Iterable[str] = ()) -> list[str]:
    """Every character of ``words`` (plus ``initial``) and, with a ``prefix``, the prefixed form of each character
    that occurs after a word's first; sorted."""
    chars, inner = set(initial), set()
    for word in words:
        chars.update(word)
        if prefix is not None:
            inner.update(word[1:])
    return sorted(chars if prefix is None else chars | {prefix + c for c in inner})


class _PairTable:
    """Words as symbol-id lists with their counts; pair counts, the words each pair occurs in, and a max-heap of
    pairs (lazy invalidation: stale entries are re-checked when popped)."""

    def __init__(self, word_counts: dict[str, int], alphabet: list[str], prefix: str | None) -> None:
        self.strings = list(alphabet)
        self.ids = {s: i for i, s in enumerate(self.strings)}
        self.prefix = prefix
        pre = prefix or ""
        ordered = sorted(word_counts)
        self.words = [[self.ids[w[0]], *(self.ids[pre + c] for c in w[1:])] for w in ordered]
        self.counts = [word_counts[w] for w in ordered]
        self.pair_counts: dict[Pair, int] = {}
        self.where: dict[Pair, set[int]] = {}
        for index, symbols in enumerate(self.words):
            for pair in zip(symbols, symbols[1:]):
                self.pair_counts[pair] = self.pair_counts.get(pair, 0) + self.counts[index]
                self.where.setdefault(pair, set()).add(index)
        self.heap = [self._entry(pair, count) for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def _entry(self, pair: Pair, count: int) -> tuple[int, str, str, int, int]:
        return -count, self.strings[pair[0]], self.strings[pair[1]], pair[0], pair[1]

    def best(self, min_frequency: int) -> tuple[Pair, int] | None:
        """The pair with the highest count (ties: smallest strings), or None when none reaches ``min_frequency``."""
        while self.heap:
            neg, _, _, a, b = heapq.heappop(self.heap)
            current = self.pair_counts.get((a, b), 0)
            if current == -neg:
                return ((a, b), current) if current >= max(min_frequency, 1) else None
            if 0 < current < -neg:  # the count fell since this entry was pushed
                heapq.heappush(self.heap, self._entry((a, b), current))
        return None

    def joined(self, pair: Pair) -> str:
        """The token string of ``pair`` merged (the right part loses its continuation prefix)."""
        left, right = self.strings[pair[0]], self.strings[pair[1]]
        if self.prefix and right.startswith(self.prefix):
            right = right[len(self.prefix):]
        return left + right

    def merge(self, pair: Pair) -> tuple[str, bool]:
        """Merge ``pair`` in every word holding it and update the counts; (new token string, whether it is new)."""
        token = self.joined(pair)
        is_new = token not in self.ids
        if is_new:
            self.ids[token] = len(self.strings)
            self.strings.append(token)
        new_id = self.ids[token]
        raised: set[Pair] = set()
        for index in sorted(self.where.pop(pair, ())):
            raised.update(self._merge_word(index, pair, new_id))
        self.pair_counts.pop(pair, None)
        for p in sorted(raised):
            if self.pair_counts.get(p, 0) > 0:  # a reused token's pair may have fallen again in a later word
                heapq.heappush(self.heap, self._entry(p, self.pair_counts[p]))
        return token, is_new

    def _merge_word(self, index: int, pair: Pair, new_id: int) -> list[Pair]:
        """Merge ``pair`` left to right in word ``index``; apply the pair-count changes; the pairs that rose."""
        old, a, b = self.words[index], pair[0], pair[1]
        out, i = [], 0
        while i < len(old):
            if i + 1 < len(old) and old[i] == a and old[i + 1] == b:
                out.append(new_id)
                i += 2
            else:
                out.append(old[i])
                i += 1
        if len(out) == len(old):
            return []
        self.words[index] = out
        delta: dict[Pair, int] = {}
        for p in zip(old, old[1:]):
            delta[p] = delta.get(p, 0) - 1
        for p in zip(out, out[1:]):
            delta[p] = delta.get(p, 0) + 1
        return self._apply(index, delta)

    def _apply(self, index: int, delta: dict[Pair, int]) -> list[Pair]:
        """Add word ``index``'s per-occurrence pair changes, times its count; the pairs that rose."""
        count, raised = self.counts[index], []
        for p, d in delta.items():
            if d == 0:
                continue
            self.pair_counts[p] = self.pair_counts.get(p, 0) + d * count
            if d > 0:
                self.where.setdefault(p, set()).add(index)
                raised.append(p)
            elif self.pair_counts[p] <= 0:
                del self.pair_counts[p]
        return raised


def learn_merges(word_counts: dict[str, int], vocab_budget: int, continuation_prefix: str | None = None,
                 min_frequency: int = 2, initial_alphabet: Iterable[str] = ()) -> Merges:
    """BPE over a word-frequency table, deterministically.

    The alphabet (see ``make_alphabet``) is always kept whole; merges then add tokens until ``len(tokens)`` reaches
    ``vocab_budget`` or no pair occurs ``min_frequency`` times. Each step merges the pair with the highest count,
    ties going to the lexicographically smallest ``(left, right)`` strings. With ``continuation_prefix`` (WordPiece's
    ``"##"``) every symbol after a word's first carries the prefix, and a merge drops the right part's prefix.
    """
    word_counts = {w: c for w, c in word_counts.items() if w and c > 0}
    alphabet = make_alphabet(word_counts, continuation_prefix, initial_alphabet)
    table = _PairTable(word_counts, alphabet, continuation_prefix)
    result = Merges(tokens=list(alphabet))
    with _progress(max(vocab_budget - len(alphabet), 0)) as bar:
        while len(result.tokens) < vocab_budget:
            found = table.best(min_frequency)
            if found is None:
                break
            pair = found[0]
            result.merges.append((table.strings[pair[0]], table.strings[pair[1]]))
            token, is_new = table.merge(pair)
            if is_new:
                result.tokens.append(token)
                bar.update(1)
    return result


def _progress(total: int):
    """A tqdm bar that appears only after ``PROGRESS_AFTER_SECONDS`` and only on a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="learn merges", unit="tok", delay=PROGRESS_AFTER_SECONDS, leave=False,
                disable=not sys.stderr.isatty())


def count_words(texts: Iterable[str], normalizer, pre_tokenizer, splits_on_space: bool) -> dict[str, int]:
    """Word frequencies of ``texts`` as the tokenizer itself splits them (normalizer, then pre-tokenizer).

    Same counts, faster: texts are cut into pieces no word spans and each distinct piece is pre-tokenized once.
    If the pre-tokenizer ``splits_on_space`` (BERT's), texts are joined by spaces in batches and normalized in one
    call (BertNormalizer is character-local) and cut at every space; otherwise each text is cut just before a space
    that follows a printable ASCII character, where GPT-2's pattern always starts a new word.
    """
    pieces: Counter[str] = Counter()
    for group in _batches(texts, 512 if splits_on_space else 1):
        text = " ".join(group)
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        pieces.update(text.split(" ") if splits_on_space else _BEFORE_SPACE.split(text))
    counts: Counter[str] = Counter()
    for piece, n in pieces.items():
        for word, _ in pre_tokenizer.pre_tokenize_str(piece):
            counts[word] += n
    return dict(counts)


_BEFORE_SPACE = re.compile(r"(?<=[!-~])(?= )")


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    """``texts`` in lists of ``size`` (the last may be shorter)."""
    it = iter(texts)
    while group := list(itertools.islice(it, size)):
        yield group


def _vocab(special_tokens: Sequence[str], tokens: Iterable[str]) -> dict[str, int]:
    """Specials first (ids 0..), then ``tokens`` in order, skipping any already present."""
    vocab: dict[str, int] = {}
    for token in (*special_tokens, *tokens):
        vocab.setdefault(token, len(vocab))
    return vocab


def wordpiece_backend(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True, min_frequency: int = 2,
                      special_tokens: Sequence[str] = WORDPIECE_SPECIALS):
    """A BERT-style ``tokenizers.Tokenizer`` (WordPiece) whose vocabulary ``learn_merges`` learned on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
    counts = count_words(texts, normalizer, pre_tokenizer, splits_on_space=True)
    learned = learn_merges(counts, vocab_size - len(special_tokens), "##", min_frequency)
    tok = Tokenizer(models.WordPiece(vocab=_vocab(special_tokens, learned.tokens), unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    tok.add_special_tokens(list(special_tokens))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, lowercase: bool = True, max_length: int = 512,
                    min_frequency: int = 2, special_tokens: Sequence[str] = WORDPIECE_SPECIALS):
    """A BERT-style WordPiece tokenizer trained deterministically on ``texts``; a ``PreTrainedTokenizerFast``.

    Same pipeline as ``text.train_tokenizer`` (BertNormalizer, BertPreTokenizer, ``[CLS] $A [SEP]``); the vocabulary
    is the specials (ids 0..), the sorted alphabet, then merged tokens in merge order, at most ``vocab_size`` in all
    unless the specials and alphabet alone are more.
    """
    from transformers import PreTrainedTokenizerFast

    tok = wordpiece_backend(texts, vocab_size, lowercase, min_frequency, special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)


def byte_level_backend(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                       special_tokens: Sequence[str] = ("<|endoftext|>",)):
    """A GPT-2 style byte-level BPE ``tokenizers.Tokenizer`` whose merges ``learn_merges`` learned on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    counts = count_words(texts, None, pre_tokenizer, splits_on_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    learned = learn_merges(counts, vocab_size - len(special_tokens), None, min_frequency, alphabet)
    tok = Tokenizer(models.BPE(vocab=_vocab(special_tokens, learned.tokens), merges=learned.merges))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens(list(special_tokens))
    return tok


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                         special_tokens: Sequence[str] = ("<|endoftext|>",), max_length: int = 1024):
    """A GPT-2 style byte-level BPE tokenizer trained deterministically on ``texts``; a ``PreTrainedTokenizerFast``
    with bos/eos/unk ``special_tokens[0]``. Any text round-trips: ``decode(encode(s)) == s``."""
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_backend(texts, vocab_size, min_frequency, special_tokens)
    first = special_tokens[0]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=first, eos_token=first, unk_token=first,
                                   model_max_length=max_length, clean_up_tokenization_spaces=False)


def char_level_backend(texts: Iterable[str], special_tokens: Sequence[str] = ("<|endoftext|>",)):
    """A character-level ``tokenizers.Tokenizer``: one token per character of ``texts`` (sorted, after the specials),
    nothing normalized or split; characters it has not seen become ``special_tokens[0]``."""
    from tokenizers import Tokenizer, decoders, models

    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = _vocab(special_tokens, sorted(chars - set(special_tokens)))
    # BPE without merges splits its input into characters: the whole text is one "word", nothing is dropped
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=special_tokens[0]))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(special_tokens))
    return tok


def train_char_level(texts: Iterable[str], special_tokens: Sequence[str] = ("<|endoftext|>",), max_length: int = 1024):
    """A character-level tokenizer (nanoGPT's Shakespeare vocabulary, plus ``special_tokens``) built from ``texts``;
    a ``PreTrainedTokenizerFast`` with bos/eos/unk ``special_tokens[0]`` that saves, loads with ``AutoTokenizer``
    and works in ``pipeline("text-generation")``. Deterministic (the alphabet is sorted); ``decode(encode(s)) == s``
    for any text made of seen characters."""
    from transformers import PreTrainedTokenizerFast

    tok = char_level_backend(texts, special_tokens)
    first = special_tokens[0]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=first, eos_token=first, unk_token=first,
                                   model_max_length=max_length, clean_up_tokenization_spaces=False)
