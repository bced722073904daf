"""Relative patch position (context prediction, Doersch, Gupta & Efros, ICCV 2015): given a centre patch and one of
its eight neighbours, say which neighbour it is.

``batch["views"]`` holds two batches, the centre patches and the neighbours (the data side,
``modalities.image_views.RelativePatches``, cuts them with gaps, jitter and colour dropping), and
``batch["pretext_labels"]`` each neighbour's index (0-7, row-major around the centre). Both patches go through the same
encoder (the paper's siamese towers, one forward for both), their pooled features are concatenated (centre first)
and a two-layer classifier (fc7 / fc8) predicts the index. Cross-entropy summed over the examples, ``num_targets``
= B.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from selfsup.objectives.two_view.common import encode_online, get_views, mlp, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import PRETEXT_LABELS, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class RelativePositionConfig:
    """num_positions: the neighbours to tell apart (8); hidden_dim: the classifier's hidden layer."""

    num_positions: int = 8
    hidden_dim: int = 512

    def to_dict(self) -> dict:
        return asdict(self)


class RelativePosition(Objective):
    def __init__(self, encoder: Encoder, config: RelativePositionConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or RelativePositionConfig()
        width = take_encoder(self, encoder)
        self.classifier = mlp([2 * width, c.hidden_dim, c.num_positions], "hidden")

    def forward(self, batch: Batch) -> ObjectiveOutput:
        views = get_views(batch)
        labels = batch.get(PRETEXT_LABELS)
        if len(views) != 2 or labels is None:
            raise ValueError(f"relative position needs 2 views (centre, neighbour) and {PRETEXT_LABELS!r}, got "
                             f"{len(views)} views{'' if labels is not None else ' and no labels'}")
        centre, neighbour = encode_online(self, views).chunk(2)
        logits = self.classifier(torch.cat([centre, neighbour], dim=1))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        accuracy = (logits.detach().argmax(-1) == labels).float().mean()
        return ObjectiveOutput(loss, num_targets=len(labels), metrics={"position_accuracy": accuracy})

    encoder = online_encoder


# presets (the registry hands them to objectives/two_view/presets.py); the head's sizes are the config's defaults
PRESETS = {"relative_position": dict(
    # patches of 0.9 of a cell (at 32 pixels 9 of 10: a 1-pixel gap, no jitter) and 900 steps: with the paper's gap
    # of half a patch (7-pixel patches) the pretext was barely learned (20 % after 300 steps, chance 12.5 %) and the
    # features stayed below random init; a step on two small patches costs about a third of a two-view step on whole
    # images (docs/benchmarks.md, "relative position")
    cpu={**CPU, "max_steps": 900, "transform": "relative_position", "cell_fraction": 0.9},
    gpu={**LIGHTLY_CIFAR, "transform": "relative_position"},   # ImageNet only in the paper too
    # generic SGD settings on a ResNet-50, not the paper's (an AlexNet-style pair network)
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4, "batch_size": 128,
              "warmup_epochs": 0, "transform": "relative_position"},
)}


__all__ = ["RelativePositionConfig", "RelativePosition"]
