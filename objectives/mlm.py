"""Masked language modelling (BERT; Devlin et al., 2019, arXiv:1810.04805).

masker x target x loss = token masking 80/10/10 (optionally whole words; :class:`TokenMasker`) x token ids x
cross-entropy. The prediction head runs only at the masked positions (about 15 % of tokens), not at every
position as ``BertForMaskedLM`` does: with a 30k vocabulary the decoder is most of the model's work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.backbones.transformer import TransformerEncoder
from selfsup.modalities.text import TextAdapter
from selfsup.objectives.heads import MLMHead
from selfsup.objectives.masking import IGNORE_INDEX, TokenMasker, mask_tokens  # noqa: F401 (re-export)
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


class MaskedLanguageModeling(Objective):
    """BERT MLM, given a :class:`TextAdapter`, a :class:`TransformerEncoder` and a :class:`TokenMasker`.

    batch: ``input_ids`` (B, N) and optionally ``attention_mask``. When the batch also carries ``labels``
    (B, N; -100 = not a target) its ``input_ids`` are taken as already corrupted (fixed masks for tests and
    evaluation); otherwise the masker corrupts them. The decoder is tied to the adapter's word embeddings.
    """

    def __init__(self, adapter: TextAdapter, backbone: TransformerEncoder, masker: TokenMasker,
                 head: MLMHead | None = None) -> None:
        super().__init__()
        self.adapter, self.backbone, self.masker = adapter, backbone, masker
        cfg = backbone.config
        self.head = head or MLMHead(cfg.hidden_size, adapter.vocab_size, cfg.activation, cfg.layer_norm_eps)

    @property
    def config(self):
        return self.backbone.config

    @property
    def vocab_size(self) -> int:
        return self.adapter.vocab_size

    @property
    def mask_token_id(self) -> int:
        return self.masker.mask_token_id

    @property
    def pad_token_id(self) -> int:
        return self.adapter.pad_token_id

    def corrupt(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.masker(ids, generator)

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
            inputs, labels = self.masker(batch["input_ids"], seeds=batch.get("example_seeds"))
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
