"""Rotation prediction (RotNet, Gidaris, Singh & Komodakis, ICLR 2018): every image is shown in each of K
rotations and the encoder, with a classifier on its pooled features, predicts which.

The objective classifies *views*: ``batch["views"]`` holds K batches of the same B examples, view ``k``
transformed by the data side's ``k``-th transformation (for images ``rotation_transforms``: 0°, 90°, 180°, 270°
by default, or 8 rotations, {0°, 180°}, {90°, 270°}), so view ``k``'s label is ``k``. It never sees an angle: any
modality whose data side makes K transformed views trains with it. All K views go through the encoder together
(one forward, batch norm over all of them, as RotNet feeds the four rotated copies in one batch); the loss is the
cross-entropy summed over the K·B predictions with ``num_targets = K·B``, so the engine's global normalisation
gives the mean over every prediction of every process.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.objectives.two_view.common import encode_online, get_views, mlp, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class RotationConfig:
    """num_classes: the number of rotations (views) the data side makes; hidden_dim: 0 for a linear classifier on
    the pooled features, else one hidden layer of that width (batch norm, ReLU)."""

    num_classes: int = 4
    hidden_dim: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"rotation prediction needs at least 2 rotations, got {self.num_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


class RotationPrediction(Objective):
    def __init__(self, encoder: Encoder, config: RotationConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or RotationConfig()
        width = take_encoder(self, encoder)
        self.classifier = (nn.Linear(width, c.num_classes) if not c.hidden_dim
                           else mlp([width, c.hidden_dim, c.num_classes], "hidden"))

    def logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(K·B, K) logits of every view of every example, in view order, and their labels (the view index)."""
        views = get_views(batch)
        k = self.config.num_classes
        if len(views) != k:
            raise ValueError(f"rotation prediction with {k} classes needs {k} views, got {len(views)}")
        feats = encode_online(self, views)
        labels = torch.arange(k, device=feats.device).repeat_interleave(feats.shape[0] // k)
        return self.classifier(feats), labels

    def forward(self, batch: Batch) -> ObjectiveOutput:
        logits, labels = self.logits(batch)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        accuracy = (logits.detach().argmax(-1) == labels).float().mean()
        return ObjectiveOutput(loss, num_targets=len(labels), metrics={"rotation_accuracy": accuracy})

    encoder = online_encoder


# presets (the registry hands them to objectives/two_view/presets.py); the head's sizes are the config's defaults
PRESETS = {"rotation": dict(
    cpu={**CPU, "learning_rate": 0.1 * 64 / 128, "transform": "rotation"},
    # RotNet's CIFAR-10 setting: SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128 images (x 4 rotations), 100
    # epochs (the paper steps the rate down at 30 / 60 / 80; cosine here)
    gpu={**LIGHTLY_CIFAR, "batch_size": 128, "epochs": 100, "learning_rate": 0.1, "transform": "rotation"},
    # RotNet's ImageNet setting (an AlexNet there): SGD 0.01 (Nesterov momentum 0.9), weight decay 5e-4, batch 192,
    # 30 epochs, no warmup
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4, "batch_size": 192,
              "epochs": 30, "warmup_epochs": 0, "transform": "rotation"},
)}


__all__ = ["RotationConfig", "RotationPrediction"]
