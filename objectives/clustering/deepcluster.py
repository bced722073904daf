"""DeepCluster (Caron, Bojanowski, Joulin & Douze, ECCV 2018, "Deep Clustering for Unsupervised Learning of Visual
Features"): at the start of every epoch, cluster the features of every training example with k-means; during the
epoch, train the network to predict each example's cluster (its pseudo-label).

**Clustering** (:meth:`DeepCluster.on_epoch_start`, which the engine calls before each epoch's first batch with the
whole training set without augmentation, each process its share): the features are the encoder's pooled vector
through the top layers (``hidden_dims``: the paper's fc6 / fc7, dropout / linear / ReLU, without the last ReLU as
its ``compute_features``; none on a ResNet by default), computed in eval mode (no dropout, batch norm's running
statistics); the rows of every process are gathered and put in example order, so every process holds the same
matrix. PCA to ``pca_dim`` dimensions with whitening (each axis divided by the square root of its eigenvalue:
faiss's ``PCAMatrix(eigen_power=-0.5)``), then every row L2-normalised (the paper's ``preprocess_features``), then
Lloyd's k-means with ``num_clusters`` centroids (:func:`selfsup.kmeans.lloyd`: a k-means++ seeding, or faiss's
random rows as the paper with ``kmeans_init="random"``, then ``kmeans_iterations`` rounds, 20 in the paper; an empty cluster takes a non-empty one's centroid, perturbed, and
half its points, sec. 3.3), seeded by (``seed``, epoch). Process 0's assignment is broadcast (one clustering for
every process, whatever its arithmetic). The ids go into the persistent buffer ``labels`` (num_examples,): a
checkpoint holds them and a resume in the middle of an epoch trains on them. The classifier (the paper's
``top_layer``: one linear layer, ``num_clusters`` outputs) is re-initialised then, weights N(0, 0.01) and bias 0 as
the paper's code, from a generator seeded by (``seed``, epoch).

**Training**: one augmented view per example (``batch["views"][0]``, the "one_view" pipeline) and its index in the
training set (``batch[EXAMPLE_INDEX]``); logits = classifier(ReLU(top layers(pooled))) (no ReLU without top layers).
Uniform sampling over the clusters (the paper's ``UnifLabelSampler``) becomes a weight per example, so the loader
stays the engine's: with ``balanced``, example i in cluster c weighs N / (K' n_c) (n_c: the cluster's size, K': the
non-empty clusters; the weights average 1 over the training set), so a uniformly drawn batch's expected loss is
that of batches drawn cluster first. Loss: the weighted cross-entropy of the pseudo-labels summed over the batch,
``num_targets`` = B. Metrics: ``cluster_accuracy`` (the batch's predictions that are its pseudo-labels) and
``cluster_nmi`` (the normalised mutual information between this epoch's clustering and the previous one, the
paper's fig. 2b; 0 at the first).

Not here: the paper's Sobel filter on the input (grayscale and image gradients, to hide colour; the one-view
pipeline's colour jitter and random grayscale stand in for it). The engine keeps one optimizer for the run, so the
re-initialised classifier's SGD momentum carries over from the previous epoch (the paper's code makes it a new
optimizer each epoch).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import kmeans
from selfsup.data import to_device
from selfsup.distributed import rank, world_size
from selfsup.objectives.two_view.common import encode_online, gather_rows, get_views, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import EXAMPLE_INDEX, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class DeepClusterConfig:
    """num_examples: the training set's size (the builder fills it); num_clusters: k (10,000 on ImageNet in the
    paper); pca_dim: the whitened PCA's dimensions before k-means (256; 0: no PCA, only L2-normalisation);
    hidden_dims: the top layers between the pooled features and the classifier (the paper's AlexNet / VGG: 4096,
    4096), each after a dropout of ``dropout``; kmeans_iterations: Lloyd's rounds; kmeans_init: its first centroids,
    "k-means++" or "random" (faiss's, the paper's: cheaper for a large k, more often a poor optimum); balanced: weigh each example by
    1 / its cluster's size (uniform sampling over the clusters); seed: the k-means and the classifier's
    initialisations."""

    num_examples: int = 0
    num_clusters: int = 100
    pca_dim: int = 256
    hidden_dims: tuple[int, ...] = ()
    dropout: float = 0.5
    kmeans_iterations: int = 20
    kmeans_init: str = "k-means++"
    balanced: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        if self.kmeans_init not in kmeans.LLOYD_INITS:
            raise ValueError(f"unknown kmeans_init {self.kmeans_init!r}; choose from {list(kmeans.LLOYD_INITS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def top_layers(width: int, hidden_dims: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Dropout / linear / ReLU per hidden layer, without the last ReLU (the features DeepCluster clusters)."""
    layers: list[nn.Module] = []
    for i, h in enumerate(hidden_dims):
        if i:
            layers.append(nn.ReLU())
        layers += [nn.Dropout(dropout), nn.Linear(width, h)]
        width = h
    return nn.Sequential(*layers)


def pca_whiten(x: Tensor, dim: int) -> Tensor:
    """(N, D) -> (N, dim) float32: centred, projected on the ``dim`` principal axes of largest variance, each
    divided by the square root of its eigenvalue (whitened), every row then L2-normalised (DeepCluster's
    ``preprocess_features``); ``dim`` 0 (or >= D): no projection, only the normalisation. The axes' signs are
    fixed (largest entry positive), so equal inputs give equal outputs."""
    x = x.double()
    if 0 < dim < x.shape[1]:
        x = x - x.mean(dim=0)
        values, vectors = torch.linalg.eigh(x.T @ x / max(len(x) - 1, 1))          # ascending
        values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
        signs = torch.sign(vectors.gather(0, vectors.abs().argmax(dim=0, keepdim=True)))
        x = x @ (vectors * signs) / values.clamp_min(float(values[0]) * 1e-10 + 1e-300).sqrt()
    return F.normalize(x, dim=1).float()


def nmi(a: Tensor, b: Tensor) -> float:
    """Normalised mutual information I(a; b) / sqrt(H(a) H(b)) of two (N,) labellings (the paper's fig. 2b; 0
    when either has one label)."""
    n = len(a)
    _, joint = torch.unique(a.long() * (int(b.max()) + 1) + b.long(), return_counts=True)
    _, ca = torch.unique(a, return_counts=True)
    _, cb = torch.unique(b, return_counts=True)

    def entropy(counts: Tensor) -> float:
        p = counts.double() / n
        return float(-(p * p.log()).sum())

    ha, hb = entropy(ca), entropy(cb)
    mutual = ha + hb - entropy(joint)
    return mutual / (ha * hb) ** 0.5 if ha > 0 and hb > 0 else 0.0


class DeepCluster(Objective):
    def __init__(self, encoder: Encoder, config: DeepClusterConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or DeepClusterConfig()
        if c.num_examples < c.num_clusters or c.num_clusters < 1:
            raise ValueError(f"DeepCluster needs num_examples >= num_clusters >= 1 (the training set's size, for its "
                             f"pseudo-labels); got num_examples={c.num_examples}, num_clusters={c.num_clusters}")
        width = take_encoder(self, encoder)
        self.top = top_layers(width, c.hidden_dims, c.dropout)
        self.feature_width = c.hidden_dims[-1] if c.hidden_dims else width
        self.classifier = nn.Linear(self.feature_width, c.num_clusters)
        self.reset_classifier(-1)
        self.register_buffer("labels", torch.full((c.num_examples,), -1, dtype=torch.long), persistent=True)
        self.register_buffer("weights", torch.ones(c.num_clusters), persistent=True)   # per cluster
        self.register_buffer("nmi", torch.zeros(()), persistent=True)

    # -- the clustering, once per epoch ----------------------------------------------------------------------------
    @torch.no_grad()
    def reset_classifier(self, epoch: int) -> None:
        """The top layer anew: weights N(0, 0.01), bias 0, drawn from (seed, epoch)."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch + 1)
        weight = self.classifier.weight
        weight.copy_(torch.randn(weight.shape, generator=g, dtype=torch.float64).to(weight) * 0.01)
        self.classifier.bias.zero_()

    @torch.no_grad()
    def example_features(self, data: Any) -> Tensor:
        """(num_examples, F) the clustered features of every example, in example order: this process's batches of
        ``data`` in eval mode, every process's rows gathered (every process gets the same matrix)."""
        device, n = self.labels.device, self.config.num_examples
        was_training = self.training
        self.eval()
        rows, indices = [], []
        try:
            for batch in data:
                if EXAMPLE_INDEX not in batch:
                    raise ValueError(f"DeepCluster's epoch data needs batch[{EXAMPLE_INDEX!r}] (each example's index)")
                batch = to_device(batch, device)
                rows.append(self.top(encode_online(self, [batch])))
                indices.append(batch[EXAMPLE_INDEX].long())
        finally:
            self.train(was_training)
        dtype = self.classifier.weight.dtype
        local = torch.cat(rows).to(dtype) if rows else torch.zeros(0, self.feature_width, dtype=dtype, device=device)
        index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
        every, where = gather_rows(local), gather_rows(index)
        out = torch.zeros(n, self.feature_width, dtype=dtype, device=device)
        seen = torch.zeros(n, dtype=torch.bool, device=device)
        if len(where) and (int(where.min()) < 0 or int(where.max()) >= n):
            raise ValueError(f"DeepCluster's epoch data holds example indices outside 0..{n - 1}")
        out[where], seen[where] = every, True
        if not bool(seen.all()):
            raise ValueError(f"DeepCluster's epoch data covered {int(seen.sum())} of the {n} training examples; it "
                             "must hold every one (each process its share)")
        return out

    @torch.no_grad()
    def cluster(self, features: Tensor, epoch: int) -> Tensor:
        """(N,) the k-means ids of (N, F) features: whitened PCA, L2-normalised rows, Lloyd's k-means."""
        c = self.config
        x = pca_whiten(features, c.pca_dim)
        return kmeans.lloyd(x, c.num_clusters, c.kmeans_iterations, seed=c.seed * 1_000_003 + epoch,
                            init=c.kmeans_init)[1]

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, data: Any) -> None:
        """Cluster every example's features, keep the ids as pseudo-labels, re-initialise the classifier."""
        if data is None:
            raise ValueError("DeepCluster clusters the whole training set at the start of every epoch: the trainer "
                             "needs epoch_data (the training set without augmentation; the image recipe gives it)")
        features = self.example_features(data)
        ids = self.cluster(features, epoch) if rank() == 0 else torch.empty(len(features), dtype=torch.long)
        ids = ids.to(self.labels.device)
        if world_size() > 1:
            torch.distributed.broadcast(ids, src=0)
        self.nmi.fill_(nmi(ids, self.labels) if bool((self.labels >= 0).all()) else 0.0)
        self.labels.copy_(ids)
        counts = torch.bincount(ids, minlength=self.config.num_clusters).to(self.weights.dtype)
        filled = counts > 0
        self.weights.zero_()
        self.weights[filled] = len(ids) / (int(filled.sum()) * counts[filled])
        self.reset_classifier(epoch)

    # -- training --------------------------------------------------------------------------------------------------
    def logits(self, pooled: Tensor) -> Tensor:
        """(B, k) the classifier's scores of pooled features."""
        h = self.top(pooled)
        return self.classifier(F.relu(h) if self.config.hidden_dims else h)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The cross-entropy of the pseudo-labels, each weighted by its cluster's weight when ``balanced``, summed."""
        per = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction="none")
        return (per * self.weights[targets].to(per.dtype)).sum() if self.config.balanced else per.sum()

    def forward(self, batch: Batch) -> ObjectiveOutput:
        if EXAMPLE_INDEX not in batch:
            raise ValueError(f"DeepCluster needs batch[{EXAMPLE_INDEX!r}], each example's index in the training set "
                             "(the image views collate gives it)")
        views = get_views(batch, need=1)
        targets = self.labels[batch[EXAMPLE_INDEX].long().to(self.labels.device)]
        if bool((targets < 0).any()):
            raise ValueError("DeepCluster has no pseudo-labels yet: on_epoch_start(epoch, data) clusters the training "
                             "set first (the trainer calls it at every epoch's start)")
        logits = self.logits(encode_online(self, views[:1]))
        accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return ObjectiveOutput(self.loss(logits, targets), num_targets=len(targets),
                               metrics={"cluster_accuracy": accuracy, "cluster_nmi": float(self.nmi)})

    encoder = online_encoder


# image sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"deepcluster": dict(
    tiny=dict(num_clusters=4, pca_dim=8, hidden_dims=(32,)),
    small=dict(num_clusters=100, pca_dim=256),  # k 100 for CIFAR-10's 10 classes
    # the paper's ImageNet k 10,000 (faiss's random initial centroids), PCA 256, the top layers 4096 / 4096 with
    # dropout 0.5
    base=dict(num_clusters=10000, pca_dim=256, hidden_dims=(4096, 4096), dropout=0.5, kmeans_init="random"))}
PRESETS = {"deepcluster": dict(
    # k 100 (the size "small"); 900 steps: at 300 the kNN on CIFAR-10's test split did not beat random init
    # (-0.2 ± 0.9 points), at 900 it does (+2.0 ± 0.9; the probe +5.3 ± 1.1; docs/benchmarks.md)
    cpu={**CPU, "max_steps": 900, "transform": "one_view"},
    # the paper (sec. 4.1): SGD 0.05, momentum 0.9, weight decay 1e-5, batch 256, 500 epochs (a constant rate there;
    # cosine here), re-clustered every epoch; k 100 on CIFAR-10 (the size "small"; the paper's 10,000 is for
    # ImageNet's 1.28M images); one view per image, its colour jitter and random grayscale in place of the paper's
    # Sobel filter
    gpu={**LIGHTLY_CIFAR, "batch_size": 256, "epochs": 500, "learning_rate": 0.05, "weight_decay": 1e-5,
         "transform": "one_view"},
    # the size "base": k 10,000, PCA to 256, top layers 4096 / 4096 with dropout 0.5 (no Sobel filter here)
    imagenet={**IMAGENET, "optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 1e-5,
              "epochs": 500, "warmup_epochs": 0, "transform": "one_view"},
)}


__all__ = ["DeepCluster", "DeepClusterConfig", "pca_whiten", "nmi", "top_layers"]
