"""Masked language modelling (BERT; Devlin et al., 2019, arXiv:1810.04805).

masker x target x loss = token masking 80/10/10 (optionally whole words) x token ids x cross-entropy.
The prediction head runs only at the masked positions (about 15 % of tokens), not at every position as
``BertForMaskedLM`` does: with a 30k vocabulary the decoder is most of the model's work.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.transformer import ACTIVATIONS, TransformerConfig, TransformerEncoder
from selfsup.modalities.text import TextAdapter
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput

IGNORE_INDEX = -100


def mask_tokens(ids: Tensor, mask_token_id: int, vocab_size: int, probability: float = 0.15,
                special: Tensor | None = None, word_start: Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT corruption of ``ids`` (B, N).

    Each token (each whole word when ``word_start`` (B, N) bool marks word-initial tokens) is selected with
    ``probability``; ``special`` (B, N) bool tokens never are. Of the selected, 80 % become ``mask_token_id``,
    10 % a uniformly random id, 10 % stay. Returns (corrupted ids, labels) with labels -100 where not selected.
    """
    def rand(*shape: int) -> Tensor:
        return torch.rand(shape, generator=generator, device=ids.device)

    r = rand(*ids.shape)
    if word_start is not None:
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        first = torch.where(word_start, pos, torch.zeros_like(pos)).cummax(dim=1).values
        r = r.gather(1, first)
    selected = r < probability
    if special is not None:
        selected &= ~special
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    u = rand(*ids.shape)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator, device=ids.device)
    corrupted = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> activation -> LayerNorm -> decoder tied to the word embeddings + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, activation: str = "gelu", eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.act = ACTIVATIONS[activation]
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        nn.init.normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)

    def forward(self, h: Tensor, decoder_weight: Tensor) -> Tensor:
        """h: (M, D) -> logits (M, V)."""
        return F.linear(self.norm(self.act(self.dense(h))), decoder_weight, self.bias)


class MaskedLanguageModeling(Objective):
    """BERT MLM over a :class:`TextAdapter` and a :class:`TransformerEncoder`.

    batch: ``input_ids`` (B, N) and optionally ``attention_mask``. When the batch also carries ``labels``
    (B, N; -100 = not a target) its ``input_ids`` are taken as already corrupted (fixed masks for tests and
    evaluation); otherwise the objective masks them itself.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, mask_token_id: int, pad_token_id: int = 0,
                 special_token_ids: Sequence[int] = (), max_positions: int = 512, mlm_probability: float = 0.15,
                 continuation_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        self.config, self.vocab_size = config, vocab_size
        self.mask_token_id, self.pad_token_id = mask_token_id, pad_token_id
        self.mlm_probability = mlm_probability
        self.adapter = TextAdapter(vocab_size, config.hidden_size, max_positions, pad_token_id=pad_token_id,
                                   dropout=config.dropout, layer_norm_eps=config.layer_norm_eps)
        self.backbone = TransformerEncoder(config)
        self.head = MLMHead(config.hidden_size, vocab_size, config.activation, config.layer_norm_eps)
        special = torch.zeros(vocab_size, dtype=torch.bool)
        special[list({*special_token_ids, pad_token_id, mask_token_id})] = True
        self.register_buffer("special", special, persistent=False)
        cont = torch.zeros(vocab_size, dtype=torch.bool)
        if continuation_ids:
            cont[list(continuation_ids)] = True
        self.whole_word = continuation_ids is not None
        self.register_buffer("continuation", cont, persistent=False)

    def corrupt(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        word_start = ~self.continuation[ids] if self.whole_word else None
        return mask_tokens(ids, self.mask_token_id, self.vocab_size, self.mlm_probability,
                           special=self.special[ids], word_start=word_start, generator=generator)

    def hidden(self, batch: Batch) -> Tensor:
        """(B, N, D) last hidden state."""
        tokens = self.adapter.embed(batch)
        x = self.adapter.add_positions(tokens.x, tokens.padding_mask)
        return self.backbone(x, tokens.padding_mask).last_hidden_state

    def logits(self, batch: Batch) -> Tensor:
        """(B, N, V) logits at every position (what ``BertForMaskedLM`` returns; used by fill-mask checks)."""
        return self.head(self.hidden(batch), self.adapter.word_embeddings.weight)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if "labels" in batch:
            inputs, labels = batch["input_ids"], batch["labels"]
        else:
            inputs, labels = self.corrupt(batch["input_ids"])
        h = self.hidden({**batch, "input_ids": inputs})
        where = labels != IGNORE_INDEX
        target = labels[where]
        logits = self.head(h[where], self.adapter.word_embeddings.weight)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).sum()
            n = target.numel()
        return ObjectiveOutput(loss=loss, num_targets=n,
                               metrics={"mlm_accuracy": correct.float() / max(n, 1)})

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)
