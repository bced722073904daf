"""The image-text losses of CLIP and SigLIP over the global batch, as small functions.

* :func:`clip_loss`: CLIP's symmetric InfoNCE (Radford et al. 2021, Figure 3): logits ``s * I @ T.T`` over
  L2-normalised image and text embeddings, cross-entropy over the texts of each image and over the images of
  each text, averaged. ``transformers``' ``CLIPModel(return_loss=True)`` on one process.
* :func:`siglip_loss`: SigLIP's pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1): ``-log sigmoid(z_ij *
  (s * I_i . T_j + b))`` with ``z_ij = 1`` on matching pairs and ``-1`` elsewhere, summed over all pairs and
  divided by the batch size. ``SiglipModel(return_loss=True)`` on one process.

**Global batch.** Both take this process's (B_r, D) embeddings and the multiplier ``s = exp(logit_scale)``, and
return a loss whose gradient, after DDP averages the parameter gradients over the N processes, is the gradient
of the loss of the whole global batch (B = sum B_r pairs; every other pair a negative), with equal or unequal
B_r. Two modes, as open_clip's ``ClipLoss(local_loss=...)``:

* full gather (default): the embeddings of every process are gathered with gradient
  (:func:`selfsup.distributed.gather_with_grad`) and each process computes the (B, B) logits and the global loss
  itself, the same value everywhere.
* ``local_loss=True``: each process scores only its own B_r images (and texts) against all B gathered texts
  (images): (B_r, B) logits instead of (B, B), the terms of its own rows only. The sum of these terms over the
  processes is the global sum, so the returned value is ``N * local_sum / B``: its mean over the processes is the
  global loss (what the engine logs), and its gradient is the global loss's (the gather's backward sums over the
  processes). Outside a multi-process run both modes are the same function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.distributed import gather_with_grad, global_rows, row_offset, world_size


def _check(image: Tensor, text: Tensor, what: str) -> None:
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"{what}: expected image and text embeddings of the same (B, D) shape, got "
                         f"{tuple(image.shape)} and {tuple(text.shape)}")


def clip_logits(image: Tensor, text: Tensor, scale: Tensor | float) -> Tensor:
    """(B_i, B_t) logits ``scale * image @ text.T`` of L2-normalised embeddings (``CLIPModel.logits_per_image``)."""
    return scale * image @ text.T


def clip_loss(image: Tensor, text: Tensor, scale: Tensor | float, local_loss: bool = False) -> Tensor:
    """CLIP's symmetric InfoNCE over the global batch.

    image, text: (B_r, D) L2-normalised embeddings of this process's pairs (row i of each is a pair);
    scale: the logit multiplier ``exp(logit_scale)`` (a scalar tensor, with gradient when learned).
    Returns ``(CE(logits, arange) + CE(logits.T, arange)) / 2`` averaged over the B pairs of the global batch
    (see the module docstring for ``local_loss``).
    """
    _check(image, text, "clip_loss")
    if world_size() == 1:
        logits = clip_logits(image, text, scale)
        labels = torch.arange(len(image), device=image.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    if not local_loss:
        logits = clip_logits(all_image, all_text, scale)
        labels = torch.arange(len(all_image), device=image.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    labels = row_offset(len(image), image.device) + torch.arange(len(image), device=image.device)
    per_image = F.cross_entropy(clip_logits(image, all_text, scale), labels, reduction="sum")
    per_text = F.cross_entropy(clip_logits(text, all_image, scale), labels, reduction="sum")
    return (per_image + per_text) / 2 * world_size() / global_rows(image)


def siglip_logits(image: Tensor, text: Tensor, scale: Tensor | float, bias: Tensor | float) -> Tensor:
    """(B_i, B_t) logits ``scale * image @ text.T + bias`` (``SiglipModel.logits_per_image``)."""
    return scale * image @ text.T + bias


def _sigmoid_terms(logits: Tensor, offset: int) -> Tensor:
    """Sum of ``-log sigmoid(z * logits)`` over (b, B) logits whose positives sit at columns ``offset + i``."""
    z = -torch.ones_like(logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    z[rows, offset + rows] = 1.0
    return -F.logsigmoid(z * logits).sum()


def siglip_loss(image: Tensor, text: Tensor, scale: Tensor | float, bias: Tensor | float,
                local_loss: bool = False) -> Tensor:
    """SigLIP's sigmoid loss over the global batch: the sum over all B x B image-text pairs of
    ``-log sigmoid(z_ij * (scale * I_i . T_j + bias))``, divided by B (Zhai et al. 2023, Algorithm 1;
    ``SiglipModel``: the mean over texts of the sum over images). image, text: (B_r, D) L2-normalised; scale:
    ``exp(logit_scale)``; bias: the learned logit bias. ``local_loss``: this process's images against all texts
    (see the module docstring)."""
    _check(image, text, "siglip_loss")
    if world_size() == 1:
        return _sigmoid_terms(siglip_logits(image, text, scale, bias), 0) / len(image)
    all_text = gather_with_grad(text)
    if not local_loss:
        all_image = gather_with_grad(image)
        return _sigmoid_terms(siglip_logits(all_image, all_text, scale, bias), 0) / len(all_image)
    offset = row_offset(len(image), image.device)
    local = _sigmoid_terms(siglip_logits(image, all_text, scale, bias), offset)
    return local * world_size() / global_rows(image)


__all__ = ["clip_loss", "siglip_loss", "clip_logits", "siglip_logits", ]
