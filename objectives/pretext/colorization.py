"""Colorization (Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016): from an image's lightness alone,
predict the distribution of its colour over Q bins of the ab plane at every cell of a coarse grid.

``batch["views"]`` holds one batch, the lightness of each image (the data side, ``modalities.image_views.LabColours``,
shows it as the grey image, three equal channels, so any image encoder takes it), and ``batch["pretext_targets"]``
(B, 2, h, w) each cell's mean (a, b). ``config.ab_bins`` are the bins' centres (the data side gives the paper's
Q = 313, ``image_views.published_ab_bins``). The encoder's last token map (a ResNet's feature map, a ViT's patch
tokens without its prefix) is upsampled to the target grid and a small decoder (two 3 x 3 convolutions with batch norm
and ReLU, the paper's conv8 block, then a 1 x 1 convolution: the Q-way classifier) gives the logits.

Target (the paper's soft encoding, sec. 2.1): each cell's ab is spread over its ``soft_neighbours`` (5) nearest
centres with weights ∝ exp(-d² / 2σ²), σ = ``soft_sigma`` (5); ``soft_neighbours`` = 1 is the one-hot of the
nearest bin. Loss (eq. 2-4): per target cell the cross-entropy of that distribution, weighted by class rebalancing
``w ∝ ((1 - λ) p̃ + λ / Q)^-1`` of the cell's nearest bin, normalised so that ``E_p̃[w] = 1``, ``λ = rebalance``
(0.5), ``p̃`` the empirical distribution of the nearest bins smoothed by a Gaussian of ``smoothing`` (σ = 5) over
the ab plane. The paper measures ``p̃`` once on ImageNet; here a histogram of every target seen in training (all
processes') is kept as a buffer (``bin_counts``, so a resume restores it) and each step's weights come from the
counts including its batch. Summed over the cells, ``num_targets`` = B · h · w.

``pretext_predictions(batch)``: the annealed mean (B, 2, h, w) of the predicted distribution (temperature
``temperature`` = 0.38: the mean of ``softmax(logits / T)``'s bin centres), the paper's point estimate.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.objectives.two_view.common import gather_rows, get_views, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import PRETEXT_TARGETS, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class ColorizationConfig:
    """ab_bins: the (a, b) centres of the Q bins (the data side's, ``view_pipelines.colorization``); hidden_dim: the
    decoder's width (the paper's conv8: 256); soft_neighbours, soft_sigma: the soft encoding's nearest bins and
    Gaussian σ (1: the nearest bin alone); rebalance: λ of the class weights (0 = weights 1 / p̃, 1 = none);
    smoothing: σ of the Gaussian that smooths the bin histogram over the ab plane (0: none); temperature: the
    annealed mean's T."""

    ab_bins: tuple = field(default_factory=tuple)
    hidden_dim: int = 256
    soft_neighbours: int = 5
    soft_sigma: float = 5.0
    rebalance: float = 0.5
    smoothing: float = 5.0
    temperature: float = 0.38

    def to_dict(self) -> dict:
        return asdict(self)


def token_map(tokens: Tensor, prefix: int, size: tuple[int, int]) -> Tensor:
    """(B, prefix + N, D) tokens -> (B, D, gh, gw) the map of the N tokens after the prefix (row-major), its shape
    that of the target grid ``size`` (h, w) scaled to N cells."""
    x = tokens[:, prefix:]
    b, n, d = x.shape
    gh = max(1, round(math.sqrt(n * size[0] / size[1])))
    if n % gh:
        raise ValueError(f"{n} tokens do not form a map of the target grid's shape {tuple(size)}")
    return x.transpose(1, 2).reshape(b, d, gh, n // gh)


class Colorization(Objective):
    def __init__(self, encoder: Encoder, config: ColorizationConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ColorizationConfig()
        if not c.ab_bins:
            raise ValueError("colorization needs the ab bins' centres (config.ab_bins, from its view pipeline)")
        width = take_encoder(self, encoder)
        centres = torch.tensor(c.ab_bins, dtype=torch.float32).reshape(-1, 2)
        q, h = len(centres), c.hidden_dim
        if not 1 <= c.soft_neighbours <= q or c.soft_sigma <= 0:
            raise ValueError(f"colorization's soft encoding needs 1 <= soft_neighbours <= {q} bins and soft_sigma > 0, "
                             f"got {c.soft_neighbours} and {c.soft_sigma}")
        self.register_buffer("ab_centres", centres, persistent=False)
        self.register_buffer("bin_counts", torch.zeros(q, dtype=torch.long))   # the targets seen, per bin
        self.decoder = nn.Sequential(
            nn.Conv2d(width, h, 3, padding=1, bias=False), GlobalBatchNorm(h), nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1, bias=False), GlobalBatchNorm(h), nn.ReLU(),
            nn.Conv2d(h, q, 1))

    @property
    def num_bins(self) -> int:
        return len(self.ab_centres)

    def logits(self, view: Batch, size: tuple[int, int]) -> Tensor:
        """(B, Q, h, w) the bins' logits of every cell of the ``size`` grid from one batch of (grey) images."""
        tokens = self.adapter(view)
        out = self.backbone(tokens.x, tokens.padding_mask, structure=tokens.structure)
        fmap = token_map(out.last_hidden_state, self.adapter.num_prefix_tokens, size)
        if tuple(fmap.shape[-2:]) != tuple(size):
            fmap = F.interpolate(fmap, size=tuple(size), mode="bilinear", align_corners=False)
        return self.decoder(fmap)

    def class_weights(self) -> Tensor:
        """(Q,) float64 the rebalancing weights from the histogram (uniform p̃ before any target is seen)."""
        c = self.config
        counts = self.bin_counts.double()
        p = counts / counts.sum() if counts.sum() > 0 else torch.full_like(counts, 1.0 / self.num_bins)
        if c.smoothing > 0:
            centres = self.ab_centres.double()
            kernel = torch.exp(-torch.cdist(centres, centres) ** 2 / (2 * c.smoothing ** 2))
            p = kernel @ p
            p = p / p.sum()
        w = 1.0 / ((1 - c.rebalance) * p + c.rebalance / self.num_bins)
        return w / (p * w).sum()

    @torch.no_grad()
    def soft_encoding(self, ab: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, h, w) ab -> (B·h·w, k) the k = ``soft_neighbours`` nearest bins of each cell (nearest first) and
        their weights (a Gaussian of the distance, σ = ``soft_sigma``, summing to 1), cells row-major."""
        flat = ab.movedim(1, -1).reshape(-1, 2).float()
        centres = self.ab_centres.to(flat.device, flat.dtype)
        distance, bins = torch.cdist(flat, centres, compute_mode="donot_use_mm_for_euclid_dist").topk(
            self.config.soft_neighbours, dim=1, largest=False)
        return bins, torch.softmax(-distance ** 2 / (2 * self.config.soft_sigma ** 2), dim=1)

    @torch.no_grad()
    def count(self, targets: Tensor) -> None:
        """Add the bins of ``targets`` (every process's) to the histogram."""
        seen = torch.bincount(targets.reshape(-1), minlength=self.num_bins)[None]
        self.bin_counts += gather_rows(seen).sum(dim=0).to(self.bin_counts.device)

    def views_and_targets(self, batch: Batch) -> tuple[Batch, Tensor]:
        views = get_views(batch, need=1)
        targets = batch.get(PRETEXT_TARGETS)
        if len(views) != 1 or targets is None or targets.dim() != 4 or targets.shape[1] != 2:
            got = "no targets" if targets is None else f"targets of shape {tuple(targets.shape)}"
            raise ValueError(f"colorization needs 1 view (the lightness) and {PRETEXT_TARGETS!r} (B, 2, h, w), each "
                             f"cell's ab, got {len(views)} views and {got}")
        return views[0], targets

    def forward(self, batch: Batch) -> ObjectiveOutput:
        view, targets = self.views_and_targets(batch)
        logits = self.logits(view, targets.shape[-2:]).float()
        bins, soft = self.soft_encoding(targets)
        nearest = bins[:, 0]
        if self.training:
            self.count(nearest)
        weights = self.class_weights().to(logits.device, logits.dtype)
        log_probs = F.log_softmax(logits, dim=1).movedim(1, -1).reshape(-1, self.num_bins)
        cross_entropy = -(soft.to(log_probs.dtype) * log_probs.gather(1, bins)).sum(dim=1)
        loss = (cross_entropy * weights[nearest]).sum()
        accuracy = (log_probs.detach().argmax(1) == nearest).float().mean()
        return ObjectiveOutput(loss, num_targets=nearest.numel(),
                               metrics={"bin_accuracy": accuracy, "plain_cross_entropy": cross_entropy.detach().mean()})

    @torch.no_grad()
    def pretext_predictions(self, batch: Batch) -> Tensor:
        """(B, 2, h, w) the annealed-mean ab of every target cell (the paper's H: softmax(logits / T) · centres)."""
        view, targets = self.views_and_targets(batch)
        logits = self.logits(view, targets.shape[-2:]).float()
        probs = torch.softmax(logits / self.config.temperature, dim=1)
        return torch.einsum("bqhw,qc->bchw", probs, self.ab_centres.to(probs.dtype))

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"colorization": dict(tiny=dict(hidden_dim=32), small=dict(hidden_dim=256),
                              base=dict(hidden_dim=256))}   # base: the paper's conv8 block, 256 channels
PRESETS = {"colorization": dict(
    cpu={**CPU, "transform": "colorization"},
    # the paper (sec. 3): Adam, beta1 0.9, beta2 0.99, weight decay 1e-3 (Caffe's, coupled: AdamW's decoupled decay
    # here), lr 3e-5 (the paper drops it to 1e-5 and 3e-6 at 200k and 375k iterations; cosine here), batch 40, 450k
    # iterations; on lightly's CIFAR-10 ResNet-18
    gpu={**LIGHTLY_CIFAR, "optimizer": "adamw", "learning_rate": 3e-5, "adam_beta1": 0.9, "adam_beta2": 0.99,
         "weight_decay": 1e-3, "batch_size": 40, "max_steps": 450_000, "transform": "colorization"},
    # the paper's ImageNet run (its settings as the gpu preset's), on a ResNet-50
    imagenet={**IMAGENET, "optimizer": "adamw", "learning_rate": 3e-5, "adam_beta1": 0.9, "adam_beta2": 0.99,
              "weight_decay": 1e-3, "batch_size": 40, "max_steps": 450_000, "warmup_epochs": 0,
              "transform": "colorization"},
)}


__all__ = ["ColorizationConfig", "Colorization", "token_map"]
