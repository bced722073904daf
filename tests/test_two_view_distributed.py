"""Two processes train every two-view method exactly as one process on the same global batch: both steps'
losses, the gradients, and every state the methods keep (MoCo's queue and pointer, DINO's centre, the EMA
teachers, SwAV's prototypes, the batch-norm running statistics over the global batch)."""
import pytest
import torch

from tests import two_view_worker as worker
from tests.conftest import ROOT
from tests.launch import worker_tensors


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_view_methods") / "two.safetensors"
    two = worker_tensors(2, ROOT / "tests" / "two_view_worker.py", out, timeout=300)
    return worker.run_all(), two


@pytest.mark.long
@pytest.mark.parametrize("method", worker.METHODS)
def test_two_processes_train_as_one(one_and_two, method):
    one, two = one_and_two
    keys = sorted(k for k in one if k.startswith(f"{method}/"))
    assert keys == sorted(k for k in two if k.startswith(f"{method}/"))
    grads = [k for k in keys if "/grad/" in k]
    assert len(grads) > 10 and max(float(one[k].abs().max()) for k in grads) > 1e-3
    if method == "moco_v2":
        assert any(k.endswith("queue") for k in keys) and any(k.endswith("queue_ptr") for k in keys)
    if method == "dino":
        assert any(k.endswith("center") for k in keys)
    if method in ("moco_v2", "moco_v3", "byol", "dino"):
        assert any("/teacher/" in k for k in keys)
    for k in keys:
        assert torch.allclose(one[k].double(), two[k].double(), atol=1e-9, rtol=1e-7), \
            (k, float((one[k].double() - two[k].double()).abs().max()))
