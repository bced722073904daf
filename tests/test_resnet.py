"""The ResNet backbone (tokens = torchvision's feature map), batch norm over the global batch, and the export to
``transformers`` (ResNetModel for the ImageNet stem, selfsup's own class for the CIFAR stem) and back.

Run as a script under torch's launcher, this file is the worker of the two-process GlobalBatchNorm test.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import subprocess
import torch
import torchvision
from torch import nn

from selfsup.backbones.resnet import GlobalBatchNorm, ResNetBackbone, ResNetConfig, feature_map, sync_batchnorm
from selfsup.errors import SelfsupError

ROOT = Path(__file__).resolve().parents[1]


def tv_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision's avgpool output (B, C) on x."""
    out = {}
    handle = model.avgpool.register_forward_hook(lambda m, i, o: out.__setitem__("p", o.flatten(1)))
    model(x)
    handle.remove()
    return out["p"]


@pytest.mark.parametrize("depth", [18, 50])
def test_tokens_are_torchvisions_feature_map(depth):
    torch.manual_seed(0)
    ours = ResNetBackbone(ResNetConfig(depth=depth)).eval()
    theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected   # torchvision's names
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ours(x, output_hidden_states=True)
        assert out.last_hidden_state.shape == (2, 4, ours.hidden_size)
        assert ours.hidden_size == (512 if depth == 18 else 2048)
        assert (out.last_hidden_state.mean(dim=1) - tv_pooled(theirs, x)).abs().max() < 1e-6
        fmap = nn.Sequential(*list(theirs.children())[:-2])(x)
        assert torch.equal(feature_map(out.last_hidden_state, 2, 2), fmap)
    assert [h.shape[1] for h in out.hidden_states] == [256, 256, 64, 16, 4]   # stem, then the four stages


def test_cifar_stem_has_no_max_pool():
    net = ResNetBackbone(ResNetConfig(depth=18, cifar_stem=True))
    assert isinstance(net.maxpool, nn.Identity)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    out = net(torch.randn(2, 3, 32, 32))
    assert out.last_hidden_state.shape == (2, 16, 512)   # 32 -> 4 x 4 (ImageNet stem: 1 x 1)
    assert ResNetBackbone(ResNetConfig(depth=18))(torch.randn(2, 3, 32, 32)).last_hidden_state.shape == (2, 1, 512)


def test_config_checks():
    with pytest.raises(ValueError, match="depth"):
        ResNetConfig(depth=20)
    with pytest.raises(ValueError, match="layers"):
        ResNetConfig(layers=(1, 1))
    with pytest.raises(ValueError, match="padding_mask"):
        ResNetBackbone(ResNetConfig(layers=(1, 1, 1, 1)))(torch.randn(1, 3, 8, 8), torch.zeros(1, 4, dtype=torch.bool))
    cfg = ResNetConfig(depth=50, layers=(1, 1, 1, 1), zero_init_residual=True)
    net = ResNetBackbone(cfg)
    assert cfg.hidden_size == 2048 and float(net.layer1[0].bn3.weight.detach().abs().sum()) == 0.0


@pytest.mark.parametrize("shape", [(6, 5), (6, 5, 4, 3)])
def test_global_batchnorm_in_one_process_is_batchnorm(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 2 + 1
    g = torch.randn(*shape)
    for path in ("module", "formula"):   # F.batch_norm (one process) and the multi-process formula itself
        ref = nn.BatchNorm1d(5) if len(shape) == 2 else nn.BatchNorm2d(5)
        ours = GlobalBatchNorm(5)
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
        ref.load_state_dict(ours.state_dict())
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = ours(xa) if path == "module" else ours._global_forward(xa)
        yb = ref(xb)
        (ya * g).sum().backward(), (yb * g).sum().backward()
        assert (ya - yb).abs().max() < 1e-5
        assert (xa.grad - xb.grad).abs().max() < 1e-5
        assert (ours.weight.grad - ref.weight.grad).abs().max() < 1e-4
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.allclose(getattr(ours, name).float(), getattr(ref, name).float(), atol=1e-6), name
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_sync_batchnorm_converts_and_keeps_values():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 36)))
    net(torch.randn(8, 3, 8, 8))                       # move the running statistics
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 8, 8)
    expected = net.eval()(x)
    converted = sync_batchnorm(net)
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[2][1], GlobalBatchNorm)
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in converted.modules())
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())
    assert torch.equal(converted(x), expected) and not converted[1].training
    assert isinstance(sync_batchnorm(nn.BatchNorm2d(3)), GlobalBatchNorm)


def test_backbone_uses_global_batchnorm_by_default():
    net = ResNetBackbone(ResNetConfig(layers=(1, 1, 1, 1)))
    assert all(isinstance(m, GlobalBatchNorm) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    plain = ResNetBackbone(ResNetConfig(layers=(1, 1, 1, 1), global_batchnorm=False))
    assert isinstance(plain.bn1, nn.BatchNorm2d)


# -- two processes ----------------------------------------------------------------------------------------------
def worker(out: str) -> None:
    """One process of a run: the tiny ResNet on this rank's rows of a fixed global batch; the loss is a mean over
    the global batch (all_sum, as every two-view loss); gradients averaged as DDP does. In float64: the two runs
    sum in different orders, and float32's rounding of a batch norm's bias gradient (a sum of 384 terms of either
    sign) differs by machine; a batch norm that did not synchronise would differ by far more."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    from selfsup.distributed import all_sum, rank, world_size

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net = ResNetBackbone(ResNetConfig(layers=(1, 1, 1, 1), cifar_stem=True)).double()
    x, w = torch.randn(6, 3, 8, 8, dtype=torch.float64), torch.randn(6, 512, dtype=torch.float64)
    rows = slice(rank() * 6 // world_size(), (rank() + 1) * 6 // world_size())
    pooled = net(x[rows]).last_hidden_state.mean(dim=1)
    loss = all_sum(((pooled * w[rows]).sum(dim=1) ** 2).sum()) / 6
    loss.backward()
    result = {"__loss": loss.detach(), "__world_size": torch.tensor(world_size())}
    for name, p in net.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)
        result[f"grad.{name}"] = grad / world_size()
    result.update({f"buffer.{k}": v.double() for k, v in net.state_dict().items() if "running" in k})
    if rank() == 0:
        save_file(result, out)
    dist.destroy_process_group()


def launch(tmp_path: Path, nproc: int) -> dict[str, torch.Tensor]:
    from tests.launch import worker_tensors

    return worker_tensors(nproc, Path(__file__), tmp_path / f"bn_{nproc}.safetensors")


@pytest.mark.long
def test_global_batchnorm_two_processes_train_as_one(tmp_path):
    one, two = launch(tmp_path, 1), launch(tmp_path, 2)
    assert torch.allclose(one["__loss"], two["__loss"], rtol=1e-5)
    assert float(one["grad.conv1.weight"].abs().max()) > 1e-3
    for key in one:   # rounding only: relative to each tensor's scale
        if not key.startswith("__"):
            scale = float(one[key].abs().max())
            assert float((one[key] - two[key]).abs().max()) <= 1e-9 * max(scale, 1.0), key


# -- export -----------------------------------------------------------------------------------------------------
def trained_encoder(backbone: str, image_size: int):
    """A tiny encoder whose BN running statistics are not the initial ones."""
    from selfsup.recipes.builders.two_view import image_encoder as two_view_encoder

    torch.manual_seed(0)
    encoder = two_view_encoder(backbone, image_size=image_size)
    encoder.train()
    with torch.no_grad():
        encoder({"pixel_values": torch.randn(8, 3, image_size, image_size)})
    return encoder.eval()


def test_imagenet_stem_exports_as_resnet_model(tmp_path):
    from transformers import AutoModel, ResNetModel

    from selfsup.backbones.hf_resnet import encoder_to_resnet, export_resnet, resnet_from_transformers

    encoder = trained_encoder("resnet_tiny", 96)          # > 64: the ImageNet stem
    assert not encoder.backbone.config.cifar_stem
    assert type(encoder_to_resnet(encoder)).__name__ == "ResNetModel"
    x = torch.randn(2, 3, 64, 64)
    figures = export_resnet(encoder, tmp_path, pixel_values=x)
    assert max(figures.values()) <= 1e-4
    assert not (tmp_path / "modeling_selfsup_resnet.py").exists() and (tmp_path / "model.safetensors").is_file()
    model = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(model, ResNetModel)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
        ours = encoder({"pixel_values": x}, output_hidden_states=True)[0]
    assert (out.pooler_output.flatten(1) - ours.last_hidden_state.mean(1)).abs().max() < 1e-4
    for theirs, mine in zip(out.hidden_states, ours.hidden_states):
        assert (theirs.flatten(2).transpose(1, 2) - mine).abs().max() < 1e-4
    back = resnet_from_transformers(tmp_path).eval()      # --init_from
    assert back.backbone.config.layers == (1, 1, 1, 1) and not back.backbone.config.cifar_stem
    with torch.no_grad():
        assert torch.equal(back({"pixel_values": x})[0].last_hidden_state, ours.last_hidden_state)


def test_plain_transformers_resnet_imports():
    from transformers import ResNetConfig as HFConfig, ResNetForImageClassification

    from selfsup.backbones.hf_resnet import resnet_from_transformers

    torch.manual_seed(0)
    hf = ResNetForImageClassification(HFConfig(depths=[1, 1, 1, 1], layer_type="bottleneck", num_labels=3)).eval()
    encoder = resnet_from_transformers(hf).eval()
    assert encoder.backbone.config.depth == 50 and encoder.backbone.hidden_size == 2048
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        theirs = hf.resnet(pixel_values=x).pooler_output.flatten(1)
        assert (encoder({"pixel_values": x})[0].last_hidden_state.mean(1) - theirs).abs().max() < 1e-4
    with pytest.raises(SelfsupError, match="hidden_sizes"):
        narrow = HFConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64])
        resnet_from_transformers(ResNetForImageClassification(narrow))


@pytest.mark.long
def test_cifar_stem_exports_with_its_code(tmp_path):
    from transformers import AutoModel

    from selfsup.backbones.hf_resnet import MODELING_FILE, export_resnet, resnet_from_transformers

    encoder = trained_encoder("resnet_tiny", 16)
    assert encoder.backbone.config.cifar_stem
    x = torch.randn(2, 3, 16, 16)
    figures = export_resnet(encoder, tmp_path, pixel_values=x)
    assert max(figures.values()) <= 1e-4
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "selfsup_resnet" and config["auto_map"]["AutoModel"].startswith("modeling_")
    assert (tmp_path / MODELING_FILE).is_file() and not list(tmp_path.glob("*.bin"))
    assert "selfsup." not in (tmp_path / MODELING_FILE).read_text().replace("selfsup.objectives", "")
    with pytest.raises(Exception):                        # remote code stays off unless asked for
        AutoModel.from_pretrained(tmp_path)
    model = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    assert type(model).__name__ == "SelfsupResNetModel"
    with torch.no_grad():
        theirs = model(pixel_values=x)
        ours = encoder({"pixel_values": x})[0].last_hidden_state
    assert (theirs.last_hidden_state.flatten(2).transpose(1, 2) - ours).abs().max() < 1e-4
    back = resnet_from_transformers(tmp_path).eval()      # read directly; its code is not run
    assert back.backbone.config.cifar_stem
    with torch.no_grad():
        assert torch.equal(back({"pixel_values": x})[0].last_hidden_state, ours)
    # loads where selfsup cannot be imported
    torch.save({"x": x, "ours": ours}, tmp_path / "check.pt")
    code = (f"import sys; sys.modules['selfsup'] = None\nimport torch\nfrom transformers import AutoModel\n"
            f"m = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
            f"d = torch.load({str(tmp_path / 'check.pt')!r})\n"
            f"h = m(pixel_values=d['x']).last_hidden_state.flatten(2).transpose(1, 2)\n"
            f"print(float((h - d['ours']).abs().max()))\n")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 1e-4


if __name__ == "__main__":
    worker(sys.argv[1])
