"""gather_with_grad: N processes computing a contrastive loss over the gathered global batch get exactly the
gradients of one process on the whole batch; a plain all_gather does not (it loses a factor of world size).

The runs use torch's launcher (``tests/launch.py``, gloo on CPU) and assert the world size each run really had.
"""
from pathlib import Path

import pytest
import torch

from selfsup.distributed import gather_with_grad, rank, world_size
from tests.conftest import ROOT
from tests.launch import worker_tensors

WORKER = ROOT / "tests" / "gather_worker.py"


def run(tmp_path: Path, nproc: int, *flags: str) -> dict[str, torch.Tensor]:
    return worker_tensors(nproc, WORKER, tmp_path / f"gather_{nproc}{''.join(flags)}.safetensors", *flags)


def max_grad_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    names = [k for k in a if not k.startswith("__")]
    assert set(names) == {"weight", "bias"} == {k for k in b if not k.startswith("__")}
    return max(float((a[k] - b[k]).abs().max()) for k in names)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    return run(tmp_path_factory.mktemp("gather"), 1)


@pytest.mark.long
def test_two_processes_match_one_process(tmp_path, one):
    two = run(tmp_path, 2)
    assert torch.allclose(one["__loss"], two["__loss"], atol=1e-6)
    assert float(one["weight"].abs().max()) > 1e-2   # the comparison is not between two zero gradients
    diff = max_grad_diff(one, two)
    print(f"gather_with_grad: max |grad(2 processes) - grad(1 process)| = {diff:.3g}")
    for k in ("weight", "bias"):
        assert torch.allclose(one[k], two[k], atol=1e-6, rtol=0), (k, diff)


@pytest.mark.long
def test_plain_all_gather_gives_wrong_gradients(tmp_path, one):
    naive = run(tmp_path, 2, "--naive")
    assert torch.allclose(one["__loss"], naive["__loss"], atol=1e-6)   # same loss ...
    diff = max_grad_diff(one, naive)
    print(f"plain all_gather: max |grad(2 processes) - grad(1 process)| = {diff:.3g}")
    assert diff > 1e-3                                                  # ... different gradients
    for k in ("weight", "bias"):   # the own-rows-only gradient, averaged by DDP, is 1/world_size of the right one
        assert torch.allclose(naive[k], one[k] / 2, atol=1e-6, rtol=0), k


def test_identity_outside_distributed():
    assert world_size() == 1 and rank() == 0
    x = torch.randn(3, 4, requires_grad=True)
    y = gather_with_grad(x)
    assert y is x
    (y * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(4.0).expand(3, 4))
