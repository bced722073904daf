"""HuBERT pre-training (Hsu et al., 2021, arXiv:2106.07447).

masker x target x loss = span masking of the latent frames x k-means cluster ids x cross-entropy. The feature
encoder and the Transformer are wav2vec 2.0's (the audio adapter + the shared Transformer); masked
frames are replaced by a learned embedding *before* the convolutional position embedding, as in wav2vec 2.0. Each
scored frame's output is projected (``final_proj``, D -> P) and compared with one embedding per cluster by
cosine similarity / temperature (the paper's p_f(c | X~, t); temperature 0.1 as fairseq's ``logit_temp``); the loss is
cross-entropy against the frame's cluster id, at masked frames (weight ``pred_masked_weight``, alpha = 1 in the
paper) plus at unmasked real frames (``pred_nomask_weight``, 0 by default), summed over the scored frames
(``num_targets``, as fairseq's ``hubert`` criterion counts its sample size).

fairseq scores the positive against *every* label embedding with the positive's own copy among the negatives
set to -inf, which is exactly a softmax over the C clusters; here the logits are ``(M, C)`` from one matmul of
unit vectors. The targets (``cluster_labels``) come from k-means on MFCCs (iteration 1, 100 Hz labels
resampled to the 50 Hz frames: ``selfsup.modalities.audio_features``) or on a previous model's
:meth:`HubertObjective.layer_features` (``selfsup.kmeans``).

Not implemented from fairseq: ``feature_grad_mult`` (0.1 for HuBERT base; gradients reach the conv encoder
unscaled here), several label streams at once, ``untie_final_proj``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.objectives.losses import feature_penalty
from selfsup.objectives.masking import SpanMasker
from selfsup.types import (CLUSTER_LABELS, EXAMPLE_SEEDS, FIXED_MASK, Adapter, BackboneOutput, Batch, Encoder,
                           Objective, ObjectiveOutput)

IGNORE = -100  # label of frames that are not scored (padding, no label), as in torch's cross_entropy


@dataclass
class HubertObjectiveConfig:
    """Head, loss and masking settings (defaults: HuBERT base, fairseq names in comments).

    label_length_tolerance: how many frames the (padded) label width may differ from the feature encoder's
    frame count (label and feature rates rarely agree to the last frame): longer labels are cropped at the
    end, shorter ones padded with -100 (those frames are not scored). Bigger differences are an error — the
    labels are probably at another rate (see ``audio_features.align_labels``). fairseq crops the *features* to
    the labels instead; cropping/padding the labels keeps the encoder's input exactly ``HubertModel``'s.
    """

    num_clusters: int = 500                   # C (100 for MFCC targets in iteration 1, 500 afterwards)
    final_dim: int = 256                      # P: width of final_proj and label embeddings (final_dim)
    logit_temperature: float = 0.1            # logit_temp
    pred_masked_weight: float = 1.0           # pred_masked_weight (alpha)
    pred_nomask_weight: float = 0.0           # pred_nomask_weight
    feature_penalty_weight: float = 0.0       # fairseq's loss_weights (10 for HuBERT base there)
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    label_length_tolerance: int = 2

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be at least 2, got {self.num_clusters}")
        if not 0 <= self.mask_prob <= 1:
            raise ValueError(f"mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.pred_masked_weight < 0 or self.pred_nomask_weight < 0 or \
                self.pred_masked_weight + self.pred_nomask_weight == 0:
            raise ValueError("pred_masked_weight and pred_nomask_weight must be >= 0 and not both 0")

    def to_dict(self) -> dict:
        return asdict(self)


def cluster_logits(projected: Tensor, label_embeddings: Tensor, temperature: float) -> Tensor:
    """HuBERT's logits: cosine similarity of each projected frame with every cluster embedding / temperature.

    projected: (M, P); label_embeddings: (C, P). Returns (M, C) float32, also under autocast (with a temperature
    of 0.1, bf16 cosines would be off by up to ~0.05 in the logits).
    """
    with torch.autocast(projected.device.type, enabled=False):
        x = F.normalize(projected.float(), dim=-1, eps=1e-8)
        e = F.normalize(label_embeddings.float(), dim=-1, eps=1e-8)
        return x @ e.T / temperature


def fit_labels(labels: Tensor, num_frames: int, tolerance: int) -> Tensor:
    """(B, L) long frame labels -> (B, num_frames): cropped at the end or padded with -100 (not scored)."""
    if labels.dim() != 2:
        raise ValueError(f"cluster_labels must be (batch, frames); got shape {tuple(labels.shape)}")
    diff = labels.shape[1] - num_frames
    if abs(diff) > tolerance:
        raise ValueError(
            f"cluster_labels have {labels.shape[1]} frames per row but the feature encoder gives {num_frames} "
            f"(tolerance {tolerance}); labels must be at the model's frame rate (see audio_features.align_labels)")
    if diff > 0:
        return labels[:, :num_frames]
    return F.pad(labels, (0, -diff), value=IGNORE) if diff < 0 else labels


class HubertObjective(Objective):
    """HuBERT over a frame adapter (audio) and a Transformer.

    batch: what the adapter reads, ``cluster_labels`` (B, F) long cluster
    ids at the model's frame rate (-100 where there is none; see :func:`fit_labels` for length mismatches),
    optional precomputed ``mask_time_indices`` (B, F) bool; otherwise the objective draws the span mask.
    """

    def __init__(self, adapter: Adapter, backbone: nn.Module, masker: SpanMasker,
                 config: HubertObjectiveConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or HubertObjectiveConfig()
        self.adapter, self.backbone, self.masker = adapter, backbone, masker
        backbone = backbone.config
        self.mask_embedding = nn.Parameter(torch.empty(backbone.hidden_size).uniform_())
        self.final_proj = nn.Linear(backbone.hidden_size, config.final_dim)
        self.label_embeddings = nn.Parameter(torch.empty(config.num_clusters, config.final_dim).uniform_())

    def draw_mask(self, padding_mask: Tensor | None, shape: tuple[int, int], device: torch.device,
                  generator: torch.Generator | None = None, seeds: Tensor | None = None) -> Tensor:
        """Span mask (B, F) bool over the real frames (HuBERT: 8 % of frames start a span of 10)."""
        return self.masker(padding_mask, shape, device, generator, seeds)[0]

    def encode(self, batch: Batch, mask: Tensor | None = None, output_hidden_states: bool = False
               ) -> tuple[BackboneOutput, Tensor | None]:
        """Masked frames (B, F) bool -> mask embedding, then positions and the Transformer.

        Returns the backbone output and the (B, F) padding mask. With ``mask`` None this is the plain encoder
        (what ``encoder()`` exports); with a mask it is ``transformers``' ``HubertModel(mask_time_indices=)``.
        """
        tokens = self.adapter.embed(batch)
        return self.transform(tokens.x, tokens.padding_mask, mask, output_hidden_states), tokens.padding_mask

    def transform(self, x: Tensor, padding_mask: Tensor | None, mask: Tensor | None,
                  output_hidden_states: bool = False) -> BackboneOutput:
        """(B, F, D) content embeddings -> masked frames replaced -> positions -> Transformer."""
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            x = torch.where(mask[:, :, None], self.mask_embedding.to(x.dtype), x)
        return self.backbone(self.adapter.add_positions(x, padding_mask), padding_mask, output_hidden_states)

    def forward(self, batch: Batch) -> ObjectiveOutput:
        tokens = self.adapter.embed(batch)
        x, padding_mask = tokens.x, tokens.padding_mask
        labels = fit_labels(batch[CLUSTER_LABELS].to(x.device).long(), x.shape[1], self.config.label_length_tolerance)
        if padding_mask is not None:
            labels = labels.masked_fill(padding_mask, IGNORE)
        bad = (labels != IGNORE) & ((labels < 0) | (labels >= self.config.num_clusters))
        if bad.any():
            raise ValueError(f"cluster_labels must be in [0, {self.config.num_clusters}) or -100; "
                             f"found {labels[bad][0].item()}")
        mask = batch.get(FIXED_MASK)
        if mask is None:
            mask = self.draw_mask(padding_mask, x.shape[:2], x.device, seeds=batch.get(EXAMPLE_SEEDS))
        mask = mask.to(device=x.device, dtype=torch.bool)
        h = self.transform(x, padding_mask, mask).last_hidden_state
        return self.loss(h, labels, mask, tokens.targets["conv_features"], padding_mask)

    def score(self, h: Tensor, labels: Tensor, select: Tensor, weight: float) -> tuple[Tensor, Tensor, Tensor]:
        """Summed cross-entropy and correct count over the frames in ``select`` (B, F); no graph if weight 0."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            logits = cluster_logits(self.final_proj(h[select]), self.label_embeddings, self.config.logit_temperature)
            target = labels[select]
            loss = F.cross_entropy(logits, target, reduction="sum")
        return loss, (logits.detach().argmax(dim=-1) == target).sum(), target.new_tensor(len(target))

    def loss(self, h: Tensor, labels: Tensor, mask: Tensor, conv_features: Tensor,
             padding_mask: Tensor | None) -> ObjectiveOutput:
        """h: (B, F, D) last hidden state; labels: (B, F) with -100 where not scored; mask: (B, F) bool."""
        c = self.config
        labelled = labels != IGNORE
        loss_m, correct_m, n_m = self.score(h, labels, mask & labelled, c.pred_masked_weight)
        loss_u, correct_u, n_u = self.score(h, labels, ~mask & labelled, c.pred_nomask_weight)
        total, n = h.new_zeros((), dtype=torch.float32), n_m.new_zeros(())
        if c.pred_masked_weight > 0:
            total, n = total + c.pred_masked_weight * loss_m, n + n_m
        if c.pred_nomask_weight > 0:
            total, n = total + c.pred_nomask_weight * loss_u, n + n_u
        metrics: dict[str, Tensor | float] = {}
        if c.feature_penalty_weight > 0:
            penalty = feature_penalty(conv_features, padding_mask, across_processes=self.training)
            total = total + c.feature_penalty_weight * penalty * n
            metrics["feature_penalty"] = penalty.detach()
        with torch.no_grad():
            m, u = n_m.clamp_min(1), n_u.clamp_min(1)
            metrics.update(masked_loss=loss_m.detach() / m, unmasked_loss=loss_u.detach() / u,
                           masked_accuracy=correct_m.float() / m, unmasked_accuracy=correct_u.float() / u,
                           masked_fraction=n_m.float() / labelled.sum().clamp_min(1))
        return ObjectiveOutput(loss=total, num_targets=n, metrics=metrics)

    @torch.no_grad()
    def layer_features(self, batch: Batch, layer: int) -> Tensor:
        """(B, F, D) output of Transformer layer ``layer`` (0 = the input to the first layer, after the position
        embedding; L = the last layer, before a pre-LN model's final norm), unmasked, in eval mode (dropout
        off), stopping after that layer: the features the next iteration's k-means clusters (HuBERT base
        iteration 2 uses layer 6 of the iteration-1 model). Equals ``transformers``' ``hidden_states[layer]``.
        Padded frames are in the output (the adapter's padding mask says which).
        """
        layers = self.backbone.layers
        if not 0 <= layer <= len(layers):
            raise ValueError(f"layer must be in [0, {len(layers)}], got {layer}")
        was_training = self.training
        self.eval()
        try:
            tokens = self.adapter(batch)
            x, attn_mask = tokens.x, self.backbone.attention_mask(tokens.padding_mask, tokens.x.shape[1])
            for block in layers[:layer]:
                x = block(x, attn_mask)
            return x
        finally:
            self.train(was_training)

    def encoder(self) -> Encoder:
        return Encoder(self.adapter, self.backbone)


__all__ = ["HubertObjective", "HubertObjectiveConfig", "cluster_logits", "fit_labels",
           "IGNORE"]
