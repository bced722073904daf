"""The two-view losses against plain references written from their papers' formulas and pseudo-code (explicit loops,
float64, 1e-10), gradient checks, and two processes = one process (one torchrun launch for every loss)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.objectives.two_view import losses as L
from tests import two_view_loss_worker as worker
from tests.conftest import ROOT
from tests.launch import worker_tensors

TOL = dict(atol=1e-10, rtol=1e-10)


def randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def cos(a, b):
    return float(a @ b) / math.sqrt(float(a @ a) * float(b @ b))


def unit(v):
    return v / math.sqrt(float(v @ v))


# -- SimCLR ---------------------------------------------------------------------------------------------------

def ref_nt_xent(z1, z2, t):
    """SimCLR Algorithm 1: z_{2k-1}, z_{2k} are the two views of example k; l(i, j) over k != i; mean over 2N."""
    n = z1.shape[0]
    z = [v for k in range(n) for v in (z1[k], z2[k])]

    def l(i, j):
        den = sum(math.exp(cos(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        return -math.log(math.exp(cos(z[i], z[j]) / t) / den)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def test_nt_xent_is_simclr_algorithm_1():
    z1, z2 = randn(6, 5, seed=1), randn(6, 5, seed=2)
    for t in (0.5, 0.1):
        assert abs(float(L.nt_xent(z1, z2, t)) - ref_nt_xent(z1, z2, t)) < 1e-10
    assert abs(float(L.nt_xent(z1, z2, 0.5, gather=False)) - ref_nt_xent(z1, z2, 0.5)) < 1e-10   # one process


def test_the_reference_catches_labels_not_offset_by_rank():
    """Two processes simulated in one: process r's anchors against the whole batch's keys. With the positives'
    columns offset by the rows before r the sum is the reference; without (lightly #1176's kind of bug) not."""
    z1, z2 = F.normalize(randn(6, 5, seed=1), dim=1), F.normalize(randn(6, 5, seed=2), dim=1)
    ref = ref_nt_xent(z1, z2, 0.5)

    def simulated(offset_of):
        return float(sum(L._nt_xent_terms(z1[s:e], z2[s:e], z1, z2, offset_of(s), 0.5).sum()
                         for s, e in ((0, 2), (2, 6)))) / 12

    assert abs(simulated(lambda s: s) - ref) < 1e-10
    assert abs(simulated(lambda s: 0) - ref) > 0.1


def test_nt_xent_gradcheck_and_shape_errors():
    z1, z2 = randn(3, 4, seed=3).requires_grad_(), randn(3, 4, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: L.nt_xent(a, b, 0.5), (z1, z2))
    with pytest.raises(ValueError, match="same shape"):
        L.nt_xent(randn(3, 4), randn(2, 4))


# -- MoCo --------------------------------------------------------------------------------------------------------

def ref_moco(q, k, negatives, t):
    """MoCo Algorithm 1: l_pos = q.k, l_neg = q.queue, CE with label 0 (the positive), mean over the batch."""
    total = 0.0
    for i in range(q.shape[0]):
        qi, pos = unit(q[i]), math.exp(float(unit(q[i]) @ unit(k[i])) / t)
        neg = sum(math.exp(float(qi @ n) / t) for n in negatives(i))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def test_info_nce_queue_is_moco_algorithm_1():
    q, k, queue = randn(5, 4, seed=1), randn(5, 4, seed=2), F.normalize(randn(7, 4, seed=3), dim=1)
    ref = ref_moco(q, k, lambda i: list(queue), 0.2)
    assert abs(float(L.info_nce_queue(q, k, queue, 0.2)) - ref) < 1e-10
    in_batch = ref_moco(q, k, lambda i: [unit(k[j]) for j in range(5) if j != i], 0.2)
    assert abs(float(L.info_nce_queue(q, k, None, 0.2)) - in_batch) < 1e-10
    q, k = q.clone().requires_grad_(), k.clone().requires_grad_()
    L.info_nce_queue(q, k, queue).backward()
    assert k.grad is None and q.grad.abs().sum() > 0   # keys come from the momentum encoder: no gradient


def test_moco_v3_loss_is_ctr_times_2t():
    q, k, t = randn(5, 4, seed=1), randn(5, 4, seed=2), 0.2
    total = 0.0
    for i in range(5):
        logits = [float(unit(q[i]) @ unit(k[j])) / t for j in range(5)]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert abs(float(L.moco_v3_loss(q, k, t)) - total / 5 * 2 * t) < 1e-10


# -- BYOL / SimSiam -------------------------------------------------------------------------------------------------

def test_byol_eq_2_and_simsiam_negative_cosine():
    p, z = randn(5, 4, seed=1), randn(5, 4, seed=2)
    byol = sum(float(((unit(p[i]) - unit(z[i])) ** 2).sum()) for i in range(5)) / 5      # ||p_ - z_||^2
    assert abs(float(L.byol_loss(p, z)) - byol) < 1e-10
    assert abs(float(L.negative_cosine(p, z)) + sum(cos(p[i], z[i]) for i in range(5)) / 5) < 1e-10
    p, z = p.clone().requires_grad_(), z.clone().requires_grad_()
    (L.negative_cosine(p, z) + L.byol_loss(p, z)).backward()
    assert z.grad is None and p.grad.abs().sum() > 0   # stop-gradient on the target


# -- SwAV --------------------------------------------------------------------------------------------------------

def ref_sinkhorn(scores, eps=0.05, niters=3):
    """SwAV's sinkhorn pseudo-code (Algorithm 1), with explicit loops over prototypes and examples."""
    b, k = scores.shape
    q = [[math.exp(float(scores[j, i]) / eps) for j in range(b)] for i in range(k)]   # K x B
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(niters):
        u = [sum(row) for row in q]
        q = [[v * (1 / k) / u[i] for v in row] for i, row in enumerate(q)]
        col = [sum(q[i][j] for i in range(k)) for j in range(b)]
        q = [[q[i][j] * (1 / b) / col[j] for j in range(b)] for i in range(k)]
    col = [sum(q[i][j] for i in range(k)) for j in range(b)]
    return torch.tensor([[q[i][j] / col[j] for i in range(k)] for j in range(b)], dtype=torch.float64)


def test_sinkhorn_is_swav_pseudo_code():
    scores = F.normalize(randn(5, 4, seed=1), dim=1) @ F.normalize(randn(6, 4, seed=2), dim=1).T
    codes = L.sinkhorn(scores)
    assert torch.allclose(codes, ref_sinkhorn(scores), **TOL)
    assert torch.allclose(L.sinkhorn(scores, 0.1, 5), ref_sinkhorn(scores, 0.1, 5), **TOL)
    assert torch.allclose(codes.sum(1), torch.ones(5, dtype=torch.float64), **TOL) and not codes.requires_grad
    queue = F.normalize(randn(3, 4, seed=3), dim=1) @ F.normalize(randn(6, 4, seed=2), dim=1).T
    assert torch.allclose(L.sinkhorn(scores, queue_scores=queue), ref_sinkhorn(torch.cat([queue, scores]))[3:], **TOL)
    shifted = (scores + 4).float()   # exp(5 / 0.05) overflows float32: the global-max shift avoids it
    assert torch.isfinite(torch.exp(shifted / 0.05)).all().item() is False
    assert torch.allclose(L.sinkhorn(shifted).double(), ref_sinkhorn(scores + 4), atol=1e-5)


def ref_swav(scores, codes, t, crops_for_assign):
    """main_swav.py's loop: -mean_b sum_k q log softmax(s / T) for every other view, / (V - 1), / len(assign)."""
    n_views, (b, k) = len(scores), scores[0].shape
    loss = 0.0
    for i, crop in enumerate(crops_for_assign):
        sub = 0.0
        for v in (v for v in range(n_views) if v != crop):
            for j in range(b):
                den = sum(math.exp(float(scores[v][j, c]) / t) for c in range(k))
                sub -= sum(float(codes[i][j, c]) * math.log(math.exp(float(scores[v][j, c]) / t) / den)
                           for c in range(k)) / b
        loss += sub / (n_views - 1)
    return loss / len(crops_for_assign)


def test_swav_loss_is_main_swav_and_the_papers_two_view_form():
    scores = [randn(5, 6, seed=s, scale=0.5) for s in range(3)]
    codes = [L.sinkhorn(scores[0]), L.sinkhorn(scores[1])]
    assert abs(float(L.swav_loss(scores, codes, 0.1)) - ref_swav(scores, codes, 0.1, (0, 1))) < 1e-10
    assert abs(float(L.swav_loss(scores, {0: codes[0], 1: codes[1]}, 0.1)) - ref_swav(scores, codes, 0.1, (0, 1))) \
        < 1e-10
    two = scores[:2]   # the paper: -0.5 * (q_t log p_s + q_s log p_t), summed over prototypes, mean over examples
    logp = [F.log_softmax(s / 0.1, dim=1) for s in two]
    paper = -0.5 * ((codes[0] * logp[1]).sum(1) + (codes[1] * logp[0]).sum(1)).mean()
    assert abs(float(L.swav_loss(two, codes, 0.1)) - float(paper)) < 1e-10


# -- DINO --------------------------------------------------------------------------------------------------------

def test_dino_loss_is_algorithm_1_with_centre_and_schedule():
    loss_fn = L.DINOLoss(6, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_steps=10,
                         student_temp=0.1, center_momentum=0.9).double()
    assert [loss_fn.teacher_temperature(s) for s in range(12)] == [*np.linspace(0.04, 0.07, 10), 0.07, 0.07]
    s, t = [randn(4, 6, seed=v) for v in range(4)], [randn(4, 6, seed=10 + v) for v in range(2)]
    c, tps, m = torch.zeros(6, dtype=torch.float64), 0.1, 0.9

    def h(tv, sv, tpt):   # Algorithm 1's H(t, s)
        sp, tp = F.softmax(sv / tps, dim=1), F.softmax((tv - c) / tpt, dim=1)
        return float(-(tp * torch.log(sp)).sum(dim=1).mean())

    for step in (3, 20):   # the second call uses the centre the first one updated
        tpt = loss_fn.teacher_temperature(step)
        two_views = h(t[0], s[1], tpt) / 2 + h(t[1], s[0], tpt) / 2
        pairs = [(iq, v) for iq in range(2) for v in range(4) if v != iq]
        multi_crop = sum(h(t[iq], s[v], tpt) for iq, v in pairs) / len(pairs)
        assert abs(float(loss_fn(s[:2], t, step, update=False)) - two_views) < 1e-10
        assert abs(float(loss_fn(s, t, step)) - multi_crop) < 1e-10
        c = m * c + (1 - m) * torch.cat(t).mean(dim=0)
        assert torch.allclose(loss_fn.center[0], c, **TOL)
    assert "center" in loss_fn.state_dict()


# -- VICReg, Barlow Twins ------------------------------------------------------------------------------------------

def ref_vicreg(za, zb, lam=25.0, mu=25.0, nu=1.0):
    """VICReg Algorithm 1, written out; the variance term halved as in main_vicreg.py (the paper sums them)."""
    n, d = za.shape
    sim = sum(float((za[i, j] - zb[i, j]) ** 2) for i in range(n) for j in range(d)) / (n * d)
    std = 0.0
    cov = 0.0
    for z in (za, zb):
        mean = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
        var = [sum((float(z[i, j]) - mean[j]) ** 2 for i in range(n)) / (n - 1) for j in range(d)]
        std += sum(max(0.0, 1 - math.sqrt(v + 1e-4)) for v in var) / d / 2
        for a in range(d):
            for b in range(d):
                if a != b:
                    c = sum((float(z[i, a]) - mean[a]) * (float(z[i, b]) - mean[b]) for i in range(n)) / (n - 1)
                    cov += c ** 2 / d
    return lam * sim + mu * std + nu * cov, (sim, std, cov)


def test_vicreg_is_algorithm_1():
    za, zb = randn(7, 5, seed=1, scale=0.6), randn(7, 5, seed=2, scale=0.8)
    ref, (sim, std, cov) = ref_vicreg(za, zb)
    terms = L.vicreg_terms(za, zb)
    assert abs(float(terms["invariance"]) - sim) < 1e-10 and abs(float(terms["variance"]) - std) < 1e-10
    assert abs(float(terms["covariance"]) - cov) < 1e-10 and std > 0.1
    assert abs(float(L.vicreg_loss(za, zb)) - ref) < 1e-10
    assert abs(float(L.vicreg_loss(za, zb, 1.0, 2.0, 3.0)) - ref_vicreg(za, zb, 1.0, 2.0, 3.0)[0]) < 1e-10
    a, b = randn(4, 3, seed=3, scale=0.5).requires_grad_(), randn(4, 3, seed=4, scale=0.5).requires_grad_()
    assert torch.autograd.gradcheck(L.vicreg_loss, (a, b))


def ref_barlow(za, zb, lam=5e-3, eps=1e-5):
    """Barlow Twins Algorithm 1 with explicit c_ij; normalised as the reference code's BatchNorm1d(affine=False)
    (biased variance + eps; the pseudo-code writes z.std(0))."""
    n, d = za.shape

    def norm(z):
        mean = [sum(float(z[i, j]) for i in range(n)) / n for j in range(d)]
        var = [sum((float(z[i, j]) - mean[j]) ** 2 for i in range(n)) / n for j in range(d)]
        return [[(float(z[i, j]) - mean[j]) / math.sqrt(var[j] + eps) for j in range(d)] for i in range(n)]

    a, b = norm(za), norm(zb)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k][i] * b[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lam * c ** 2
    return loss


def test_barlow_twins_is_algorithm_1_and_the_reference_code():
    za, zb = randn(7, 5, seed=1), randn(7, 5, seed=2)
    assert abs(float(L.barlow_twins_loss(za, zb)) - ref_barlow(za, zb)) < 1e-10
    assert abs(float(L.barlow_twins_loss(za, zb, 0.1)) - ref_barlow(za, zb, 0.1)) < 1e-10
    bn = torch.nn.BatchNorm1d(5, affine=False).double().train()   # facebookresearch/barlowtwins main.py
    c = bn(za).T @ bn(zb) / 7
    code = (torch.diagonal(c) - 1).pow(2).sum() + 5e-3 * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())
    assert abs(float(L.barlow_twins_loss(za, zb)) - float(code)) < 1e-10
    a, b = randn(4, 3, seed=3).requires_grad_(), randn(4, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(L.barlow_twins_loss, (a, b))


# -- against lightly, when it is installed --------------------------------------------------------------------------

def test_against_lightly_ntxent_barlow_vicreg_negative_cosine():
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = randn(16, 8, seed=1), randn(16, 8, seed=2)
    assert torch.allclose(L.nt_xent(z1, z2, 0.5), lightly_loss.NTXentLoss(temperature=0.5)(z1, z2), **TOL)
    assert torch.allclose(L.vicreg_loss(z1, z2), lightly_loss.VICRegLoss()(z1, z2), **TOL)
    assert torch.allclose(L.negative_cosine(z1, z2), lightly_loss.NegativeCosineSimilarity()(z1, z2), **TOL)
    # lightly >= 1.6 batch-normalises as we do; older versions divide by z.std(0), (N-1)/N apart: large N
    z1, z2 = randn(4096, 8, seed=3), randn(4096, 8, seed=4)
    ours, theirs = L.barlow_twins_loss(z1, z2), lightly_loss.BarlowTwinsLoss(lambda_param=5e-3)(z1, z2)
    assert torch.allclose(ours, theirs.to(ours.dtype), rtol=1e-3)


def test_against_lightly_dino_and_swav():
    lightly_loss = pytest.importorskip("lightly.loss")
    s, t = [randn(4, 6, seed=v) for v in range(4)], [randn(4, 6, seed=10 + v) for v in range(2)]
    ours = L.DINOLoss(6, 0.04, 0.07, warmup_teacher_temp_steps=10).double()
    theirs = lightly_loss.DINOLoss(6, 0.04, 0.07, warmup_teacher_temp_epochs=10).double()
    for step in (3, 12):   # lightly's schedule is a float32 torch.linspace: 1e-7 apart
        assert torch.allclose(ours(s, t, step), theirs(t, s, epoch=step).reshape(()), rtol=1e-6)
        assert torch.allclose(ours.center, theirs.center.reshape(1, 6), **TOL)
    scores = [randn(5, 6, seed=20 + v, scale=0.5) for v in range(3)]
    mine = L.swav_loss(scores, [L.sinkhorn(scores[0]), L.sinkhorn(scores[1])], 0.1)
    assert torch.allclose(mine, lightly_loss.SwaVLoss(temperature=0.1)(scores[:2], scores[2:]).reshape(()), **TOL)


# -- two processes = one process ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_view") / "two.safetensors"
    two = worker_tensors(2, ROOT / "tests" / "two_view_loss_worker.py", out, timeout=120)
    return worker.run_all(), two


@pytest.mark.long
@pytest.mark.parametrize("case", [c for c in worker.CASES if not c.startswith("control_")])
def test_two_processes_match_one_process(one_and_two, case):
    one, two = one_and_two
    keys = [k for k in one if k.startswith(f"{case}/")]
    assert set(keys) == {k for k in two if k.startswith(f"{case}/")} and len(keys) >= 3
    assert one[f"{case}/loss"].shape == (1,) and two[f"{case}/loss"].shape == (2,)   # every rank's loss ...
    assert torch.allclose(two[f"{case}/loss"], one[f"{case}/loss"].expand(2), **TOL)   # ... is the global one
    assert float(one[f"{case}/weight"].abs().max()) > 1e-2   # not a comparison of zero gradients
    for k in keys:
        diff = float((one[k] - two[k]).abs().max())
        assert torch.allclose(one[k], two[k], **TOL), (k, diff)


@pytest.mark.long
def test_negative_controls_differ_from_one_process(one_and_two):
    """Barlow Twins' c averaged per process (per-process batch norm too) gives other losses and gradients; c
    summed without gradient gives the global loss but half the gradient (lightly #1977); NT-Xent with gathered
    negatives but labels not offset by rank gives another loss."""
    one, two = one_and_two
    per_process = two["control_barlow_per_process/loss"]
    assert not torch.allclose(per_process[0], per_process[1], atol=1e-3)
    assert float((two["control_barlow_per_process/weight"] - one["barlow/weight"]).abs().max()) > 1e-2
    assert torch.allclose(two["control_barlow_nondiff/loss"], one["barlow/loss"].expand(2), **TOL)
    assert torch.allclose(two["control_barlow_nondiff/weight"], one["barlow/weight"] / 2, **TOL)
    assert float((two["control_nt_xent_no_offset/loss"] - one["nt_xent/loss"]).abs().min()) > 1e-2
    for name in ("control_barlow_per_process", "control_barlow_nondiff"):   # on one process they are right
        assert torch.allclose(one[f"{name}/weight"], one["barlow/weight"], **TOL)
