"""CLIP and SigLIP on two processes equal one process on the same global batch (loss and every gradient), in the
full-gather and the local-loss modes, and the two modes give the same gradients (one torchrun launch)."""
import pytest
import torch

from tests import clip_worker as worker
from tests.conftest import ROOT
from tests.launch import worker_tensors

pytestmark = pytest.mark.long      # every test here starts several processes (a module fixture for most)

TOL = dict(atol=1e-10, rtol=1e-8)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "two.safetensors"
    two = worker_tensors(2, ROOT / "tests" / "clip_worker.py", out, timeout=300)
    return worker.run_all(), two


def grads(result, case):
    return {k[len(case) + 1:]: v for k, v in result.items() if k.startswith(f"{case}/") and not k.endswith("/loss")}


@pytest.mark.parametrize("case", [c for c in worker.CASES if not c.startswith("control_")])
def test_two_processes_match_one_process(one_and_two, case):
    one, two = one_and_two
    g1, g2 = grads(one, case), grads(two, case)
    assert set(g1) == set(g2) and len(g1) > 20 and "logit_scale" in g1
    if case.startswith("siglip"):
        assert "logit_bias" in g1 and abs(float(g1["logit_bias"])) > 1e-3
    assert two[f"{case}/loss"].shape == (2,)
    if case.endswith("_local"):   # each rank its own rows' share; their mean is the global loss
        assert torch.allclose(two[f"{case}/loss"].mean(), one[f"{case}/loss"][0], **TOL)
    else:                         # every rank computes the global loss itself
        assert torch.allclose(two[f"{case}/loss"], one[f"{case}/loss"].expand(2), **TOL)
    assert max(float(v.abs().max()) for v in g1.values()) > 1e-2   # not a comparison of zero gradients
    for name in g1:
        assert torch.allclose(g1[name], g2[name], **TOL), (name, float((g1[name] - g2[name]).abs().max()))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_full_gather_and_local_loss_give_the_same_gradients(one_and_two, loss):
    _, two = one_and_two
    full, local = grads(two, f"{loss}_full"), grads(two, f"{loss}_local")
    assert set(full) == set(local)
    for name in full:
        assert torch.allclose(full[name], local[name], **TOL), name
    assert not torch.allclose(two[f"{loss}_full/loss"], two[f"{loss}_local/loss"])   # the modes really differ


def test_negative_control_without_gathering_differs(one_and_two):
    """Each process contrasting only its own rows (no gathered negatives) gives another loss and gradients."""
    one, two = one_and_two
    assert torch.allclose(one["control_no_gather/loss"], one["clip_full/loss"], **TOL)   # right on one process
    assert float((two["control_no_gather/loss"] - one["clip_full/loss"]).abs().min()) > 1e-3
    g1, g2 = grads(one, "clip_full"), grads(two, "control_no_gather")
    assert max(float((g1[k] - g2[k]).abs().max()) for k in g1) > 1e-3
