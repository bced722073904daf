"""Instance discrimination with a memory bank (Wu et al., 2018): the softmax and NCE losses against plain
references, the bank update, a recipe run with export, resume restoring the bank, the clear errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.recipes.builders.two_view import two_view
from selfsup.types import EXAMPLE_INDEX
from tests.conftest import straight_and_resumed
from tests.test_image_recipes import two_view_argv

N = 20


def make(loss="softmax", **kw):
    torch.manual_seed(0)
    return two_view("instance_discrimination", "resnet_tiny", size="tiny", image_size=16, num_examples=N,
                    loss=loss, **kw).double().eval()


def batch(seed=1, index=(3, 7, 0, 11, 19)):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(index), 3, 16, 16, generator=g, dtype=torch.float64)
    return {"views": [{"pixel_values": images}], EXAMPLE_INDEX: torch.tensor(index)}


def feats(obj, b):
    return F.normalize(obj.head(obj.encoder().features(b["views"][0])), dim=1)


def test_the_softmax_loss_is_the_cross_entropy_over_the_whole_bank():
    obj, b = make(), batch()
    bank = obj.bank.clone()
    f, T = feats(obj, b), obj.config.temperature
    ref = 0.0
    for row, i in zip(f, b[EXAMPLE_INDEX].tolist()):
        scores = [math.exp(float(bank[j] @ row) / T) for j in range(N)]
        ref -= math.log(scores[i] / sum(scores))
    out = obj(b)
    assert out.num_targets == 5
    assert abs(float(out.loss) - ref) < 1e-6 * max(1.0, abs(ref))


def test_the_nce_loss_with_fixed_negatives_and_z_from_the_first_batch():
    obj, b = make("nce", num_negatives=6), batch()
    bank = obj.bank.clone()
    f, T, index = feats(obj, b), obj.config.temperature, b[EXAMPLE_INDEX]
    negatives = obj.sample_negatives(5)
    assert torch.equal(negatives, obj.sample_negatives(5))          # seeded by (seed, draws): reproducible
    neg = torch.exp(torch.einsum("bkd,bd->bk", bank[negatives], f) / T)
    z = float(neg.mean()) * N
    noise = 6 / N
    ref = 0.0
    for r in range(5):
        p = math.exp(float(bank[index[r]] @ f[r]) / T) / z
        ref -= math.log(p / (p + noise))
        for k in range(6):
            pn = float(neg[r, k]) / z
            ref -= math.log(1 - pn / (pn + noise))
    out = obj(b)
    assert abs(float(out.loss) - ref) < 1e-6 * max(1.0, abs(ref))
    assert abs(float(obj.z) - z) < 1e-9 * z and int(obj.draws) == 1
    obj(batch(2))
    assert abs(float(obj.z) - z) < 1e-9 * z                          # constant after the first batch
    assert not torch.equal(obj.sample_negatives(5), negatives)       # a new draw each step


def test_the_bank_rows_of_the_batch_move_and_the_rest_stay():
    obj, b = make(), batch()
    before = obj.bank.clone()
    f = feats(obj, b).detach()
    obj(b)
    index = b[EXAMPLE_INDEX]
    m = obj.config.bank_momentum
    assert torch.allclose(obj.bank[index], F.normalize(m * before[index] + (1 - m) * f, dim=1), atol=1e-12)
    rest = torch.ones(N, dtype=torch.bool)
    rest[index] = False
    assert torch.equal(obj.bank[rest], before[rest])
    assert torch.allclose(obj.bank.norm(dim=1), torch.ones(N, dtype=torch.float64), atol=1e-12)
    again = make()
    assert torch.equal(again.bank, before)                           # the initial bank is seeded


def test_the_clear_errors():
    with pytest.raises(ValueError, match="num_examples > 0"):
        two_view("instance_discrimination", "resnet_tiny", size="tiny", image_size=16)
    obj, b = make(), batch()
    del b[EXAMPLE_INDEX]
    with pytest.raises(ValueError, match="example_index"):
        obj(b)


@pytest.mark.long
def test_the_image_recipe_trains_exports_and_resume_restores_the_bank(tmp_path, capsys):
    from selfsup.recipes import two_view as recipe

    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    assert "instance_discrimination" in capsys.readouterr().out
    assert recipe.TwoViewRun(method="instance_discrimination").preset_settings["max_steps"] == 900   # the CPU preset
    argv = two_view_argv("instance_discrimination")
    metrics = recipe.main(argv(tmp_path / "run", steps=2))
    assert metrics["steps"] == 2 and np.isfinite(metrics["train_loss"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    straight, resumed, early = straight_and_resumed(recipe.main, argv, tmp_path / "resume", steps=4, at=2)
    keys = [k for k in straight if k.endswith("bank")]
    assert keys
    for k in keys:
        assert torch.equal(straight[k], resumed[k]) and not torch.equal(straight[k], early[k])


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    from tests import bank_worker
    from tests.conftest import ROOT
    from tests.launch import worker_tensors

    out = tmp_path_factory.mktemp("bank") / "two.safetensors"
    return bank_worker.run_all(), worker_tensors(2, ROOT / "tests" / "bank_worker.py", out, timeout=300)


@pytest.mark.long
@pytest.mark.parametrize("name", ["instance_discrimination_softmax", "instance_discrimination_nce"])
def test_two_processes_fill_the_bank_as_one(one_and_two, name):
    """Unequal halves of each global batch on two processes (world size asserted by the launcher): the losses,
    the gradients and the bank (every process's rows written into every process's bank) equal one process's."""
    one, two = one_and_two
    keys = sorted(k for k in one if k.startswith(f"{name}/"))
    assert keys == sorted(k for k in two if k.startswith(f"{name}/")) and any(k.endswith("/bank") for k in keys)
    bank = one[f"{name}/buffer/bank"]
    start = make().bank[:len(bank)]               # the seeded initial bank (a longer one starts with the same rows)
    moved = (bank - start).abs().amax(dim=1) > 1e-6
    from tests.bank_worker import NUM_EXAMPLES, STEPS, global_batch

    visited = torch.zeros(NUM_EXAMPLES, dtype=torch.bool)
    for step in range(1, STEPS + 1):
        visited[global_batch(step)[EXAMPLE_INDEX]] = True
    assert 0 < int(visited.sum()) < NUM_EXAMPLES and torch.equal(moved, visited)   # the batches' rows moved, only
    for k in keys:
        assert torch.allclose(one[k], two[k], atol=1e-9, rtol=1e-7), (k, float((one[k] - two[k]).abs().max()))


def test_head_norm_all_centres_the_features_of_the_batch_before_they_are_normalised():
    torch.manual_seed(0)
    obj = two_view("instance_discrimination", "resnet_tiny", size="tiny", image_size=16, num_examples=N,
                   head_norm="all").double().train()
    h = obj.encoder().features(batch()["views"][0])
    z = obj.head(h)                                    # the batch norm on the head's output, no affine
    assert torch.allclose(z.mean(0), torch.zeros_like(z[0]), atol=1e-9)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones_like(z[0]), atol=1e-2)   # eps 1e-5
    plain = make()                                     # the paper's linear head: features share a direction
    zp = plain.head(plain.encoder().features(batch()["views"][0]))
    assert zp.mean(0).abs().max() > 1e-3
    with pytest.raises(ValueError, match="head_norm"):
        two_view("instance_discrimination", "resnet_tiny", size="tiny", image_size=16, num_examples=N,
                 head_norm="hidden")
