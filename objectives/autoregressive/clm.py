"""Autoregressive (causal) language modelling: GPT-2 (Radford et al., 2019, "Language Models are Unsupervised
Multitask Learners"), and sampling from the trained model.

Given a :class:`TextAdapter` (word + learned position embeddings, no embedding norm) and a causal pre-LN
:class:`TransformerEncoder` with a final norm, the objective predicts token ``t + 1`` from tokens ``<= t`` with
a head tied to the word embeddings (no bias), as ``GPT2LMHeadModel``. A block of ``N`` ids gives ``N - 1``
targets; the backbone runs on the first ``N - 1`` ids only (the last one is never an input of a prediction), so
the loss is the one ``GPT2LMHeadModel(input_ids=block, labels=block)`` gives, for ``(N - 1) / N`` of its work.

The tied head and the cross-entropy run fused, in chunks of rows (:func:`linear_cross_entropy`): the gradient
of each chunk's logits is formed in place of its softmax and used at once, so the (tokens x vocabulary) logits
and their gradient never exist in full (the trick of Liger Kernel's fused linear cross-entropy, on CPU here).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch import nn

from selfsup.types import LABELS, Adapter, Batch, Encoder, Objective, ObjectiveOutput

IGNORE_INDEX = -100
CHUNK_ROWS = 1024  # rows of logits formed at once in the fused head + loss


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ weight.T`` against ``target``; the gradients are formed in the forward."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, target: Tensor, chunk: int):  # noqa: D401 - autograd API
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, correct = torch.zeros((), dtype=torch.float64, device=h.device), torch.zeros((), dtype=torch.long,
                                                                                           device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        plain = not torch.is_autocast_enabled(h.device.type) and h.dtype == weight.dtype == torch.float32
        for start in range(0, h.shape[0], chunk):
            hc, tc = h[start:start + chunk], target[start:start + chunk]
            logits = (hc @ weight.t()).float()                                  # (c, V)
            valid = tc != IGNORE_INDEX
            safe = tc.clamp_min(0)
            picked = logits.gather(1, safe[:, None])[:, 0]
            top = logits.amax(dim=-1)
            correct += ((picked >= top) & valid).sum()                          # the target is an argmax
            grad = logits.sub_(top[:, None]).exp_()                             # in place: exp(logits - max)
            total = grad.sum(dim=-1)
            loss += ((total.log() + top - picked) * valid).sum(dtype=torch.float64)
            if not (need_h or need_w):
                continue
            grad.mul_(total.reciprocal()[:, None])                              # softmax
            grad[torch.arange(len(tc), device=h.device), safe] -= 1.0
            if not bool(valid.all()):
                grad[~valid] = 0.0
            grad = grad if plain else grad.to(hc.dtype if not torch.is_autocast_enabled(h.device.type)
                                               else torch.get_autocast_dtype(h.device.type))
            if need_h:
                grad_h[start:start + chunk] = grad @ weight.to(grad.dtype)
            if need_w:
                if plain:
                    grad_w.addmm_(grad.t(), hc)
                else:
                    grad_w += (grad.t() @ hc.to(grad.dtype)).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        ctx.mark_non_differentiable(correct)
        return loss.float(), correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_correct: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = None if grad_h is None else (grad_h * grad_loss).to(ctx.dtypes[0])
        gw = None if grad_w is None else (grad_w * grad_loss).to(ctx.dtypes[1])
        return gh, gw, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, target: Tensor, chunk: int = CHUNK_ROWS) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy, number of targets that are an argmax of their logits) of ``h @ weight.T``.

    h: (T, D) hidden states; weight: (V, D) the output embedding; target: (T,) ids, ``IGNORE_INDEX`` = no target.
    Equals ``F.cross_entropy(h @ weight.T, target, reduction="sum", ignore_index=-100)``; computed in chunks of
    ``chunk`` rows, with the gradient of each chunk formed in the forward pass.
    """
    return _LinearCrossEntropy.apply(h, weight, target, chunk)


class CausalLanguageModeling(Objective):
    """GPT-2 next-token prediction, given an adapter of discrete ids (text) and a causal Transformer.

    batch: what the adapter reads (padding, if any, is never a target) and optionally ``labels`` (B, N; -100 =
    not a target; unshifted, as ``GPT2LMHeadModel`` takes them). The loss is summed over the ``B x (N - 1)`` (or
    fewer) targets; ``num_targets`` says how many. The head is tied to ``adapter.class_embeddings("ids")``.
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, chunk_rows: int = CHUNK_ROWS) -> None:
        super().__init__()
        if not backbone.config.causal:
            raise ValueError("causal language modelling needs a causal backbone (TransformerConfig(causal=True))")
        self.adapter, self.backbone, self.chunk_rows = adapter, backbone, chunk_rows

    @property
    def config(self):
        return self.backbone.config

    @property
    def vocab_size(self) -> int:
        return self.adapter.target_size("ids")

    @property
    def max_positions(self) -> int:
        return self.adapter.max_positions

    def hidden(self, batch: Batch, cache: list[dict] | None = None, drop_last: bool = False) -> Tensor:
        """(B, N, D) last hidden state (after the final norm) of ``batch``'s ids; with ``drop_last`` of all but
        the last id (no prediction reads it). cache (inference): the backbone's key/value cache of the ids before
        these (``backbone.new_cache()``, extended in place); the ids then continue them, at the positions after the
        cached ones."""
        return self.transform(self.adapter.embed(batch), cache, drop_last)

    def transform(self, tokens, cache: list[dict] | None = None, drop_last: bool = False) -> Tensor:
        """:meth:`hidden` from the adapter's content embeddings (``Tokens``)."""
        x, padding_mask = tokens.x, tokens.padding_mask
        if drop_last:
            x, padding_mask = x[:, :-1], None if padding_mask is None else padding_mask[:, :-1]
        start = cache[0]["k"].shape[2] if cache and cache[0] else 0
        x = self.adapter.add_positions(x, padding_mask, tokens.structure, start=start)
        return self.backbone(x, padding_mask, cache=cache).last_hidden_state

    def hidden_of_ids(self, ids: Tensor, cache: list[dict] | None = None) -> Tensor:
        """:meth:`hidden` of unpadded ids (B, N) (sampling)."""
        return self.hidden(self.adapter.with_input_ids({}, ids), cache)

    def logits(self, batch: Batch) -> Tensor:
        """(B, N, V) next-token logits at every position (what ``GPT2LMHeadModel`` returns)."""
        return F.linear(self.hidden(batch), self.adapter.class_embeddings("ids"))

    def forward(self, batch: Batch) -> ObjectiveOutput:
        ids, tokens = self.adapter.input_ids(batch), self.adapter.embed(batch)
        padding, labels = tokens.padding_mask, batch.get(LABELS)
        if labels is None:
            labels = ids if padding is None else ids.masked_fill(padding, IGNORE_INDEX)
        h = self.transform(tokens, drop_last=True)
        target = labels[:, 1:].reshape(-1)
        loss, correct = linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.adapter.class_embeddings("ids"),
                                             target, self.chunk_rows)
        n = int((target != IGNORE_INDEX).sum()) if (padding is not None or LABELS in batch) else target.numel()
        return ObjectiveOutput(loss=loss, num_targets=n, metrics={"accuracy": correct.float() / max(n, 1)})

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)


@torch.no_grad()
def generate(objective: CausalLanguageModeling, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, greedy: bool = False, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Tensor:
    """Continue ``input_ids`` (B, N) by ``max_new_tokens`` tokens: (B, N + max_new_tokens).

    greedy (or ``temperature == 0``): the most likely token each step (ties: the lowest id, as ``torch.argmax``
    and ``transformers``' greedy search). Otherwise a draw from ``softmax(logits / temperature)`` restricted to
    the ``top_k`` most likely tokens when given, from ``generator``. The context is cut to the model's
    ``max_positions`` most recent tokens. With ``use_cache`` the prompt is read once and each new token attends
    to the cached keys and values of the earlier ones; once the context is full it slides, the positions of
    every token change and the window is recomputed each step (nanoGPT's way, and all of it without the cache).
    """
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"generate needs prompts of shape (batch, at least one token), got {tuple(input_ids.shape)}")
    was_training = objective.training
    objective.eval()
    ids = input_ids
    weight = objective.adapter.class_embeddings("ids")
    window, cache = objective.max_positions, None
    for _ in range(max_new_tokens):
        if not use_cache or ids.shape[1] > window:
            h = objective.hidden_of_ids(ids[:, -window:])[:, -1]
        elif cache is None:
            cache = objective.backbone.new_cache()
            h = objective.hidden_of_ids(ids, cache=cache)[:, -1]
        else:
            h = objective.hidden_of_ids(ids[:, -1:], cache=cache)[:, -1]
        logits = (h @ weight.t()).float()
        if greedy or temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and 0 < top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
        ids = torch.cat([ids, nxt.to(ids.dtype)], dim=1)
    objective.train(was_training)
    return ids


__all__ = ["CausalLanguageModeling", "generate", "linear_cross_entropy", "IGNORE_INDEX"]
