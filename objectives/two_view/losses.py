"""The losses of the two-view (joint-embedding) methods: SimCLR, MoCo v2/v3, BYOL/SimSiam, SwAV, DINO, VICReg and
Barlow Twins. Small pure functions (``DINOLoss`` is a module because its centre is state), each tested against a
plain reference written from its paper (tests/test_two_view_losses.py).

**Global-batch convention** (selfsup.distributed.gather_with_grad): every function takes this process's rows
and returns the loss of the *global* batch (every process's rows), the same value on every process. Per-example
terms are summed locally and all-summed differentiably, then divided by the global count; batch statistics
(means, variances, cross-correlations, Sinkhorn marginals, the DINO centre) are taken over the global batch;
negatives are gathered across processes. The backward passes of ``all_sum`` and ``gather_with_grad`` sum over
the processes, so after DDP averages the parameter gradients, N processes train exactly as one process on the
same global batch (tests/two_view_loss_worker.py shows it for every loss), with equal or unequal rows per process.
Outside a multi-process run every collective is the identity.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.distributed import (all_sum, gather_with_grad, global_count, global_mean, global_rows, row_offset,
                                 world_size)

# -- global-batch helpers ---------------------------------------------------------------------------------------

def _gather_no_grad(x: Tensor) -> Tensor:
    with torch.no_grad():
        return gather_with_grad(x.detach())


def _global_max(x: Tensor) -> Tensor:
    m = x.max()
    if world_size() > 1:
        import torch.distributed as dist

        m = m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m


def _off_diagonal(m: Tensor) -> Tensor:
    """The D*(D-1) off-diagonal entries of a (D, D) matrix."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def _check_pair(a: Tensor, b: Tensor, what: str) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"{what}: expected two (B, D) tensors of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


# -- contrastive --------------------------------------------------------------------------------------------------

def _nt_xent_terms(a1: Tensor, a2: Tensor, k1: Tensor, k2: Tensor, offset: int, temperature: float) -> Tensor:
    """Per-anchor NT-Xent terms (2b,) of the local anchors ``a1``, ``a2`` (b, D) against the keys ``k1``, ``k2``
    (N, D) of the whole batch, in which the anchors are rows ``offset : offset + b`` (all L2-normalised)."""
    n, b = k1.shape[0], a1.shape[0]
    logits = torch.cat([a1, a2]) @ torch.cat([k1, k2]).T / temperature           # (2b, 2N)
    own = offset + torch.arange(b, device=a1.device)
    self_cols, pos_cols = torch.cat([own, own + n]), torch.cat([own + n, own])
    rows = torch.arange(2 * b, device=a1.device)
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_cols] = True
    return F.cross_entropy(logits.masked_fill(is_self, float("-inf")), pos_cols, reduction="none")


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = True) -> Tensor:
    """SimCLR's NT-Xent (Chen et al. 2020, eq. 1 and Algorithm 1; google-research/simclr
    ``add_contrastive_loss``): mean over the 2B anchors of the global batch of
    ``-log exp(s_ij / T) / sum_{k != i} exp(s_ik / T)``, s the cosine similarity.

    z1, z2: (B_r, D) unnormalised projections of two views of this process's examples (row i of each is a pair).
    ``gather``: negatives are the 2B - 2 other embeddings of the *global* batch, gathered with gradient, and
    the positives' columns are offset by the rows of the lower ranks (lightly #1176 offset them without
    gathering); False: each process contrasts its own rows only (the mean is still over the global batch).
    """
    _check_pair(z1, z2, "nt_xent")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    if gather and world_size() > 1:
        k1, k2, offset = gather_with_grad(z1), gather_with_grad(z2), row_offset(z1.shape[0], z1.device)
    else:
        k1, k2, offset = z1, z2, 0
    return global_mean(_nt_xent_terms(z1, z2, k1, k2, offset, temperature))


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor | None, temperature: float = 0.2) -> Tensor:
    """MoCo v2's InfoNCE (He et al. 2020, Algorithm 1; Chen et al. 2020; facebookresearch/moco ``MoCo.forward``):
    logits ``[q.k, q.queue] / T``, cross-entropy with label 0, mean over the global batch.

    q: (B_r, D) queries (with gradient); k: (B_r, D) keys of the momentum encoder (detached here); both are
    L2-normalised here (idempotent when the encoders already do it). queue: (K, D) normalised negatives (no
    gradient); None: the negatives are the keys of the other examples of the global batch (gathered).
    """
    _check_pair(q, k, "info_nce_queue")
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    if queue is None:
        logits = q @ _gather_no_grad(k).T / temperature
        labels = row_offset(q.shape[0], q.device) + torch.arange(q.shape[0], device=q.device)
    else:
        positive = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([positive, q @ queue.detach().to(q.dtype).T], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return global_mean(F.cross_entropy(logits, labels, reduction="none"))


def moco_v3_loss(q: Tensor, k: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v3's ``ctr(q, k)`` (Chen, Xie & He 2021, Algorithm 1; facebookresearch/moco-v3
    ``MoCo.contrastive_loss``): logits ``q . k_all / T`` against the keys of the global batch (gathered, no
    gradient), label = own index offset by the rows of the lower ranks (rank * B for equal batches),
    cross-entropy times ``2 T``, mean over the global batch. q, k: (B_r, D), L2-normalised here. The method's
    loss is symmetrised by the objective: ``ctr(q1, k2) + ctr(q2, k1)``."""
    _check_pair(q, k, "moco_v3_loss")
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    logits = q @ _gather_no_grad(k).T / temperature
    labels = row_offset(q.shape[0], q.device) + torch.arange(q.shape[0], device=q.device)
    return global_mean(F.cross_entropy(logits, labels, reduction="none")) * (2 * temperature)


# -- non-contrastive ----------------------------------------------------------------------------------------------

def _cosine(p: Tensor, z: Tensor) -> Tensor:
    return (F.normalize(p, dim=1) * F.normalize(z.detach(), dim=1)).sum(dim=1)


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's ``D(p, z) = -cos(p, stopgrad(z))`` (Chen & He 2021, eq. 1 and Algorithm 1), mean over the
    global batch; p, z: (B_r, D). SimSiam symmetrises it in the objective: ``D(p1, z2) / 2 + D(p2, z1) / 2``."""
    _check_pair(p, z, "negative_cosine")
    return global_mean(-_cosine(p, z))


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's ``||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, stopgrad(z))`` (Grill et al. 2020, eq. 2), mean over the
    global batch; p: (B_r, D) online predictions, z: (B_r, D) target projections. BYOL sums the two directions
    in the objective (``L + L~``, eq. 3); it equals ``2 + 2 * negative_cosine`` per pair."""
    _check_pair(p, z, "byol_loss")
    return global_mean(2 - 2 * _cosine(p, z))


# -- clustering: SwAV, DINO ---------------------------------------------------------------------------------------

@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3,
             queue_scores: Tensor | None = None) -> Tensor:
    """SwAV's Sinkhorn-Knopp codes (Caron et al. 2020, Algorithm 1; facebookresearch/swav
    ``distributed_sinkhorn``) over the global batch: ``Q = exp(scores / eps)^T`` normalised to sum 1, then
    ``iterations`` times rows to 1/K and columns to 1/B_global, the sums over prototypes taken across processes
    (all_sum, no gradient); finally each example's code sums to 1.

    scores: (B_r, K) prototype scores of this process's examples. queue_scores: (Q_r, K) scores of this
    process's queued embeddings (SwAV's queue), prepended for the assignment, as main_swav.py does; only the
    codes of ``scores`` are returned. Returns (B_r, K) codes without gradient, in float32 or wider. The scores
    are shifted by their global maximum before ``exp`` (a constant factor that the first normalisation removes).
    """
    b = scores.shape[0]
    s = scores.detach() if queue_scores is None else torch.cat([queue_scores.detach().to(scores.dtype), scores])
    s = s.to(torch.promote_types(s.dtype, torch.float32)) / epsilon
    q = torch.exp(s - _global_max(s)).T                                         # (K, B): SwAV's notation
    q /= all_sum(q.sum(), differentiable=False)
    k = q.shape[0]
    columns = global_count(q, q.shape[1])
    for _ in range(iterations):
        q *= (1.0 / k / all_sum(q.sum(dim=1), differentiable=False)).unsqueeze(1)
        q *= ((1.0 / columns) / q.sum(dim=0)).unsqueeze(0)
    q = (q / q.sum(dim=0, keepdim=True)).T
    return q[q.shape[0] - b:]


def _by_crop(codes_per_view: Mapping[int, Tensor] | Sequence[Tensor], position: int, crop_id: int) -> Tensor:
    if isinstance(codes_per_view, Mapping):
        return codes_per_view[crop_id]
    return codes_per_view[position]


def swav_loss(scores_per_view: Sequence[Tensor], codes_per_view: Mapping[int, Tensor] | Sequence[Tensor],
              temperature: float = 0.1, crops_for_assign: Sequence[int] = (0, 1)) -> Tensor:
    """SwAV's swapped prediction (Caron et al. 2020, eq. 1-2; main_swav.py ``train``): for each view ``crop_id``
    in ``crops_for_assign``, the cross-entropy ``-sum_k q_k log softmax(s / T)_k`` between its codes and the
    scores of every *other* view, averaged over those views, then over ``crops_for_assign``; mean over the global
    batch.

    scores_per_view: V tensors (B_r, K), all views of the same examples (multi-crop included).
    codes_per_view: codes from :func:`sinkhorn` (no gradient) -- a dict keyed by crop id, or a sequence in the
    order of ``crops_for_assign``.
    """
    n_views = len(scores_per_view)
    if n_views < 2 or not crops_for_assign:
        raise ValueError(f"swav_loss: needs at least 2 views and one crop to assign, got {n_views} views and "
                         f"crops_for_assign={tuple(crops_for_assign)}")
    total = scores_per_view[0].new_zeros(())
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores_per_view]
    for position, crop_id in enumerate(crops_for_assign):
        q = _by_crop(codes_per_view, position, crop_id).detach().to(log_p[0].dtype)
        per_view = sum(-(q * log_p[v]).sum(dim=1).sum() for v in range(n_views) if v != crop_id)
        total = total + per_view / (n_views - 1)
    return all_sum(total) / (global_rows(scores_per_view[0]) * len(crops_for_assign))


class DINOLoss(nn.Module):
    """DINO's loss (Caron et al. 2021, Algorithm 1; facebookresearch/dino main_dino.py ``DINOLoss``).

    ``forward`` is the mean over the pairs (teacher global view iq, student view v != iq) of
    ``-sum_k softmax((t_iq - center) / T_t)_k log_softmax(s_v / T_s)_k``, mean over the global batch, and then
    (as main_dino.py does) updates the centre: ``center <- m * center + (1 - m) * mean(teacher outputs)``, the
    mean over every teacher view of the global batch (all_sum). ``center`` is a buffer, so it is saved in
    checkpoints. The teacher temperature rises linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over
    ``warmup_teacher_temp_steps`` (``np.linspace``, as main_dino.py over epochs), then stays.

    main_dino.py averages per process (its DDP mean is the global mean when every process has B rows); here
    the mean is over the global batch's rows, the same value on every process.
    """

    def __init__(self, out_dim: int, warmup_teacher_temp: float = 0.04, teacher_temp: float = 0.04,
                 warmup_teacher_temp_steps: int = 0, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.warmup_teacher_temp, self.teacher_temp = float(warmup_teacher_temp), float(teacher_temp)
        self.warmup_teacher_temp_steps = int(warmup_teacher_temp_steps)
        self.student_temp, self.center_momentum = float(student_temp), float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, step: int) -> float:
        """``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_steps)[step]``, then constant."""
        n, start, end = self.warmup_teacher_temp_steps, self.warmup_teacher_temp, self.teacher_temp
        step = max(int(step), 0)
        if step >= n:
            return end
        if n == 1:
            return start
        return end if step == n - 1 else start + step * ((end - start) / (n - 1))

    def forward(self, student_outputs: Sequence[Tensor], teacher_outputs: Sequence[Tensor], step: int,
                update: bool = True) -> Tensor:
        """student_outputs: V tensors (B_r, out_dim), the teacher's global views first (DINO: 2 global crops,
        then the local ones); teacher_outputs: G tensors (B_r, out_dim) of the global views (no gradient).
        ``update``: then update the centre (main_dino.py always does; pass False to call
        :meth:`update_center` yourself)."""
        temp = self.teacher_temperature(step)
        teacher = [F.softmax((t.detach() - self.center) / temp, dim=-1) for t in teacher_outputs]
        student = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_outputs]
        total, pairs = student[0].new_zeros(()), 0
        for iq, t in enumerate(teacher):
            for v, s in enumerate(student):
                if v != iq:   # the same view through student and teacher is skipped
                    total = total - (t * s).sum()
                    pairs += 1
        if pairs == 0:
            raise ValueError("DINOLoss: needs at least one student view that differs from a teacher view")
        loss = all_sum(total) / (global_rows(student_outputs[0]) * pairs)
        if update:
            self.update_center(teacher_outputs)
        return loss

    @torch.no_grad()
    def update_center(self, teacher_outputs: Sequence[Tensor]) -> None:
        """EMA of the centre towards the teacher outputs' mean over the global batch (every teacher view)."""
        t = torch.cat([x.detach() for x in teacher_outputs])
        batch_center = all_sum(t.sum(dim=0, keepdim=True), differentiable=False) / global_rows(t)
        self.center.mul_(self.center_momentum).add_(batch_center.to(self.center.dtype),
                                                    alpha=1 - self.center_momentum)


# -- redundancy reduction: VICReg, Barlow Twins ----------------------------------------------------------------------

def _std_hinge(x: Tensor, eps: float) -> Tensor:
    return F.relu(1 - torch.sqrt(x.var(dim=0) + eps)).mean()


def _cov_penalty(x: Tensor) -> Tensor:
    x = x - x.mean(dim=0)
    cov = x.T @ x / (x.shape[0] - 1)
    return _off_diagonal(cov).pow(2).sum() / x.shape[1]


def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> dict[str, Tensor]:
    """VICReg's three unweighted terms (Bardes, Ponce & LeCun 2022, eq. 1-5; facebookresearch/vicreg
    main_vicreg.py ``VICReg.forward``): ``invariance`` the MSE between the views (mean over the global batch and
    dims), ``variance`` the hinge ``mean(relu(1 - sqrt(var + eps)))`` averaged over the two views (main_vicreg.py's
    ``/ 2``; the paper's Algorithm 1 sums them), ``covariance`` the squared off-diagonal covariances / D summed
    over the views. Variances (unbiased) and covariances (/ (N - 1)) are over the global batch, gathered with
    gradient (main_vicreg.py's ``FullGatherLayer``). z1, z2: (B_r, D)."""
    _check_pair(z1, z2, "vicreg_loss")
    invariance = global_mean((z1 - z2).pow(2))
    x, y = gather_with_grad(z1), gather_with_grad(z2)
    if x.shape[0] < 2:
        raise ValueError("vicreg_loss: the variance and covariance need a global batch of at least 2 examples")
    return {"invariance": invariance, "variance": (_std_hinge(x, eps) + _std_hinge(y, eps)) / 2,
            "covariance": _cov_penalty(x) + _cov_penalty(y)}


def vicreg_loss(z1: Tensor, z2: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
                eps: float = 1e-4) -> Tensor:
    """VICReg: ``sim_weight * invariance + var_weight * variance + cov_weight * covariance``
    (see :func:`vicreg_terms`; lambda = mu = 25, nu = 1 in the paper)."""
    t = vicreg_terms(z1, z2, eps)
    return sim_weight * t["invariance"] + var_weight * t["variance"] + cov_weight * t["covariance"]


def _global_batch_norm(z: Tensor, n: Tensor, eps: float) -> Tensor:
    """(z - mean) / sqrt(var + eps) with the mean and biased variance of the global batch (SyncBatchNorm without
    affine, as the reference's ``nn.BatchNorm1d(affine=False)``), differentiably."""
    mean = all_sum(z.sum(dim=0)) / n
    var = all_sum((z - mean).pow(2).sum(dim=0)) / n
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1 and Algorithm 1; facebookresearch/barlowtwins main.py):
    ``sum_i (1 - c_ii)^2 + lambda_ * sum_{i != j} c_ij^2``, with ``c = bn(z1)^T bn(z2) / N`` the (D, D)
    cross-correlation of the global batch.

    z1, z2: (B_r, D). Each view is batch-normalised with the global batch's mean and biased variance (+ eps),
    and c's local parts are summed across processes, all differentiably. The reference code all-reduces c with
    the non-differentiable ``torch.distributed.all_reduce``, so under DDP its gradients are 1/world_size of the
    global loss's (the bug lightly fixed in #1977/#1980); here they are the global loss's.
    """
    _check_pair(z1, z2, "barlow_twins_loss")
    n = global_rows(z1)
    c = all_sum(_global_batch_norm(z1, n, eps).T @ _global_batch_norm(z2, n, eps)) / n
    return (torch.diagonal(c) - 1).pow(2).sum() + lambda_ * _off_diagonal(c).pow(2).sum()


__all__ = ["nt_xent", "info_nce_queue", "moco_v3_loss", "negative_cosine", "byol_loss", "sinkhorn", "swav_loss",
           "DINOLoss", "vicreg_terms", "vicreg_loss", "barlow_twins_loss"]
