"""Jigsaw puzzles (context-free network, Noroozi & Favaro, ECCV 2016): an image cut into a 3 x 3 grid of tiles,
shuffled by one of N permutations chosen far apart (``hamming_permutations``), and the network names the
permutation.

``batch["views"]`` holds the tiles in their shuffled positions (view ``j`` = the tile shown at position ``j``, a
batch the adapter reads) and ``batch["pretext_labels"]`` the index of each example's permutation; the data side
(``modalities.image_views.JigsawTiles``) cuts and shuffles. Every tile goes through the same encoder on its own (the
siamese "context-free" towers; one forward for all tiles of the batch), the pooled features are concatenated in
position order and a two-layer classifier (the paper's fc7 / fc8) predicts the permutation. The loss is the
cross-entropy summed over the examples, ``num_targets`` = B.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F

from selfsup.objectives.two_view.common import encode_online, get_views, mlp, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import PRETEXT_LABELS, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class JigsawConfig:
    """num_permutations: the size of the permutation set (the classes; 1000 in the paper's best run, 100 its
    smaller one); num_tiles: tiles per puzzle (3 x 3); hidden_dim: the classifier's hidden layer (fc7)."""

    num_permutations: int = 100
    num_tiles: int = 9
    hidden_dim: int = 512

    def __post_init__(self) -> None:
        if self.num_permutations < 2 or self.num_tiles < 2:
            raise ValueError(f"a jigsaw needs at least 2 permutations of at least 2 tiles, got "
                             f"{self.num_permutations} of {self.num_tiles}")

    def to_dict(self) -> dict:
        return asdict(self)


class JigsawPrediction(Objective):
    def __init__(self, encoder: Encoder, config: JigsawConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or JigsawConfig()
        width = take_encoder(self, encoder)
        self.classifier = mlp([width * c.num_tiles, c.hidden_dim, c.num_permutations], "hidden")

    def forward(self, batch: Batch) -> ObjectiveOutput:
        c = self.config
        tiles = get_views(batch, need=c.num_tiles)
        if len(tiles) != c.num_tiles:
            raise ValueError(f"a jigsaw of {c.num_tiles} tiles needs {c.num_tiles} views, got {len(tiles)}")
        labels = batch.get(PRETEXT_LABELS)
        if labels is None:
            raise ValueError(f"a jigsaw batch needs {PRETEXT_LABELS!r}: each example's permutation index")
        feats = encode_online(self, tiles)                                    # (tiles * B, D), tile-major
        b = feats.shape[0] // c.num_tiles
        puzzle = feats.reshape(c.num_tiles, b, -1).transpose(0, 1).reshape(b, -1)   # (B, tiles * D), in position order
        logits = self.classifier(puzzle)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        accuracy = (logits.detach().argmax(-1) == labels).float().mean()
        return ObjectiveOutput(loss, num_targets=b, metrics={"jigsaw_accuracy": accuracy})

    encoder = online_encoder


# presets (the registry hands them to objectives/two_view/presets.py); the head's sizes are the config's defaults
PRESETS = {"jigsaw": dict(
    # at 32 pixels the paper's 64/75 leaves tiles 0 to 2 pixels apart, and 900 steps solve the puzzle from the edges
    # with features below random init; 0.7 (7-pixel tiles, gaps of 0 to 6) stays above it (docs/benchmarks.md)
    cpu={**CPU, "transform": "jigsaw", "cell_fraction": 0.7},
    gpu={**LIGHTLY_CIFAR, "transform": "jigsaw"},   # the paper trained on ImageNet only: lightly's CIFAR-10 schedule
    # the paper's: batch 256, SGD 0.01, 350,000 iterations (about 70 epochs); weight decay AlexNet's (unstated)
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.01, "weight_decay": 5e-4, "max_steps": 350_000,
              "warmup_epochs": 0, "transform": "jigsaw"},
)}


__all__ = ["JigsawConfig", "JigsawPrediction"]
