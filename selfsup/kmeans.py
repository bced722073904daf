"""Mini-batch k-means (Sculley, 2010, "Web-scale k-means clustering") with k-means++ seeding, in pure torch.

HuBERT's targets are k-means cluster ids of frame features (Hsu et al., 2021: MFCCs in iteration 1, a layer of
the previous model afterwards); fairseq's ``simple_kmeans/learn_kmeans.py`` uses scikit-learn's
``MiniBatchKMeans(init="k-means++", batch_size=10000, n_init=20, reassignment_ratio=0)``. This is the same
algorithm on torch tensors (CPU or GPU), deterministic for a seed, with distances computed in chunks so that
about a million frames fit in memory as features and never as a frames x clusters matrix.

* Seeding: greedy k-means++ (Arthur & Vassilvitskii, 2007; ``2 + ln k`` candidates per centre, as
  scikit-learn) on a random subset of ``init_size`` frames, ``n_init`` times; the seeding with the lowest
  inertia on that subset wins.
* Updates: ``iterations`` mini-batches of ``batch_size`` frames (Sculley's t, *steps*, not passes over the data
  as scikit-learn's ``max_iter``); each frame moves its nearest centre with rate 1 / (frames the centre has
  absorbed), i.e. every centre is the running mean of the frames assigned to it. Centres that never win keep
  their seeding.

:func:`lloyd` is the full-batch algorithm instead (faiss's ``Clustering``, which DeepCluster runs on the features of
every training image each epoch): k-means++ initial centres by default (``init="random"``: faiss's random rows),
Lloyd's rounds, and empty clusters filled by splitting a non-empty one (:func:`split_empty`, Caron et al., 2018,
sec. 3.3).

Input is a (N, D) tensor (mini-batches drawn at random with replacement) or an iterable of (n, D) batches
(streamed in order, cut into ``batch_size`` pieces; re-iterable ones such as lists or data loaders are passed
over again until ``iterations`` steps are done, one-shot iterators once). Centroids are saved with safetensors.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from selfsup.errors import SelfsupError

CHUNK = 65536


def squared_distances(x: Tensor, centroids: Tensor, c_sq: Tensor | None = None, x_sq: Tensor | None = None
                      ) -> Tensor:
    """(n, D), (k, D) -> (n, k) squared Euclidean distances, ``|x|^2 - 2 x.c + |c|^2`` clamped at 0
    (``c_sq`` (k,), ``x_sq`` (n,): the squared norms when already known)."""
    c_sq = centroids.pow(2).sum(dim=1) if c_sq is None else c_sq
    x_sq = x.pow(2).sum(dim=1) if x_sq is None else x_sq
    return torch.addmm(x_sq[:, None] + c_sq, x, centroids.T, alpha=-2).clamp_min_(0)


def assign(x: Tensor, centroids: Tensor, chunk_size: int = CHUNK) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every row: ids (n,) long and squared distances (n,), ``chunk_size`` rows at a time."""
    centroids = centroids.to(device=x.device, dtype=torch.float32)
    c_sq = centroids.pow(2).sum(dim=1)
    ids, dists = [], []
    for start in range(0, len(x), chunk_size):
        d, i = squared_distances(x[start:start + chunk_size].float(), centroids, c_sq).min(dim=1)
        ids.append(i)
        dists.append(d)
    if not ids:
        return torch.empty(0, dtype=torch.long, device=x.device), torch.empty(0, device=x.device)
    return torch.cat(ids), torch.cat(dists)


def predict(features: Tensor, centroids: Tensor, chunk_size: int = CHUNK) -> Tensor:
    """(N, D) features, (k, D) centroids -> (N,) long id of each frame's nearest centroid."""
    return assign(features, centroids, chunk_size)[0]


def inertia(features: Tensor | Iterable[Tensor], centroids: Tensor, chunk_size: int = CHUNK) -> float:
    """Sum over frames of the squared distance to the nearest centroid (a tensor or an iterable of batches)."""
    batches = [features] if isinstance(features, Tensor) else features
    return float(sum(assign(b, centroids, chunk_size)[1].double().sum().item() for b in batches))


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator, chunk_size: int = CHUNK) -> Tensor:
    """Greedy k-means++ seeding: (n, D) float32 -> (k, D) centres chosen among the rows of x. Each new centre is
    the best (lowest potential) of ``2 + ln k`` candidates drawn with probability proportional to D(x)^2."""
    trials = 2 + int(math.log(k))
    x_sq = x.pow(2).sum(dim=1)
    first = int(torch.randint(len(x), (1,), generator=generator).item())
    chosen = [first]
    closest = squared_distances(x, x[first:first + 1], x_sq=x_sq)[:, 0]          # (n,) D(x)^2
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)   # every point taken: uniform
        candidates = torch.multinomial(weights.cpu().double(), trials, replacement=True, generator=generator)
        candidates = candidates.to(x.device)
        new = torch.cat([torch.minimum(closest[s:s + chunk_size, None],
                                       squared_distances(x[s:s + chunk_size], x[candidates], x_sq[candidates],
                                                         x_sq[s:s + chunk_size]))
                         for s in range(0, len(x), chunk_size)])                  # (n, trials)
        best = int(new.sum(dim=0, dtype=torch.float64).argmin().item())
        chosen.append(int(candidates[best]))
        closest = new[:, best]
    return x[torch.tensor(chosen, device=x.device)].clone()


def update(centroids: Tensor, counts: Tensor, batch: Tensor, chunk_size: int = CHUNK) -> float:
    """One Sculley step in place: assign ``batch`` with the current centres, then move each centre to the
    running mean of every frame it has absorbed. Returns the batch's inertia."""
    ids, dists = assign(batch, centroids, chunk_size)
    k = len(centroids)
    batch_counts = torch.bincount(ids, minlength=k).to(counts.dtype)
    sums = torch.zeros_like(centroids).index_add_(0, ids, batch).double()
    new_counts = counts + batch_counts
    hit = batch_counts > 0
    centroids[hit] = ((centroids[hit].double() * counts[hit, None] + sums[hit]) / new_counts[hit, None]).float()
    counts.copy_(new_counts)
    return float(dists.double().sum().item())


def best_seeding(sample: Tensor, k: int, n_init: int, generator: torch.Generator, chunk_size: int) -> Tensor:
    """The k-means++ seeding of lowest inertia on ``sample`` among ``n_init`` tries."""
    if len(sample) < k:
        raise ValueError(f"k-means needs at least k={k} frames to seed from, got {len(sample)}")
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        seeds = kmeans_plusplus(sample, k, generator, chunk_size)
        value = inertia(sample, seeds, chunk_size)
        if value < best_inertia:
            best, best_inertia = seeds, value
    return best


def stream(batches: Iterable[Tensor], batch_size: int) -> Iterator[tuple[int, Tensor]]:
    """(pass number, float32 piece of at most ``batch_size`` rows) from an iterable of (n, D) batches; a
    re-iterable one (list, data loader) is passed over again and again, a one-shot iterator once."""
    once = iter(batches) is batches
    for epoch in itertools.count():
        given = 0
        for batch in batches:
            batch = torch.as_tensor(batch)
            if batch.dim() != 2:
                raise ValueError(f"k-means batches must be (frames, dims); got shape {tuple(batch.shape)}")
            for start in range(0, len(batch), batch_size):
                given += 1
                yield epoch, batch[start:start + batch_size].float()
        if once or not given:
            return


def fit(features: Tensor | Iterable[Tensor], k: int, batch_size: int = 10000, iterations: int = 100,
        seed: int = 0, n_init: int = 3, init_size: int | None = None, chunk_size: int = CHUNK) -> Tensor:
    """Mini-batch k-means: (N, D) features, or an iterable of (n, D) batches -> (k, D) float32 centroids.

    init_size: frames the k-means++ seeding looks at (default ``max(3 * batch_size, 3 * k)`` as
    scikit-learn; for a stream, the first that many frames). Same inputs and seed give the same centroids.
    """
    if k < 1 or batch_size < 1 or iterations < 0 or n_init < 1:
        raise ValueError("k, batch_size and n_init must be positive and iterations non-negative")
    generator = torch.Generator().manual_seed(seed)
    init_size = init_size or max(3 * batch_size, 3 * k)
    if isinstance(features, Tensor):
        if features.dim() != 2:
            raise ValueError(f"k-means features must be (frames, dims); got shape {tuple(features.shape)}")
        n = len(features)
        pick = torch.randperm(n, generator=generator)[:init_size].to(features.device)
        centroids = best_seeding(features[pick].float(), k, n_init, generator, chunk_size)
        batches: Iterable[Tensor] = (
            features[torch.randint(n, (min(batch_size, n),), generator=generator).to(features.device)].float()
            for _ in range(iterations))
    else:
        pieces = stream(features, batch_size)
        head: list[Tensor] = []                     # the first init_size frames of the first pass seed
        item: tuple[int, Tensor] | None = None
        while sum(len(p) for p in head) < init_size and (item := next(pieces, None)) is not None:
            head.append(item[1])
            if item[0] > 0:                         # fewer frames than init_size in all: no duplicates
                head.pop()
                break
        if not head:
            raise ValueError("k-means got no features")
        centroids = best_seeding(torch.cat(head)[:init_size], k, n_init, generator, chunk_size)
        rest = (p for _, p in pieces)
        if item is not None and item[0] > 0:
            rest = itertools.chain([item[1]], rest)
        batches = itertools.islice(itertools.chain(head, rest), iterations)   # the seeding frames come first
    counts = torch.zeros(k, dtype=torch.float64, device=centroids.device)
    for batch in batches:
        update(centroids, counts, batch.to(centroids.device), chunk_size)
    return centroids


SPLIT_EPS = 1 / 1024   # faiss's relative perturbation of the two halves of a split cluster


def split_empty(x: Tensor, ids: Tensor, centroids: Tensor, generator: torch.Generator, eps: float = SPLIT_EPS,
                chunk_size: int = CHUNK) -> int:
    """Fill the empty clusters of the assignment ``ids`` (N,) of ``x`` (N, D), in place (``ids`` and ``centroids``
    (k, D)), as DeepCluster does (Caron et al., 2018, sec. 3.3; faiss's ``split_clusters``): each empty cluster takes
    the centroid of a non-empty one, drawn with probability proportional to its size minus one (a cluster of one
    point is never split), times ``1 + eps`` on the even dimensions and ``1 - eps`` on the odd ones, while the other
    centroid moves the opposite way; the points of the split cluster then go to the nearer of the two (the paper's
    "reassign the points belonging to the non-empty cluster to the two resulting clusters"). Returns the number of
    clusters split (fewer than the empty ones only when no cluster has two points)."""
    k = len(centroids)
    counts = torch.bincount(ids, minlength=k).cpu()
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    splits = 0
    for ci in torch.nonzero(counts == 0).flatten().tolist():
        weights = (counts - 1).clamp_min(0).double()
        if weights.sum() == 0:
            break
        cj = int(torch.multinomial(weights, 1, generator=generator))
        base = centroids[cj].clone()
        centroids[ci], centroids[cj] = base * (1 + eps * sign), base * (1 - eps * sign)
        members = torch.nonzero(ids == cj).flatten()
        d = torch.cat([squared_distances(x[members[s:s + chunk_size]].float(), centroids[[ci, cj]].float())
                       for s in range(0, len(members), chunk_size)])
        ids[members[d[:, 0] < d[:, 1]]] = ci
        counts = torch.bincount(ids, minlength=k).cpu()
        splits += 1
    return splits


LLOYD_INITS = ("k-means++", "random")


def lloyd(x: Tensor, k: int, iterations: int = 20, seed: int = 0, init: str = "k-means++",
          chunk_size: int = CHUNK) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on every row of ``x`` (N, D), as faiss's ``Clustering`` that DeepCluster runs (``niter`` 20
    there): the first centroids are a greedy k-means++ seeding (:func:`kmeans_plusplus`, on every row) or, with
    ``init="random"``, k distinct rows drawn at random (faiss's; cheaper for a large k, more often a poor local
    optimum); each of ``iterations`` rounds assigns every row to its nearest centroid, fills the empty clusters
    (:func:`split_empty`) and moves every centroid to the mean of its rows. Returns the (k, D) float32 centroids
    and the (N,) long final assignment (its empty clusters split too). Same inputs and seed: same result."""
    if not 1 <= k <= len(x) or iterations < 0:
        raise ValueError(f"k-means needs 1 <= k <= rows and iterations >= 0; got k={k}, {len(x)} rows, "
                         f"iterations={iterations}")
    if init not in LLOYD_INITS:
        raise ValueError(f"unknown k-means initialisation {init!r}; choose from {list(LLOYD_INITS)}")
    generator = torch.Generator().manual_seed(seed)
    x = x.float()
    centroids = (kmeans_plusplus(x, k, generator, chunk_size) if init == "k-means++" else
                 x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone())
    for _ in range(iterations):
        ids = assign(x, centroids, chunk_size)[0]
        split_empty(x, ids, centroids, generator, chunk_size=chunk_size)
        counts = torch.bincount(ids, minlength=k)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, ids, x.double())
        hit = counts > 0
        centroids[hit] = (sums[hit] / counts[hit, None]).float()
    ids = assign(x, centroids, chunk_size)[0]
    split_empty(x, ids, centroids, generator, chunk_size=chunk_size)
    return centroids, ids


def save_centroids(path: str | Path, centroids: Tensor, metadata: dict[str, str] | None = None) -> None:
    """Write (k, D) centroids to a safetensors file (``metadata``: strings, e.g. the feature source and layer)."""
    from safetensors.torch import save_file

    save_file({"centroids": centroids.detach().float().cpu().contiguous()}, str(path),
              metadata={str(k): str(v) for k, v in (metadata or {}).items()})


def load_centroids(path: str | Path) -> Tensor:
    """(k, D) centroids from a file written by :func:`save_centroids`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise SelfsupError(f"{path}: cannot read k-means centroids ({err})") from None
    if "centroids" not in tensors or tensors["centroids"].dim() != 2:
        raise SelfsupError(f"{path}: no (k, dims) 'centroids' tensor in this safetensors file")
    return tensors["centroids"]


__all__ = ["fit", "lloyd", "split_empty", "predict", "inertia", "assign", "kmeans_plusplus", "update", "save_centroids", "load_centroids"]
