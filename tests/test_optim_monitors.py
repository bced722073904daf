"""LARS against a plain reference update, make_optimizer, and the collapse monitors."""
import io
import math
import warnings

import pytest
import torch

from selfsup.errors import SelfsupError
from selfsup.monitors import CollapseMonitor, effective_rank, embedding_std
from selfsup.optim import LARS, make_optimizer


def norm(t):
    return math.sqrt(sum(float(v) ** 2 for v in t.flatten()))


def ref_lars(weights, grads_per_step, lr, momentum, wd, eta, eps, exclude):
    """You et al. 2017 as SimCLR/BYOL/Barlow Twins use it, written out: decay, trust ratio, momentum, step."""
    weights = [w.clone() for w in weights]
    bufs = [None] * len(weights)
    for grads in grads_per_step:
        for i, (w, g) in enumerate(zip(weights, grads)):
            if exclude and w.ndim < 2:
                u = g.clone()                                   # biases / norms: plain SGD with momentum
            else:
                u = g + wd * w
                wn, un = norm(w), norm(u)
                u = u * (eta * wn / (un + eps) if wn > 0 and un > 0 else 1.0)
            bufs[i] = u if bufs[i] is None else momentum * bufs[i] + u
            weights[i] = w - lr * bufs[i]
    return weights


def params_and_grads(steps=2):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64)),
              torch.nn.Parameter(torch.randn(3, generator=g, dtype=torch.float64)),
              torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))]   # ||w|| = 0: trust ratio 1
    grads = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params] for _ in range(steps)]
    return params, grads


def run(opt, params, grads):
    for step_grads in grads:
        for p, gr in zip(params, step_grads):
            p.grad = gr.clone()
        opt.step()


@pytest.mark.parametrize("exclude", [True, False])
def test_lars_matches_the_reference_for_two_steps(exclude):
    params, grads = params_and_grads()
    ref = ref_lars([p.detach() for p in params], grads, 0.5, 0.9, 0.01, 0.001, 1e-8, exclude)
    run(LARS(params, lr=0.5, momentum=0.9, weight_decay=0.01, exclude_bias_and_norm=exclude), params, grads)
    for p, r in zip(params, ref):
        assert torch.allclose(p.detach(), r, atol=1e-12, rtol=0)
    assert not torch.allclose(params[0].detach(), params_and_grads()[0][0].detach())   # it did move


def test_excluded_parameters_get_plain_sgd_momentum():
    params, grads = params_and_grads(3)
    bias = params[1]
    sgd_bias = torch.nn.Parameter(bias.detach().clone())
    run(LARS(params, lr=0.3, weight_decay=0.1), params, grads)
    run(torch.optim.SGD([sgd_bias], lr=0.3, momentum=0.9), [sgd_bias], [[g[1]] for g in grads])
    assert torch.allclose(bias.detach(), sgd_bias.detach(), atol=1e-14, rtol=0)


def test_lars_state_dict_round_trip_continues_identically():
    params, grads = params_and_grads(4)
    straight = LARS(params, lr=0.2, weight_decay=1e-3)
    run(straight, params, grads[:2])
    buffer = io.BytesIO()
    torch.save(straight.state_dict(), buffer)   # as a checkpoint: loaded back with weights_only=True
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = LARS(resumed_params, lr=99.0)   # hyper-parameters come back from the state dict
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    run(straight, params, grads[2:])
    run(resumed, resumed_params, grads[2:])
    for a, b in zip(params, resumed_params):
        assert torch.equal(a.detach(), b.detach())


def test_make_optimizer_builds_each_by_name_and_rejects_others():
    model = torch.nn.Linear(3, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    adamw = make_optimizer(groups, "adamw", 1e-3, 0.05, betas=(0.9, 0.95), eps=1e-6)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0] and adamw.defaults["eps"] == 1e-6
    sgd = make_optimizer(model.parameters(), "sgd", 0.1, 1e-4, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    lars = make_optimizer(model.parameters(), "lars", 0.1, 1e-6, trust_coefficient=0.02)
    assert isinstance(lars, LARS) and lars.defaults["trust_coefficient"] == 0.02
    with pytest.raises(SelfsupError, match="unknown optimizer 'adam': choose one of adamw, sgd, lars") as err:
        make_optimizer(model.parameters(), "adam", 0.1, 0.0)
    assert "\n" not in str(err.value)


# -- monitors ----------------------------------------------------------------------------------------------------

def gaussian(b, d, seed=0):
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def test_embedding_std_is_one_over_sqrt_d_when_healthy_and_zero_when_collapsed():
    d = 64
    assert abs(float(embedding_std(gaussian(4096, d))) * math.sqrt(d) - 1) < 0.02
    collapsed = gaussian(1, d).expand(256, d)
    assert float(embedding_std(collapsed)) < 1e-6
    assert float(embedding_std(collapsed * torch.rand(256, 1) * 10)) < 1e-6   # scale does not matter


def test_effective_rank_is_d_for_isotropic_and_one_for_rank_one():
    q, _ = torch.linalg.qr(gaussian(256, 16))   # orthonormal columns: all singular values 1
    assert abs(float(effective_rank(q)) - 16) < 1e-3
    assert float(effective_rank(gaussian(4096, 16))) > 0.98 * 16
    rank_one = gaussian(256, 1, seed=1) @ gaussian(1, 16, seed=2)
    assert abs(float(effective_rank(rank_one)) - 1) < 1e-3
    assert abs(float(effective_rank(gaussian(1, 16).expand(64, 16))) - 1) < 1e-3
    assert float(effective_rank(torch.zeros(8, 4))) == 0.0


def updates(monitor, batches, start=0):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = [monitor.update(z, start + i) for i, z in enumerate(batches)]
    return metrics, [str(w.message) for w in caught]


def test_monitor_never_warns_on_healthy_embeddings():
    metrics, caught = updates(CollapseMonitor(32, warn_after_steps=0), [gaussian(64, 32, seed=s) for s in range(20)])
    assert caught == []
    assert set(metrics[0]) == {"collapse/embedding_std", "collapse/embedding_std_ratio", "collapse/effective_rank",
                               "collapse/collapsed"}
    assert all(m["collapse/collapsed"] == 0.0 and m["collapse/embedding_std_ratio"] > 0.8 for m in metrics)


def test_monitor_warns_once_when_collapse_persists():
    monitor = CollapseMonitor(32, warn_after_steps=3)
    collapsed = [gaussian(1, 32, seed=s).expand(64, 32) + 1e-4 * gaussian(64, 32, seed=s) for s in range(10)]
    healthy = [gaussian(64, 32, seed=s) for s in range(3)]
    metrics, caught = updates(monitor, collapsed[:2] + healthy[:1] + collapsed[2:4])   # brief dips: no warning
    assert caught == [] and [m["collapse/collapsed"] for m in metrics] == [1, 1, 0, 1, 1]
    metrics, caught = updates(monitor, collapsed[4:], start=5)   # collapsed since step 3: warns at step 6, once
    assert len(caught) == 1, caught
    assert "representation collapse since step 3 (now step 6)" in caught[0]
    assert "std of the L2-normalised embeddings" in caught[0] and "effective rank" in caught[0]
    assert "learning rate" in caught[0]


def test_monitor_catches_dimensional_collapse_by_the_rank():
    direction = gaussian(1, 32, seed=1)
    z = gaussian(256, 1, seed=2) @ direction + 1e-3 * gaussian(256, 32, seed=3)   # a line: std is not zero
    metrics, caught = updates(CollapseMonitor(32, warn_after_steps=0), [z])
    assert metrics[0]["collapse/embedding_std_ratio"] > 0.5 and metrics[0]["collapse/effective_rank"] < 1.5
    assert len(caught) == 1 and "effective rank" in caught[0] and "std of" not in caught[0]
    with pytest.raises(ValueError, match=r"expected \(B >= 2, 16\) embeddings"):
        CollapseMonitor(16).update(z, 0)


def test_monitor_reports_nan_for_a_diverged_step_and_carries_on():
    """A step whose embeddings hold inf/NaN (the engine skips its loss) must not stop the run in an SVD."""
    monitor = CollapseMonitor(dim=8, warn_after_steps=0)
    z = torch.randn(16, 8)
    z[3, 2] = float("inf")
    out = monitor.update(z, step=1)
    assert math.isnan(out["collapse/effective_rank"]) and out["collapse/collapsed"] == 0.0
    assert monitor.update(torch.randn(16, 8), step=2)["collapse/effective_rank"] > 1


# -- alignment and uniformity (Wang & Isola, 2020) ------------------------------------------------------------------
def paper_align(x, y, alpha=2):       # the paper's reference code (its Figure 5), on normalised inputs
    return (x - y).norm(p=2, dim=1).pow(alpha).mean()


def paper_uniform(x, t=2):
    return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()


def test_alignment_and_uniformity_equal_the_papers_code_and_order_embeddings_as_expected():
    from selfsup.monitors import alignment, alignment_and_uniformity, uniformity

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=g)
    y = x + 0.3 * torch.randn(64, 16, generator=g)
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    assert torch.allclose(alignment(x, y), paper_align(xn, yn), atol=1e-6)
    assert torch.allclose(uniformity(x), paper_uniform(xn), atol=1e-6)
    assert float(alignment(x, x)) < 1e-10 and float(alignment(x, -x)) == pytest.approx(4.0)
    collapsed = torch.ones(64, 16) + 1e-4 * torch.randn(64, 16, generator=g)
    assert abs(float(uniformity(collapsed))) < 1e-3 < -float(uniformity(x))     # one point: 0; spread: negative
    both = alignment_and_uniformity(x, y)
    assert both["monitor/uniformity"] == pytest.approx(float((uniformity(x) + uniformity(y)) / 2))
    assert alignment_and_uniformity(x, y[:10]) == {}


def test_every_two_view_method_and_clip_report_alignment_and_uniformity():
    from selfsup.recipes.builders.image_text import clip
    from selfsup.recipes.builders.two_view import two_view

    g = torch.Generator().manual_seed(1)
    views = [{"pixel_values": torch.randn(6, 3, 16, 16, generator=g)} for _ in range(2)]
    for method in ("simclr", "moco_v2", "moco_v3", "byol", "simsiam", "swav", "dino", "vicreg", "barlow_twins"):
        out = two_view(method, "resnet_tiny", size="tiny", image_size=16)({"views": views})
        assert {"monitor/alignment", "monitor/uniformity"} <= set(out.metrics), method
        assert 0.0 <= out.metrics["monitor/alignment"] <= 4.0 and out.metrics["monitor/uniformity"] <= 0.0
    ids = torch.randint(2, 50, (6, 9), generator=g)
    ids[:, 0], ids[:, -1] = 0, 1                 # start and end-of-text
    pairs = {"pixel_values": torch.randn(6, 3, 32, 32, generator=g), "input_ids": ids,
             "attention_mask": torch.ones(6, 9, dtype=torch.long)}
    out = clip("tiny", "clip", "vit", vocab_size=50)(pairs)
    assert {"monitor/alignment", "monitor/uniformity"} <= set(out.metrics)
