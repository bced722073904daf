"""Contrastive Predictive Coding (van den Oord, Li & Vinyals, 2018, arXiv:1807.03748): an encoder maps the input
to a sequence of latents z_1..z_T, an autoregressive context network (a GRU) summarises z_<=t into c_t, and for
every offset k a linear map W_k predicts z_{t+k} from c_t. InfoNCE (eq. 4): the score z · W_k c_t of the true
z_{t+k} against the negatives, a softmax cross-entropy per prediction.

**The latents** (modality-blind, :meth:`CPC.latents`):

* with ``batch["views"]``, a grid of patch views (the data side, ``modalities.image_views.PatchGrid``, cuts an image
  into G x G overlapping patches, view ``i * G + j`` the patch of row i, column j): each patch goes through the
  encoder on its own (one forward for every patch of the batch) and is pooled to one vector, z_{i,j}. The sequence
  runs down the rows (sec. 3.2: rows below are predicted from the rows above) and the context network runs down
  **each column on its own**: column j of an image is a sequence z_{0,j} .. z_{G-1,j}, so c_{i,j} sees the patches
  above (i, j) in its column and predicts z_{i+k,j}. (The paper's PixelCNN also sees the neighbouring columns of the
  rows above; a GRU over column-pooled rows would give one prediction for a whole row, the same for every column,
  which cannot say where anything is.)
* otherwise the encoder's token map: the backbone's last hidden state over the adapter's tokens (prefix tokens
  dropped), (B, T, D), with the tokens' padding mask (audio: one latent per conv frame). The encoder must see no
  future of a token (the speech builder composes the conv feature encoder alone, no Transformer), else the
  prediction leaks.

**Negatives**: every other latent of the (per-process) batch, of the same and of the other sequences (images: every
patch of every image; audio: every frame of every clip), padding left out; one matrix product per offset. The paper
draws its audio negatives from the same and other sequences of the minibatch too (8 clips per GPU).
``num_targets`` = the number of (sequence, t, k) predictions whose target is not padding; the loss is their summed
cross-entropy. Offsets ``first_offset .. num_offsets``: on images the first is 2, since the patch one row down
overlaps the context's own (the stride is half a patch) and would be predicted from shared pixels (CPC v2's
released code skips those offsets too).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.objectives.two_view.common import encode_online, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.objectives.two_view.sizes import CPC_GRID
from selfsup.types import VIEWS, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class CPCConfig:
    """context_dim: the GRU's hidden width (256 for audio in the paper); num_offsets: K, the farthest step predicted
    (12 frames for audio, 5 rows for images); first_offset: the nearest (1; 2 on overlapping image patches);
    temperature: the scores are divided by it (1: the paper's log-bilinear score)."""

    context_dim: int = 256
    num_offsets: int = 12
    first_offset: int = 1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.first_offset <= self.num_offsets:
            raise ValueError(f"CPC predicts offsets first_offset..num_offsets, got {self.first_offset}.."
                             f"{self.num_offsets}")
        if self.context_dim < 1 or self.temperature <= 0:
            raise ValueError(f"context_dim must be positive and temperature above 0, got {self.context_dim}, "
                             f"{self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


def info_nce(z: Tensor, context: Tensor, predictors: nn.ModuleList, padding_mask: Tensor | None = None,
             first_offset: int = 1, temperature: float = 1.0) -> tuple[Tensor, int, Tensor]:
    """CPC's InfoNCE over sequences of latents: (summed cross-entropy, number of predictions, accuracy).

    z: (S, T, D) latents; context: (S, T, H) c_t (c_t of z_<=t); predictors: W_k for k = first_offset ..
    first_offset + len(predictors) - 1, each H -> D; padding_mask: (S, T) True at padding. Prediction (s, t, k) is
    ``W_k c_{s,t}`` scored against every real latent of ``z`` (dot product / temperature), its target
    ``z_{s,t+k}``; made where both t and t + k are real."""
    s, t, _ = z.shape
    real = torch.ones(s, t, dtype=torch.bool, device=z.device) if padding_mask is None else ~padding_mask
    flat = real.reshape(-1)
    bank = z.reshape(s * t, -1)[flat]                                        # (M, D) every real latent
    row = torch.cumsum(flat.long(), 0).sub_(1).view(s, t)                  # its row in the bank
    total, count, hits = z.new_zeros((), dtype=torch.float32), 0, z.new_zeros((), dtype=torch.float32)
    for i, predictor in enumerate(predictors):
        k = first_offset + i
        if k >= t:
            break
        made = real[:, :t - k] & real[:, k:]                                # (S, T - k)
        if not bool(made.any()):
            continue
        predictions = predictor(context[:, :t - k][made])                   # (P, D)
        with torch.autocast(z.device.type, enabled=False):                 # unnormalised scores: in float32
            logits = (predictions.float() @ bank.float().T) / temperature   # (P, M)
        labels = row[:, k:][made]
        total = total + F.cross_entropy(logits, labels, reduction="sum")
        count += int(made.sum())
        hits = hits + (logits.detach().argmax(-1) == labels).float().sum()
    return total, count, hits / max(count, 1)


class CPC(Objective):
    def __init__(self, encoder: Encoder, config: CPCConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or CPCConfig()
        width = take_encoder(self, encoder)
        self.context = nn.GRU(width, c.context_dim, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(c.context_dim, width, bias=False)
                                        for _ in range(c.first_offset, c.num_offsets + 1))

    def latents(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """(S, T, D) sequences of latents and their (S, T) padding mask (or None): the columns of a patch grid
        (``batch["views"]``, G * G views in row-major order; S = B * G, T = G), or the encoder's token map."""
        views = batch.get(VIEWS)
        if views is not None:
            g = math.isqrt(len(views))
            if g < 2 or g * g != len(views):
                raise ValueError(f"CPC on views needs a square grid of at least 2 x 2 patches, got {len(views)} views")
            feats = encode_online(self, views)                               # (G * G * B, D), view-major
            b = feats.shape[0] // (g * g)
            grid = feats.reshape(g, g, b, -1)                                # (row, column, example, D)
            return grid.permute(2, 1, 0, 3).reshape(b * g, g, -1), None     # column sequences, top to bottom
        out, padding_mask = online_encoder(self)(batch)
        prefix = self.adapter.num_prefix_tokens
        h = out.last_hidden_state[:, prefix:]
        return h, None if padding_mask is None else padding_mask[:, prefix:]

    def contexts(self, z: Tensor) -> Tensor:
        """(S, T, H) c_t of the GRU run over z_1..z_t (causal: c_t reads no latent after t)."""
        return self.context(z)[0]

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        z, padding_mask = self.latents(batch)
        if z.shape[1] <= c.first_offset:
            raise ValueError(f"CPC needs sequences longer than its first offset {c.first_offset}, got {z.shape[1]}")
        loss, count, accuracy = info_nce(z, self.contexts(z), self.predictors, padding_mask, c.first_offset,
                                         c.temperature)
        return ObjectiveOutput(loss, num_targets=count, metrics={"cpc_accuracy": accuracy.detach()})

    encoder = online_encoder


# image sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py; the
# speech sizes are objectives/predictive/sizes.py's)
SIZES = {"cpc": dict(tiny=dict(CPC_GRID, context_dim=16), small=dict(CPC_GRID, context_dim=512),
                     base=dict(CPC_GRID, context_dim=1024))}
PRESETS = {"cpc": dict(
    # the paper's Adam (no weight decay), at 1e-3 for a run of 300 steps; the patches in colour (the kNN and probes
    # see colour images: greyscale patches, the paper's, gave 30.7 % kNN after 300 steps vs 30.4 % at random, colour
    # 35.8 %)
    cpu={**CPU, "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.0, "transform": "cpc_colour"},
    # the paper (sec. 3.2; ImageNet there, a ResNet-v2-101 to its third block): Adam at 2e-4, no weight decay stated,
    # batch 16 on each of 32 GPUs (512); the 7 x 7 grid of overlapping patches
    gpu={**LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 2e-4, "weight_decay": 0.0, "transform": "cpc"},
    # its ImageNet setting: 256-pixel images (from 300) cut into 7 x 7 patches of 64 with 32 overlap, Adam 2e-4,
    # batch 16 x 32 GPUs; a ResNet-50 here for its ResNet-v2-101 (to the third block, 1024 wide)
    imagenet={**IMAGENET, "image_size": 256, "batch_size": 512, "optimizer": "adamw", "learning_rate": 2e-4,
              "weight_decay": 0.0, "warmup_epochs": 0, "transform": "cpc"},
)}


__all__ = ["CPCConfig", "CPC", "info_nce"]
