"""The two-view objectives (objectives/two_view/): each method's loss is the shared loss (losses.py) on its
heads' outputs; MoCo's queue, BYOL/MoCo/DINO's EMA teachers and schedules, DINO's centre, SwAV's prototypes and
queue behave as the papers say; all of it survives a state-dict round trip; no racy gathers in any loss graph.
Tiny models (a 2-layer ViT, a 4-block ResNet) on 16 x 16 views."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from selfsup.backbones.resnet import GlobalBatchNorm, ResNetBackbone
from selfsup.objectives import registry
from selfsup.objectives.ema import cosine_momentum
from selfsup.objectives.two_view import common as tv
from selfsup.objectives.two_view import losses as L
from selfsup.objectives.two_view.build import VIEW_FAMILIES
from selfsup.recipes.builders.two_view import image_encoder as two_view_encoder
from selfsup.recipes.builders.two_view import two_view
from selfsup.objectives.two_view.presets import NAMES as PRESET_NAMES
from selfsup.objectives.two_view.presets import method_presets, preset_table
from selfsup.objectives.two_view.sizes import SIZES
from selfsup.types import features as pooled_features
from tests.graph_checks import racy_gathers

# graphcl, scarf: SimCLR with other settings; instance discrimination (one view and a memory bank) and CMC (an
# encoder per view, memory banks): their own tests
ONE_VIEW = ("instance_discrimination", "cmc")
METHODS = sorted(m for m in registry.names("two_view") if m not in ("graphcl", "scarf", *ONE_VIEW))
MULTI_CROP = ("swav", "dino")


def build(method: str, backbone: str = "vit", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return two_view(method, backbone=backbone, size="tiny", image_size=16, **overrides)


def make_views(n: int = 2, b: int = 4, size: int = 16, local: int = 0, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(b, 3, size, size, generator=g) for _ in range(n)]
            + [torch.randn(b, 3, size // 2, size // 2, generator=g) for _ in range(local)])


def vb(views: list[torch.Tensor]) -> list[dict]:
    """Views as the batches a two-view objective reads."""
    return [{"pixel_values": v} for v in views]


def features(adapter, backbone, views) -> torch.Tensor:
    """Reference pooling: the class token of a ViT, the token mean of a ResNet; the global views (the first two)
    through the encoder together, then the local ones together."""
    out = []
    for group in (views[:2], views[2:]):
        if group:
            tokens = adapter({"pixel_values": torch.cat(group)})
            h = backbone(tokens.x).last_hidden_state
            out.append(h[:, 0] if getattr(adapter, "num_prefix_tokens", 0) else h.mean(dim=1))
    return torch.cat(out)


def teacher_out(obj, views, head: str = "projector") -> torch.Tensor:
    t = obj.teacher
    with torch.no_grad():
        return t[head](features(t["adapter"], t["backbone"], views))


# the loss of each method written with the shared losses on the heads' outputs (state taken before the forward)
def ref_simclr(obj, v, state):
    z1, z2 = obj.projector(features(obj.adapter, obj.backbone, v[:2])).chunk(2)
    return L.nt_xent(z1, z2, obj.config.temperature)


def ref_moco_v2(obj, v, state):
    q1, q2 = F.normalize(obj.projector(features(obj.adapter, obj.backbone, v[:2])), dim=1).chunk(2)
    k1, k2 = F.normalize(teacher_out(obj, v[:2]), dim=1).chunk(2)
    t, queue = obj.config.temperature, state["queue"]
    return (L.info_nce_queue(q1, k2, queue, t) + L.info_nce_queue(q2, k1, queue, t)) / 2


def ref_moco_v3(obj, v, state):
    q1, q2 = obj.predictor(obj.projector(features(obj.adapter, obj.backbone, v[:2]))).chunk(2)
    k1, k2 = teacher_out(obj, v[:2]).chunk(2)
    t = obj.config.temperature
    return L.moco_v3_loss(q1, k2, t) + L.moco_v3_loss(q2, k1, t)


def ref_byol(obj, v, state):
    p1, p2 = obj.predictor(obj.projector(features(obj.adapter, obj.backbone, v[:2]))).chunk(2)
    z1, z2 = teacher_out(obj, v[:2]).chunk(2)
    return L.byol_loss(p1, z2) + L.byol_loss(p2, z1)


def ref_simsiam(obj, v, state):
    z = obj.projector(features(obj.adapter, obj.backbone, v[:2]))
    (z1, z2), (p1, p2) = z.chunk(2), obj.predictor(z).chunk(2)
    return L.negative_cosine(p1, z2) / 2 + L.negative_cosine(p2, z1) / 2


def ref_swav(obj, v, state):
    c = obj.config
    prototypes = F.normalize(state["prototypes.weight"], dim=1)
    z = F.normalize(obj.projector(features(obj.adapter, obj.backbone, v)), dim=1)
    scores = list((z @ prototypes.T).chunk(len(v)))
    codes = [L.sinkhorn(scores[i], c.epsilon, c.sinkhorn_iterations) for i in c.crops_for_assign]
    return L.swav_loss(scores, codes, c.temperature, c.crops_for_assign)


def ref_dino(obj, v, state):
    c = obj.config
    student = list(obj.head(features(obj.adapter, obj.backbone, v)).chunk(len(v)))
    teacher = list(teacher_out(obj, v[:2], "head").chunk(2))
    loss_fn = L.DINOLoss(c.out_dim, c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_steps,
                         c.student_temp, c.center_momentum)
    loss_fn.center.copy_(state["loss_fn.center"])
    return loss_fn(student, teacher, 0, update=False)


def ref_vicreg(obj, v, state):
    z1, z2 = obj.projector(features(obj.adapter, obj.backbone, v[:2])).chunk(2)
    return L.vicreg_loss(z1, z2, 25.0, 25.0, 1.0)


def ref_barlow_twins(obj, v, state):
    z1, z2 = obj.projector(features(obj.adapter, obj.backbone, v[:2])).chunk(2)
    return L.barlow_twins_loss(z1, z2, 5e-3)


REFERENCE = {"simclr": ref_simclr, "moco_v2": ref_moco_v2, "moco_v1": ref_moco_v2, "moco_v3": ref_moco_v3,
             "byol": ref_byol,
             "simsiam": ref_simsiam, "swav": ref_swav, "dino": ref_dino, "vicreg": ref_vicreg,
             "barlow_twins": ref_barlow_twins}


def snapshot(obj) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in obj.state_dict().items()}


@pytest.mark.parametrize("method,backbone,local", [(m, "vit", 0) for m in METHODS]
                         + [(m, "resnet_tiny", 2) for m in MULTI_CROP])
def test_loss_is_the_shared_loss_on_the_heads_outputs(method, backbone, local):
    obj = build(method, backbone).train()
    views = make_views(local=local)
    state = snapshot(obj)
    out = obj({"views": vb(views)})
    assert out.num_targets is None and out.loss.ndim == 0
    expected = REFERENCE[method](obj, views, state)
    assert torch.allclose(out.loss, expected, rtol=1e-5, atol=1e-6), (float(out.loss), float(expected))
    assert "collapse/effective_rank" in out.metrics and math.isfinite(float(out.metrics["collapse/embedding_std"]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backbone", ["vit", "resnet_tiny"])
def test_forward_backward(method, backbone):
    obj = build(method, backbone).train()
    local = 2 if (method in MULTI_CROP and backbone != "vit") else 0   # ViT crops must match its image size
    out = obj({"views": vb(make_views(local=local))})
    assert racy_gathers(out.loss) == []
    out.loss.backward()
    trainable = {n: p for n, p in obj.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values()), \
        [n for n, p in trainable.items() if p.grad is None]
    assert sum(float(p.grad.abs().sum()) for p in trainable.values()) > 0
    assert all(not p.requires_grad for n, p in obj.named_parameters() if n.startswith("teacher."))
    assert math.isfinite(float(out.loss.detach()))


def test_resnet_pools_by_the_mean_and_vit_by_the_class_token():
    torch.manual_seed(0)
    for name in ("resnet_tiny", "vit"):
        enc = two_view_encoder(name, "tiny", 16).eval()
        x = torch.randn(3, 3, 16, 16)
        with torch.no_grad():
            h = enc({"pixel_values": x})[0].last_hidden_state
            expected = h[:, 0] if name == "vit" else h.mean(dim=1)
            assert torch.equal(pooled_features(enc.adapter, enc.backbone, {"pixel_values": x}, enc.pooling), expected)
    assert tv.runs(two_view_encoder("vit", "tiny", 16).adapter, vb(make_views(n=2, local=3))) == [[0, 1], [2, 3, 4]]


def test_heads_use_global_batch_norm():
    obj = build("byol", "resnet_tiny")
    norms = [m for m in obj.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, GlobalBatchNorm) for m in norms)


# -- MoCo ------------------------------------------------------------------------------------------------------
def keys(obj, views):
    return [F.normalize(k, dim=1) for k in teacher_out(obj, views[:2]).chunk(2)]


def test_moco_queue_gets_the_keys_after_the_loss_saw_the_old_queue():
    obj = build("moco_v2", queue_size=32).train()          # tiny: symmetric
    views = make_views(b=4)
    old = obj.queue.clone()
    out = obj({"views": vb(views)})
    k1, k2 = keys(obj, views)
    assert int(obj.queue_ptr) == 8
    assert torch.allclose(obj.queue[:8], torch.cat([k1, k2]), atol=1e-6)   # both views' keys, after the loss
    assert torch.equal(obj.queue[8:], old[8:])
    q1, q2 = F.normalize(obj.projector(features(obj.adapter, obj.backbone, views)), dim=1).chunk(2)
    t = obj.config.temperature
    both_old = (L.info_nce_queue(q1, k2, old, t) + L.info_nce_queue(q2, k1, old, t)) / 2
    assert torch.allclose(out.loss, both_old, rtol=1e-6)
    # had view 1's keys been enqueued before the second direction, the loss would differ
    after_first = torch.cat([k2, old[4:]])
    wrong = (L.info_nce_queue(q1, k2, old, t) + L.info_nce_queue(q2, k1, after_first, t)) / 2
    assert not torch.allclose(out.loss, wrong, rtol=1e-4)


def test_moco_queue_pointer_wraps_and_eval_does_not_enqueue():
    obj = build("moco_v2", queue_size=10).train()
    first, second = make_views(b=4, seed=1), make_views(b=4, seed=2)
    obj({"views": vb(first)})
    assert int(obj.queue_ptr) == 8
    obj({"views": vb(second)})
    k = torch.cat(keys(obj, second))
    assert int(obj.queue_ptr) == 6                          # 8 + 8 wraps around 10
    assert torch.allclose(obj.queue[8:], k[:2], atol=1e-6) and torch.allclose(obj.queue[:6], k[2:], atol=1e-6)
    before = obj.queue.clone()
    obj.eval()({"views": vb(first)})
    assert torch.equal(obj.queue, before) and int(obj.queue_ptr) == 6


def test_moco_asymmetric_enqueues_the_second_views_keys():
    obj = build("moco_v2", queue_size=16, symmetric=False).train()
    views = make_views(b=4)
    old = obj.queue.clone()
    out = obj({"views": vb(views)})
    k1, k2 = keys(obj, views)
    assert int(obj.queue_ptr) == 4 and torch.allclose(obj.queue[:4], k2, atol=1e-6)
    q1 = F.normalize(obj.projector(features(obj.adapter, obj.backbone, views)), dim=1)[:4]
    assert torch.allclose(out.loss, L.info_nce_queue(q1, k2, old, obj.config.temperature), rtol=1e-6)


def test_ring_write_keeps_the_last_rows():
    queue, ptr = torch.zeros(4, 1), torch.tensor(3)
    tv.ring_write(queue, ptr, torch.arange(6.0)[:, None])
    assert queue.flatten().tolist() == [5.0, 2.0, 3.0, 4.0] and int(ptr) == 1   # as if one by one


# -- EMA teachers and schedules ------------------------------------------------------------------------------------
def test_cosine_momentum_formula():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(30, 0, 0.99) == 0.99                 # no run length: constant
    for k in (0, 17, 40, 99):                                      # BYOL, sec. 3.2
        assert cosine_momentum(k, 100, 0.99) == pytest.approx(1 - (1 - 0.99) * (math.cos(math.pi * k / 100) + 1) / 2)


@pytest.mark.parametrize("method,base,end", [("byol", 0.99, 1.0), ("dino", 0.99, 1.0), ("moco_v3", 0.99, 1.0),
                                             ("moco_v2", 0.99, 0.99)])
def test_teacher_moves_only_in_on_step_end_by_the_schedule(method, base, end):
    obj = build(method, "resnet_tiny", max_steps=10).train()
    assert obj.momentum(0) == pytest.approx(base) and obj.momentum(10) == pytest.approx(end)
    assert obj.momentum(4) == pytest.approx(cosine_momentum(4, 10, base, end))
    teacher0 = {k: v.clone() for k, v in obj.teacher.named_parameters()}
    student = {"adapter": obj.adapter, "backbone": obj.backbone}
    student[("head" if method == "dino" else "projector")] = obj.head if method == "dino" else obj.projector
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.5)
    local = 2 if method == "dino" else 0
    obj({"views": vb(make_views(local=local))}).loss.backward()
    opt.step()
    assert all(torch.equal(v, teacher0[k]) for k, v in obj.teacher.named_parameters())   # forward + step: no change
    s = dict(torch.nn.ModuleDict(student).named_parameters())
    obj.on_step_end(4)
    m = cosine_momentum(4, 10, base, end)
    moved = 0
    for k, v in obj.teacher.named_parameters():
        assert torch.allclose(v, m * teacher0[k] + (1 - m) * s[k].detach(), atol=1e-7), k
        moved += int(not torch.equal(v, teacher0[k]))
    assert moved > 0 and int(obj.global_step) == 4
    assert obj({"views": vb(make_views())}).metrics["momentum"] == pytest.approx(m)


def test_teacher_keeps_its_own_batch_norm_statistics():
    obj = build("byol", "resnet_tiny").train()
    obj({"views": vb(make_views())})
    s, t = obj.backbone.bn1.running_mean.clone(), obj.teacher["backbone"].bn1.running_mean.clone()
    obj.on_step_end(1)
    assert torch.equal(obj.teacher["backbone"].bn1.running_mean, t) and torch.equal(obj.backbone.bn1.running_mean, s)


# -- DINO --------------------------------------------------------------------------------------------------------
def test_dino_centre_updates_in_training_only():
    obj = build("dino").train()
    views = make_views()
    old = obj.loss_fn.center.clone()
    obj({"views": vb(views)})
    teacher = teacher_out(obj, views, "head")
    m = obj.config.center_momentum
    assert torch.allclose(obj.loss_fn.center, m * old + (1 - m) * teacher.mean(dim=0, keepdim=True), atol=1e-6)
    after = obj.loss_fn.center.clone()
    obj.eval()({"views": vb(views)})
    assert torch.equal(obj.loss_fn.center, after)


def test_dino_teacher_sees_global_views_and_is_exported_by_default():
    obj = build("dino", "resnet_tiny", warmup_teacher_temp=0.02, teacher_temp=0.06, warmup_teacher_temp_steps=5)
    out = obj.train()({"views": vb(make_views(local=3))})
    assert out.metrics["teacher_temp"] == pytest.approx(0.02)
    obj.on_step_end(5)
    assert obj({"views": vb(make_views())}).metrics["teacher_temp"] == pytest.approx(0.06)
    assert obj.encoder().backbone is obj.teacher["backbone"]
    assert obj.encoder("student").backbone is obj.backbone
    assert build("dino", export="student").encoder().backbone is not None
    assert obj.config.use_bn                                     # BN in the head on ResNets


def test_dino_last_layer_frozen_for_the_first_steps():
    obj = build("dino", freeze_last_layer_steps=2).train()
    obj({"views": vb(make_views())}).loss.backward()
    assert float(obj.head.last_layer.weight_v.grad.abs().max()) == 0.0
    assert float(obj.head.mlp[0].weight.grad.abs().max()) > 0
    obj.zero_grad(), obj.on_step_end(2)
    obj({"views": vb(make_views())}).loss.backward()
    assert float(obj.head.last_layer.weight_v.grad.abs().max()) > 0


# -- SwAV --------------------------------------------------------------------------------------------------------
def test_swav_prototypes_are_unit_norm_and_frozen_for_the_first_steps():
    obj = build("swav", freeze_prototypes_steps=2).train()
    with torch.no_grad():
        obj.prototypes.weight.mul_(3.0)
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.5)
    for step in range(4):
        out = obj({"views": vb(make_views(seed=step))})
        norms = obj.prototypes.weight.detach().norm(dim=1)
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
        before = obj.prototypes.weight.detach().clone()
        opt.zero_grad()
        out.loss.backward()
        frozen = step < 2
        assert (float(obj.prototypes.weight.grad.abs().max()) == 0.0) == frozen
        opt.step()
        assert torch.equal(obj.prototypes.weight, before) == frozen
        obj.on_step_end(step + 1)


def test_swav_queue_fills_then_joins_the_assignment():
    obj = build("swav", queue_length=8, queue_start_step=1).train()
    views = [make_views(seed=s) for s in range(4)]
    assert obj({"views": vb(views[0])}).metrics["queue_in_use"] == 0.0 and int(obj.queue_filled) == 0   # step 0
    obj.on_step_end(1)
    obj({"views": vb(views[1])})
    z = F.normalize(obj.projector(features(obj.adapter, obj.backbone, views[1])), dim=1).detach()
    assert int(obj.queue_filled) == 4
    assert torch.allclose(obj.queue[0, :4], z[:4], atol=1e-6) and torch.allclose(obj.queue[1, :4], z[4:], atol=1e-6)
    obj({"views": vb(views[2])})
    assert int(obj.queue_filled) == 8
    queue = obj.queue.clone()
    out = obj({"views": vb(views[3])})
    assert out.metrics["queue_in_use"] == 1.0
    c, prototypes = obj.config, obj.prototypes.weight.detach()
    zz = F.normalize(obj.projector(features(obj.adapter, obj.backbone, views[3])), dim=1)
    scores = list((zz @ prototypes.T).chunk(2))
    codes = [L.sinkhorn(scores[i], c.epsilon, c.sinkhorn_iterations, queue_scores=queue[j] @ prototypes.T)
             for j, i in enumerate(c.crops_for_assign)]
    assert torch.allclose(out.loss, L.swav_loss(scores, codes, c.temperature, c.crops_for_assign), rtol=1e-5)
    assert torch.allclose(obj.queue[0, :4], zz[:4].detach(), atol=1e-6)   # newest first
    assert torch.allclose(obj.queue[0, 4:], queue[0, :4], atol=1e-6)


# -- state -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,overrides", [("moco_v2", {}), ("dino", {}), ("byol", {}),
                                              ("swav", {"queue_length": 8, "freeze_prototypes_steps": 1})])
def test_state_round_trip_resumes_exactly(tmp_path, method, overrides):
    obj = build(method, "resnet_tiny", max_steps=20, **overrides).train()
    opt = torch.optim.SGD([p for p in obj.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        opt.zero_grad()
        obj({"views": vb(make_views(seed=step))}).loss.backward()
        opt.step()
        obj.on_step_end(step + 1)
    save_model(obj, str(tmp_path / "model.safetensors"))           # as selfsup.checkpoint does
    extra = obj.extra_state()
    fresh = build(method, "resnet_tiny", seed=123, max_steps=20, **overrides).train()
    load_model(fresh, str(tmp_path / "model.safetensors"))
    fresh.load_extra_state(extra)
    for (k, a), (_, b) in zip(obj.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    names = set(obj.state_dict())
    expected = {"moco_v2": {"queue", "queue_ptr"}, "dino": {"loss_fn.center"}, "byol": set(),
                "swav": {"queue", "queue_filled", "prototypes.weight"}}[method]
    assert expected <= names and any(k.startswith("teacher.") for k in names) == (method != "swav")
    assert fresh.extra_state() == extra
    batch = {"views": vb(make_views(seed=9))}
    assert torch.equal(obj(batch).loss, fresh(batch).loss)


def test_same_inputs_same_bits():
    losses, grads = [], []
    for _ in range(2):
        obj = build("simclr", "resnet_tiny").train()
        out = obj({"views": vb(make_views())})
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in obj.parameters()]))
    assert torch.equal(losses[0], losses[1]) and torch.equal(grads[0], grads[1])


# -- builders ------------------------------------------------------------------------------------------------------
def test_builder_tables_cover_every_method():
    for size in ("tiny", "small", "base"):   # every two-view method has its heads at every size, in its own module
        for method in registry.names("two_view"):
            assert registry.get(method).table("SIZES").get(size), (method, size)
    for name in PRESET_NAMES:   # and every method on image views, of any family, has each preset
        table = preset_table(name)
        expected = set(METHODS) | set(ONE_VIEW) | set(registry.names("pretext", "predictive"))
        assert expected <= set(table) <= set(registry.names(*VIEW_FAMILIES))
        for settings in table.values():
            assert {"backbone", "optimizer", "learning_rate", "weight_decay", "batch_size"} <= set(settings)
    assert method_presets("simclr")["gpu"]["learning_rate"] == pytest.approx(0.06 * 512 / 128)


def test_the_method_tables_are_well_formed():
    """Every view method's module keys its tables by the methods it serves; their sizes, backbone defaults and
    presets' ``objective`` settings are fields of the method's config, and ``presets="image"`` on a registry line
    says that the module holds that method's presets."""
    for entry in (registry.get(m) for m in registry.names(*VIEW_FAMILIES)):
        module = entry.load()
        for table in ("SIZES", "PRESETS", "BACKBONE_DEFAULTS"):
            for method in getattr(module, table, {}):
                assert registry.get(method).module_path == entry.module_path, (table, method)
        sizes, on_kind, presets = (entry.table(t) for t in ("SIZES", "BACKBONE_DEFAULTS", "PRESETS"))
        assert set(sizes) <= set(SIZES), entry.name
        assert {key.partition("/")[2] for key in on_kind} <= set(SIZES) | {""}, entry.name
        for fields in [*sizes.values(), *on_kind.values(), *(p.get("objective", {}) for p in presets.values())]:
            entry.make_config(fields)                                      # names a field the config lacks: fails
        assert (entry.presets == "image") == bool(presets), entry.name
        assert set(presets) <= set(PRESET_NAMES), entry.name


def test_builder_wiring_and_errors():
    with pytest.raises(ValueError, match="unknown method"):
        two_view("simclrr")
    with pytest.raises(ValueError, match="temperatur"):
        build("simclr", temperatur=0.1)
    with pytest.raises(ValueError, match="backbone"):
        two_view("simclr", backbone="resnet7")
    obj = build("byol", "resnet_tiny", max_steps=77)
    assert obj.config.max_steps == 77 and isinstance(obj.backbone, ResNetBackbone)
    assert obj.backbone.config.cifar_stem                         # 16 x 16 images: the CIFAR stem
    assert not two_view_encoder("resnet_tiny", "tiny", 96).backbone.config.cifar_stem
    v3 = build("moco_v3")
    assert v3.config.freeze_embedding and not v3.adapter.patch_embed.weight.requires_grad
    assert build("moco_v3", "resnet_tiny").config.proj_layers == 2 and v3.config.proj_layers == 3
    assert two_view("moco_v3", "resnet_tiny", size="base").config.temperature == 1.0   # ImageNet ResNet-50
    enc = two_view_encoder("resnet_tiny", "tiny", 16)
    given = two_view("simsiam", backbone=enc, size="tiny")
    assert given.backbone is enc.backbone and given.encoder().backbone is enc.backbone
    assert build("swav").config.num_prototypes == registry.get("swav").table("SIZES")["tiny"]["num_prototypes"]
    with pytest.raises(ValueError, match="views"):
        build("simclr")({"pixel_values": torch.randn(2, 3, 16, 16)})


def test_frozen_student_parameters_are_copied_not_averaged():
    obj = build("moco_v3", max_steps=10).train()                    # ViT: frozen random patch projection
    with torch.no_grad():
        obj.adapter.patch_embed.weight.mul_(1.37)                   # e.g. loaded weights
    obj.on_step_end(3)
    assert torch.equal(obj.teacher["adapter"].patch_embed.weight, obj.adapter.patch_embed.weight)


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_encoder_pools_as_the_method_does(method):
    """What the probes read (Encoder.pooled) is the vector the method trained: the class token's output on a ViT,
    the feature-map mean on a ResNet."""
    views = make_views(1, b=3)
    for backbone, pooling in (("vit", "first"), ("resnet_tiny", "mean")):
        obj = build(method, backbone).eval()
        encoder = obj.encoder()
        assert encoder.pooling == pooling
        with torch.no_grad():
            batch = {"pixel_values": views[0]}
            torch.testing.assert_close(encoder.pooled(batch),
                                       pooled_features(encoder.adapter, encoder.backbone, batch, encoder.pooling))
    with pytest.raises(ValueError, match="unknown pooling"):
        type(encoder)(encoder.adapter, encoder.backbone, pooling="median")
