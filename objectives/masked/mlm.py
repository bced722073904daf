"""Masked language modelling (BERT; Devlin et al., 2019, arXiv:1810.04805).

masker x target x loss = token masking 80/10/10 (optionally whole words; :class:`TokenMasker`) x token ids x
cross-entropy. The prediction head runs only at the masked positions (about 15 % of tokens), not at every
position as ``BertForMaskedLM`` does: with a 30k vocabulary the decoder is most of the model's work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from selfsup.objectives.heads import MLMHead
from selfsup.objectives.masking import IGNORE_INDEX, TokenMasker, mask_tokens
from selfsup.types import EXAMPLE_SEEDS, LABELS, Adapter, Batch, Encoder, Objective, ObjectiveOutput


class MaskedLanguageModeling(Objective):
    """BERT MLM, given an adapter of discrete ids (``adapter.input_ids``: text), a Transformer and a
    :class:`TokenMasker`.

    batch: what the adapter reads. When the batch also carries ``labels`` (B, N; -100 = not a target) its ids are
    taken as already corrupted (fixed masks for tests and evaluation); otherwise the masker corrupts them. The
    decoder is tied to the adapter's embedding of the ids (``adapter.class_embeddings("ids")``).
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, masker: TokenMasker,
                 head: MLMHead | None = None) -> None:
        super().__init__()
        self.adapter, self.backbone, self.masker = adapter, backbone, masker
        cfg = backbone.config
        self.head = head or MLMHead(cfg.hidden_size, adapter.target_size("ids"), cfg.activation, cfg.layer_norm_eps)

    @property
    def config(self):
        return self.backbone.config

    @property
    def vocab_size(self) -> int:
        return self.adapter.target_size("ids")

    @property
    def mask_token_id(self) -> int:
        return self.masker.mask_token_id

    def corrupt(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        return self.masker(ids, generator)

    def hidden(self, batch: Batch) -> Tensor:
        """(B, N, D) last hidden state."""
        tokens = self.adapter(batch)
        return self.backbone(tokens.x, tokens.padding_mask, structure=tokens.structure).last_hidden_state

    def logits(self, batch: Batch) -> Tensor:
        """(B, N, V) logits at every position (what ``BertForMaskedLM`` returns; used by fill-mask checks)."""
        return self.head(self.hidden(batch), self.adapter.class_embeddings("ids"))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        ids = self.adapter.input_ids(batch)
        if LABELS in batch:
            inputs, labels = ids, batch[LABELS]
        else:
            inputs, labels = self.masker(ids, seeds=batch.get(EXAMPLE_SEEDS))
        h = self.hidden(self.adapter.with_input_ids(batch, inputs))
        where = labels != IGNORE_INDEX
        target = labels[where]
        logits = self.head(h[where], self.adapter.class_embeddings("ids"))
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        with torch.no_grad():
            correct = (logits.argmax(-1) == target).sum()
            n = target.numel()
        return ObjectiveOutput(loss=loss, num_targets=n,
                               metrics={"mlm_accuracy": correct.float() / max(n, 1)})

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)
