"""Every two-view loss, one backward pass each, for tests/test_two_view_losses.py: N processes = one process.

    torchrun --standalone --nproc_per_node N tests/two_view_loss_worker.py OUT_FILE

Every process builds the same float64 Linear 5->4 (and a frozen "teacher" Linear) and the same global batch of 8
examples x 3 views; process r embeds its slice (2 processes: rows 0..2 and 3..7, deliberately unequal). Each
case computes its loss, backpropagates, and the parameter gradients are all-reduced and divided by the world size
(what DDP does). Rank 0 writes, per case, the loss of every rank, the gradients and the case's outputs gathered
in rank order (Sinkhorn codes, DINO centre, VICReg terms), and the world size, to OUT_FILE (safetensors).
The test calls ``run_all()`` in its own process (world size 1, the whole batch) and compares.

Cases named ``control_*`` are negative controls, wrong on purpose, which must *differ* from the one-process run:
``control_barlow_per_process`` batch-normalises and averages the cross-correlation per process (Barlow Twins'
Algorithm 1 run on each process's rows, then DDP's average); ``control_barlow_nondiff`` sums c across processes
with a non-differentiable all-reduce (the reference code's, lightly #1977): the right loss, half the gradient;
``control_nt_xent_no_offset`` gathers the negatives but does not offset the positives' labels by the rows of the
lower ranks.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.distributed import all_sum, gather_with_grad, global_mean, global_rows, world_size
from selfsup.objectives.two_view import losses as L
from tests.torchrun_worker import mine, serve

GLOBAL_BATCH, QUEUE_ROWS, VIEWS, D_IN, D, PROTOTYPES = 8, 6, 3, 5, 4, 6
DTYPE = torch.float64



def global_data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"x": torch.randn(GLOBAL_BATCH, VIEWS, D_IN, generator=g, dtype=DTYPE),
            "queue": F.normalize(torch.randn(7, D, generator=g, dtype=DTYPE), dim=1),
            "queue_embeddings": F.normalize(torch.randn(QUEUE_ROWS, D, generator=g, dtype=DTYPE), dim=1),
            "prototypes": F.normalize(torch.randn(PROTOTYPES, D, generator=g, dtype=DTYPE), dim=1)}


def linear(seed: int) -> torch.nn.Linear:
    with torch.random.fork_rng():   # leave the caller's generator alone (the test runs this in-process)
        torch.manual_seed(seed)
        return torch.nn.Linear(D_IN, D).to(DTYPE)


TEACHER = None


def teacher(x: Tensor) -> Tensor:
    global TEACHER
    if TEACHER is None:
        TEACHER = linear(7).requires_grad_(False)
    return TEACHER(x)


Case = Callable[[torch.nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]


def gathered(t: Tensor) -> Tensor:
    with torch.no_grad():
        return gather_with_grad(t.detach())


def nt_xent(m, d):
    return L.nt_xent(m(d["x"][:, 0]), m(d["x"][:, 1]), 0.5), {}


def info_nce_queue(m, d):
    return L.info_nce_queue(m(d["x"][:, 0]), teacher(d["x"][:, 1]), d["queue"], 0.2), {}


def info_nce_in_batch(m, d):
    return L.info_nce_queue(m(d["x"][:, 0]), teacher(d["x"][:, 1]), None, 0.2), {}


def moco_v3(m, d):
    x = d["x"]
    return L.moco_v3_loss(m(x[:, 0]), teacher(x[:, 1])) + L.moco_v3_loss(m(x[:, 1]), teacher(x[:, 0])), {}


def negative_cosine(m, d):
    return L.negative_cosine(m(d["x"][:, 0]), m(d["x"][:, 1])), {}


def byol(m, d):
    return L.byol_loss(m(d["x"][:, 0]), teacher(d["x"][:, 1])), {}


def swav(m, d):
    scores = [F.normalize(m(d["x"][:, v]), dim=1) @ d["prototypes"].T for v in range(VIEWS)]
    codes = [L.sinkhorn(scores[c]) for c in (0, 1)]
    loss = L.swav_loss(scores, codes, 0.1, crops_for_assign=(0, 1))
    return loss, {"codes0": gathered(codes[0]), "codes1": gathered(codes[1])}


def swav_with_queue(m, d):
    scores = [F.normalize(m(d["x"][:, v]), dim=1) @ d["prototypes"].T for v in range(2)]
    codes = L.sinkhorn(scores[0], queue_scores=mine(d["queue_embeddings"]) @ d["prototypes"].T)
    return L.swav_loss(scores, {0: codes}, 0.1, crops_for_assign=(0,)), {"codes": gathered(codes)}


def dino(m, d):
    loss_fn = L.DINOLoss(D, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_steps=10).to(DTYPE)
    students = [m(d["x"][:, v]) for v in range(VIEWS)]
    teachers = [teacher(d["x"][:, v]) for v in range(2)]
    first = loss_fn(students, teachers, step=3)
    second = loss_fn(students, teachers, step=12)   # with the centre the first call updated
    return first + second, {"center": loss_fn.center.detach().clone()}


def vicreg(m, d):
    terms = L.vicreg_terms(m(d["x"][:, 0]), m(d["x"][:, 1]))
    loss = 25.0 * terms["invariance"] + 25.0 * terms["variance"] + terms["covariance"]
    return loss, {"terms": torch.stack([terms[k].detach() for k in ("invariance", "variance", "covariance")])}


def vicreg_loss(m, d):
    return L.vicreg_loss(m(d["x"][:, 0]), m(d["x"][:, 1])), {}


def barlow(m, d):
    return L.barlow_twins_loss(m(d["x"][:, 0]), m(d["x"][:, 1]), lambda_=5e-3), {}


def _barlow_from_c(c: Tensor) -> Tensor:
    return (torch.diagonal(c) - 1).pow(2).sum() + 5e-3 * L._off_diagonal(c).pow(2).sum()


def control_barlow_per_process(m, d):
    """Wrong: per-process batch norm and cross-correlation / B_r (each process's own Barlow Twins loss)."""
    z1, z2 = m(d["x"][:, 0]), m(d["x"][:, 1])
    bn = [(z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5) for z in (z1, z2)]
    return _barlow_from_c(bn[0].T @ bn[1] / z1.shape[0]), {}


def control_barlow_nondiff(m, d):
    """Wrong: c summed across processes without gradient (torch.distributed.all_reduce, the reference code's)."""
    z1, z2 = m(d["x"][:, 0]), m(d["x"][:, 1])
    n = global_rows(z1)
    part = L._global_batch_norm(z1, n, 1e-5).T @ L._global_batch_norm(z2, n, 1e-5) / n
    c = part + (all_sum(part.detach(), differentiable=False) - part.detach())   # global value, local gradient
    return _barlow_from_c(c), {}


def control_nt_xent_no_offset(m, d):
    """Wrong: negatives gathered, but the positives' columns not offset by the rows of the lower ranks."""
    z1, z2 = F.normalize(m(d["x"][:, 0]), dim=1), F.normalize(m(d["x"][:, 1]), dim=1)
    return global_mean(L._nt_xent_terms(z1, z2, gather_with_grad(z1), gather_with_grad(z2), 0, 0.5)), {}


CASES: dict[str, Case] = {f.__name__: f for f in (
    nt_xent, info_nce_queue, info_nce_in_batch, moco_v3, negative_cosine, byol, swav, swav_with_queue, dino,
    vicreg, vicreg_loss, barlow, control_barlow_per_process, control_barlow_nondiff, control_nt_xent_no_offset)}


def run_all() -> dict[str, Tensor]:
    """Every case on this process's rows: {case/loss (one per rank), case/weight, case/bias, case/<output>}."""
    n = world_size()
    data = global_data()
    local = {"x": mine(data["x"]), **{k: v for k, v in data.items() if k != "x"}}
    out = {}
    for name, case in CASES.items():
        model = linear(0)
        loss, outputs = case(model, local)
        loss.backward()
        for p in model.parameters():   # DDP: all-reduce the gradients and divide by the world size
            if n > 1:
                torch.distributed.all_reduce(p.grad)
            p.grad /= n
        out[f"{name}/loss"] = gathered(loss.reshape(1))
        out.update({f"{name}/{k}": p.grad.detach().clone() for k, p in model.named_parameters()})
        out.update({f"{name}/{k}": v.contiguous() for k, v in outputs.items()})
    return out


if __name__ == "__main__":
    serve(run_all)
