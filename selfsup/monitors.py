"""Collapse monitors for joint-embedding methods, modality-blind: they look only at a (B, D) batch of embeddings.

* ``embedding_std``: the mean over dimensions of the per-dimension std of the L2-normalised embeddings
  (SimSiam, Chen & He 2021, sec. 4.1 / Fig. 2): about 1/sqrt(D) for healthy embeddings, 0 when every example
  maps to the same vector.
* ``effective_rank``: exp of the entropy of the normalised singular values (Roy & Vetterli 2007; RankMe,
  Garrido et al. 2023): up to min(B, D), 1 for rank-one (completely or dimensionally collapsed) embeddings.

and, for two embeddings of the same examples (two views, an image and its caption), Wang & Isola's (ICML 2020)

* ``alignment``: the mean squared distance between the L2-normalised embeddings of each positive pair (0 when the
  two coincide, up to 4);
* ``uniformity``: log of the mean Gaussian potential ``exp(-2 ||u - v||^2)`` over every pair of examples (0 when all
  embeddings are one point; the more negative, the more evenly they cover the sphere).

They are metrics of this process's batch (no collectives); the engine logs them from the main process.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_std(z: Tensor) -> Tensor:
    """z: (B, D), B >= 2 -> scalar: mean over the D dimensions of the std over the batch of z / ||z||."""
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()


def effective_rank(z: Tensor) -> Tensor:
    """z: (B, D) -> scalar ``exp(-sum_k p_k log p_k)``, p the singular values of z (not centred, as RankMe)
    divided by their sum; 0 for an all-zero z."""
    s = torch.linalg.svdvals(z.detach().float())
    total = s.sum()
    if total <= 0:
        return total.new_zeros(())
    p = s / total
    return torch.exp(-torch.special.xlogy(p, p).sum())


def alignment(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """x, y: (B, D) embeddings of B positive pairs -> ``mean_i ||x_i/|x_i| - y_i/|y_i| ||^alpha`` (Wang & Isola's
    ``align_loss``, alpha 2)."""
    x, y = F.normalize(x.detach().float(), dim=1), F.normalize(y.detach().float(), dim=1)
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity(x: Tensor, t: float = 2.0) -> Tensor:
    """x: (B >= 2, D) -> ``log mean_{i<j} exp(-t ||x_i/|x_i| - x_j/|x_j| ||^2)`` (Wang & Isola's ``uniform_loss``)."""
    x = F.normalize(x.detach().float(), dim=1)
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def alignment_and_uniformity(x: Tensor, y: Tensor) -> dict[str, float]:
    """"monitor/alignment" of the pairs and "monitor/uniformity", the mean of both sides' (the paper's loss
    averages them); {} when the batch is too small or the two do not pair up."""
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] < 2:
        return {}
    return {"monitor/alignment": float(alignment(x, y)),
            "monitor/uniformity": float((uniformity(x) + uniformity(y)) / 2)}


class CollapseMonitor:
    """Tracks ``embedding_std`` and ``effective_rank`` of (B, dim) embeddings and warns once on collapse.

    Collapsed: the std is below ``std_threshold / sqrt(dim)`` (a fraction of the healthy 1/sqrt(dim)), or the
    effective rank is below ``1 + rank_threshold * (min(B, dim) - 1)`` (a fraction of the way from rank 1 to
    full rank). It warns (``warnings.warn``, once per monitor) when the embeddings have stayed collapsed for
    ``warn_after_steps`` steps (0: at the first collapsed update), so a brief dip does not warn.
    """

    def __init__(self, dim: int, std_threshold: float = 0.1, rank_threshold: float = 0.02, warn_after_steps: int = 50):
        self.dim, self.std_threshold, self.rank_threshold = int(dim), float(std_threshold), float(rank_threshold)
        self.warn_after_steps = int(warn_after_steps)
        self.collapsed_since: int | None = None
        self.warned = False

    def update(self, z: Tensor, step: int) -> dict[str, float]:
        """z: (B, dim) embeddings of this step (B >= 2) -> metrics "collapse/embedding_std",
        "collapse/embedding_std_ratio" (std * sqrt(dim): about 1 when healthy), "collapse/effective_rank",
        "collapse/collapsed" (1.0 or 0.0). Embeddings that are not finite (a diverged step, whose loss the
        engine skips) give NaN figures and count as not collapsed."""
        if z.ndim != 2 or z.shape[1] != self.dim or z.shape[0] < 2:
            raise ValueError(f"CollapseMonitor: expected (B >= 2, {self.dim}) embeddings, got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):   # a diverged step: the engine skips its loss; nothing to rank
            nan = float("nan")
            return {"collapse/embedding_std": nan, "collapse/embedding_std_ratio": nan,
                    "collapse/effective_rank": nan, "collapse/collapsed": 0.0}
        std, rank = float(embedding_std(z)), float(effective_rank(z))
        full = min(z.shape)
        low_std = std < self.std_threshold / math.sqrt(self.dim)
        low_rank = rank < 1 + self.rank_threshold * (full - 1)
        collapsed = low_std or low_rank
        if not collapsed:
            self.collapsed_since = None
        elif self.collapsed_since is None:
            self.collapsed_since = step
        if collapsed and not self.warned and step - self.collapsed_since >= self.warn_after_steps:
            self.warned = True
            warnings.warn(self._message(step, std, rank, full, low_std, low_rank), stacklevel=2)
        return {"collapse/embedding_std": std, "collapse/embedding_std_ratio": std * math.sqrt(self.dim),
                "collapse/effective_rank": rank, "collapse/collapsed": float(collapsed)}

    def _message(self, step: int, std: float, rank: float, full: int, low_std: bool, low_rank: bool) -> str:
        found = []
        if low_std:
            found.append(f"the per-dimension std of the L2-normalised embeddings is {std:.3g} (healthy: about "
                         f"1/sqrt({self.dim}) = {1 / math.sqrt(self.dim):.3g})")
        if low_rank:
            found.append(f"their effective rank is {rank:.3g} of at most {full}")
        since = self.collapsed_since if self.collapsed_since is not None else step
        return (f"representation collapse since step {since} (now step {step}): {' and '.join(found)}, so the "
                "encoder maps different inputs to (nearly) the same embedding; try a lower learning rate or a "
                "longer warmup, stronger augmentations that differ between the views, a larger variance / "
                "negatives weight, or check the stop-gradient, predictor, centring and EMA teacher.")


__all__ = ["embedding_std", "effective_rank", "alignment", "uniformity", "alignment_and_uniformity",
           "CollapseMonitor"]
