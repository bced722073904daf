"""GradCache (``--contrastive_accumulation``, selfsup/gradcache.py): k micro-batches of b give the loss, the
parameter gradients and the per-step state (MoCo queue, DINO centre) of one batch of k * b through the plain
forward, in float64, where plain accumulation does not; dropout draws the same masks in both passes; objectives
it cannot train exactly are refused in one line; and through the Trainer a run with accumulation 2 and the flag
ends on the weights of a run with accumulation 1 and the double batch (two processes: tests/gradcache_worker.py)."""
from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

import pytest
import torch

from selfsup import gradcache
from selfsup.config import base_parser
from selfsup.data import make_train_loader
from selfsup.errors import SelfsupError
from selfsup.recipes.builders.image_text import clip
from selfsup.recipes.builders.two_view import two_view
from selfsup.train import Trainer, TrainingSettings, make_accelerator
from tests import gradcache_worker as worker
from tests.conftest import ROOT
from tests.launch import worker_tensors

K, B = 3, 4   # micro-batches of a window, examples per micro-batch
TOL = dict(atol=1e-11, rtol=1e-8)
DROPOUT = dict(dropout=0.1, attention_dropout=0.1)


def clip_batch(loss: str, n: int, seed: int = 1) -> dict:
    return worker.pairs(loss, n, seed)


def views_batch(n: int, local: int = 0, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    views += [torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(local)]
    return {"views": [{"pixel_values": v} for v in views]}


def build(case: str, dropout: bool = False):
    torch.manual_seed(0)
    drop = DROPOUT if dropout else {}
    if case in ("clip", "siglip"):
        return clip("tiny", case, vocab_size=worker.VOCAB, vit=drop, text=drop).double().train()
    settings = {"simclr": dict(batch_norm=False), "moco_v2": dict(queue_size=32), "dino": {}}[case]
    return two_view(case, backbone="vit", size="tiny", image_size=16, vit=drop, **settings).double().train()


def batch_of(case: str, n: int) -> dict:
    if case in ("clip", "siglip"):
        return clip_batch(case, n)
    return views_batch(n, local=2 if case == "dino" else 0)


def split(batch, k: int):
    """The k micro-batches of ``batch`` (every tensor cut along dim 0, nested lists and dicts followed)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.chunk(k))
    if isinstance(batch, dict):
        parts = {key: split(v, k) for key, v in batch.items()}
        return [{key: parts[key][i] for key in batch} for i in range(k)]
    parts = [split(v, k) for v in batch]
    return [[p[i] for p in parts] for i in range(k)]


STATE = {"moco_v2": "queue", "dino": "loss_fn.center"}


def result(objective, loss) -> dict:
    out = {n: p.grad.detach().clone() for n, p in objective.named_parameters() if p.grad is not None}
    out["__loss"] = torch.as_tensor(float(loss), dtype=torch.float64)
    for name in STATE.values():
        out[name] = objective.get_buffer(name).detach().clone() if name in dict(objective.named_buffers()) else None
    return {k: v for k, v in out.items() if v is not None}


def one_batch(objective, batch) -> dict:
    out = objective(batch)
    out.loss.backward()
    return result(objective, out.loss.detach())


def plain_accumulation(objective, micro) -> dict:
    total = 0.0
    for mb in micro:
        loss = objective(mb).loss / len(micro)
        loss.backward()
        total += float(loss.detach())
    return result(objective, total)


@pytest.fixture(scope="module")
def accelerator(tmp_path_factory):
    return make_accelerator(TrainingSettings(output_dir=str(tmp_path_factory.mktemp("acc")), report_to="none",
                                             mixed_precision="no"))


def by_gradcache(accelerator, objective, micro) -> dict:
    loss, metrics, count = gradcache.accumulate(accelerator, objective, micro)
    assert count == 0 and metrics
    return result(objective, loss)


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], **TOL), (name, float((a[name] - b[name]).abs().max()))


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if not k.startswith("__") and k not in STATE.values())


@pytest.mark.parametrize("case", ["clip", "siglip", "simclr", "moco_v2", "dino"])
def test_micro_batches_give_the_gradients_of_the_whole_batch(accelerator, case):
    objective = build(case)
    gradcache.check_supported(objective)
    batch = batch_of(case, K * B)
    micro = split(batch, K)
    full = one_batch(copy.deepcopy(objective), batch)
    cached = by_gradcache(accelerator, copy.deepcopy(objective), micro)
    plain = plain_accumulation(copy.deepcopy(objective), micro)
    assert len(full) > 20 and max(float(v.abs().max()) for v in full.values()) > 1e-3   # real gradients
    if case in ("clip", "siglip"):
        assert "logit_scale" in full   # a parameter of the loss, not of the embeddings
    assert_same(full, cached)
    # the control: plain accumulation sees fewer negatives (or the queue / centre move in between)
    assert largest_difference(full, plain) > 1e-4
    for name in STATE.values():
        if name in full:
            assert not torch.equal(full[name], objective.get_buffer(name))   # the step did move it


def test_dropout_draws_the_same_masks_in_both_passes(accelerator, monkeypatch, caplog):
    """With dropout on, the one-batch reference is the k micro-batches embedded with their graphs kept (what
    GradCache saves memory on), from the same seed; without restoring the RNG state the second pass draws other
    masks and the gradients differ."""
    objective = build("clip", dropout=True)
    micro = split(clip_batch("clip", K * B), K)
    with torch.no_grad():
        torch.manual_seed(1)
        first = objective.embed_for_loss(micro[0])[0]
        assert not torch.allclose(first, objective.embed_for_loss(micro[0])[0])   # dropout is on

    def kept_graphs(obj):
        torch.manual_seed(5)
        parts = [obj.embed_for_loss(mb) for mb in micro]
        out = obj.loss_from_embeddings(tuple(torch.cat(t) for t in zip(*parts)))
        out.loss.backward()
        return result(obj, out.loss.detach()), torch.get_rng_state()

    reference, rng_after = kept_graphs(copy.deepcopy(objective))
    torch.manual_seed(5)
    cached = by_gradcache(accelerator, copy.deepcopy(objective), micro)
    assert_same(reference, cached)
    assert torch.equal(torch.get_rng_state(), rng_after)   # the step consumed the draws of one pass per micro-batch

    monkeypatch.setattr(gradcache.RngState, "replay", lambda self: nullcontext())
    monkeypatch.setattr(gradcache, "_warned", False)
    torch.manual_seed(5)
    with caplog.at_level(logging.WARNING, logger="selfsup.gradcache"):
        unreplayed = by_gradcache(accelerator, copy.deepcopy(objective), micro)
    assert largest_difference(reference, unreplayed) > 1e-4
    assert "second embedding pass differs" in caplog.text


@pytest.mark.parametrize("method, settings, says", [
    ("byol", {}, "does not support"),
    ("simclr", dict(batch_norm=True), "batch norm"),
])
def test_what_cannot_be_exact_is_refused_in_one_line(tmp_path, method, settings, says):
    torch.manual_seed(0)
    objective = two_view(method, backbone="vit", size="tiny", image_size=16, **settings)
    with pytest.raises(SelfsupError, match=says) as err:
        gradcache.check_supported(objective)
    assert "\n" not in str(err.value) and "--contrastive_accumulation" in str(err.value)
    loader = make_train_loader(list(range(8)), lambda ex: ex, 2, 1, 0, seed=0)
    settings = TrainingSettings(output_dir=str(tmp_path), report_to="none", mixed_precision="no",
                                contrastive_accumulation=True)
    with pytest.raises(SelfsupError, match=says):   # the Trainer refuses before the first step
        Trainer(objective, loader, settings, make_accelerator(settings))
    torch.manual_seed(0)
    resnet = two_view("simclr", backbone="resnet_tiny", size="tiny", image_size=16, batch_norm=False)
    with pytest.raises(SelfsupError, match="batch norm"):   # the ResNet's own
        gradcache.check_supported(resnet)


def test_the_flag_reaches_the_trainer_settings():
    args = base_parser("x").parse_args(["--contrastive_accumulation", "--gradient_accumulation_steps", "4"])
    settings = TrainingSettings.from_args(args)
    assert settings.contrastive_accumulation and settings.gradient_accumulation_steps == 4
    assert not TrainingSettings.from_args(base_parser("x").parse_args([])).contrastive_accumulation


def train(tmp_path, batch: int, accumulation: int, flag: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    settings = TrainingSettings(output_dir=str(tmp_path), report_to="none", mixed_precision="no", optimizer="sgd",
                                learning_rate=0.5, momentum=0.9, weight_decay=0.0, warmup_steps=0,
                                lr_scheduler_type="constant", max_steps=steps, per_device_train_batch_size=batch,
                                gradient_accumulation_steps=accumulation, contrastive_accumulation=flag,
                                logging_steps=1, checkpoints_total_limit=0)
    objective = build("clip")
    loader = make_train_loader(worker.examples("clip", 8 * steps), worker.collate, batch, 1, 0, seed=0)
    metrics = Trainer(objective, loader, settings, make_accelerator(settings)).train()
    assert metrics["steps"] == steps and metrics["global_batch_size"] == 8
    return {n: p.detach().clone() for n, p in objective.named_parameters()}


def test_trainer_with_accumulation_2_and_the_flag_equals_the_double_batch(tmp_path):
    one = train(tmp_path / "one", 8, 1, False)
    cached = train(tmp_path / "cached", 4, 2, True)
    plain = train(tmp_path / "plain", 4, 2, False)
    start = {n: p.detach() for n, p in build("clip").named_parameters()}
    assert max(float((one[n] - start[n]).abs().max()) for n in one) > 1e-3   # the weights moved
    for name in one:
        assert torch.allclose(one[name], cached[name], atol=1e-10, rtol=1e-8), name
    assert max(float((one[n] - plain[n]).abs().max()) for n in one) > 1e-4


@pytest.mark.long
def test_two_processes_with_micro_batches_equal_one_process_on_the_window(tmp_path):
    """2 processes x 2 micro-batches x 2 pairs through the Trainer (DDP, no_sync) = one plain forward of all 8."""
    two = worker_tensors(2, ROOT / "tests" / "gradcache_worker.py", tmp_path / "two.safetensors")
    one = worker.reference()
    assert set(one) == set(two) - {"__world_size"} and "logit_scale" in one
    for name in one:
        assert torch.allclose(one[name], two[name], **TOL), (name, float((one[name] - two[name]).abs().max()))


def test_the_clip_recipe_trains_with_the_flag_and_the_two_view_recipe_refuses_batch_norm(tmp_path):
    from selfsup.recipes import clip as clip_recipe
    from selfsup.recipes import two_view as two_view_recipe

    metrics = clip_recipe.main(["--output_dir", str(tmp_path / "clip"), "--model_size", "tiny", "--max_steps", "2",
                                "--report_to", "none", "--per_device_train_batch_size", "4", "--max_train_samples",
                                "60", "--vocab_size", "700", "--zero_shot_samples", "8", "--pipeline_check_images",
                                "2", "--gradient_accumulation_steps", "2", "--contrastive_accumulation"])
    assert metrics["steps"] == 2 and metrics["global_batch_size"] == 8
    with pytest.raises(SelfsupError, match="batch norm"):   # SimCLR's projector, and the ResNet
        two_view_recipe.main(["--output_dir", str(tmp_path / "tv"), "--model_size", "tiny", "--max_steps", "1",
                              "--report_to", "none", "--contrastive_accumulation"])


class SummedToy(torch.nn.Module):
    """A summed loss over targets (``num_targets``) that couples the rows: each row's logsumexp over all rows."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        self.t = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))   # a parameter of the loss only

    def embed_for_loss(self, batch):
        return (batch["x"] @ self.w,)

    def loss_from_embeddings(self, embeddings):
        (e,) = embeddings
        from selfsup.types import ObjectiveOutput

        return ObjectiveOutput(torch.logsumexp(self.t * e @ e.T, dim=1).sum(), num_targets=len(e), metrics={"m": 1.0})

    def forward(self, batch):
        return self.loss_from_embeddings(self.embed_for_loss(batch))


def test_a_summed_loss_is_normalised_by_the_targets_of_the_window(accelerator):
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = SummedToy()
    out = full({"x": x})
    (out.loss / out.num_targets).backward()
    cached = SummedToy()
    loss, _, count = gradcache.accumulate(accelerator, cached, [{"x": part} for part in x.chunk(3)])
    assert count == 12 and loss == pytest.approx(float(out.loss.detach()) / 12, rel=1e-12)
    for a, b in ((full.w, cached.w), (full.t, cached.t)):
        assert torch.allclose(a.grad, b.grad, **TOL)
