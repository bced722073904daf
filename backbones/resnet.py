"""torchvision's ResNet as a backbone that returns tokens, and batch norm over the global batch.

:class:`ResNetBackbone` takes images (B, C, H, W) (its adapter is ``PixelAdapter``, which hands the pixels over
unchanged) and returns its last feature map as tokens, (B, H'·W', C) row-major over the map, so the mean over the
tokens is global average pooling and an objective that needs one vector per image never looks inside. Weights
keep torchvision's names (``conv1``, ``bn1``, ``layer{1..4}.{j}.conv{k}`` / ``bn{k}`` / ``downsample``), so a
torchvision state dict (without ``fc``) loads as is.

The CIFAR stem (``cifar_stem=True``) replaces the 7x7 stride-2 convolution and the max-pool by a 3x3 stride-1
convolution and no pooling (He et al. 2016, sec. 4.2; SimCLR appendix B.9; lightly's CIFAR-10 benchmark), so a
32x32 image leaves the last stage as a 4x4 map instead of 1x1.

**Batch norm across processes.** Two-view methods on ResNets need the batch statistics of the *global* batch,
otherwise N processes do not train as one (and MoCo's key encoder "cheats" through per-process statistics).
``torch.nn.SyncBatchNorm`` only runs on accelerators: in torch 2.11 its forward raises "SyncBatchNorm expected
input tensor to be on GPU or XPU or privateuseone" for CPU tensors under gloo (it falls back to plain batch norm
only when no process group is running). :class:`GlobalBatchNorm` therefore computes the mean and the (biased)
variance over every process with two differentiable :func:`selfsup.distributed.all_sum` calls (two-pass: the
mean first, then the squared deviations from it) and works on any device; with one process, or in eval mode, it
is ``F.batch_norm`` itself, so it equals ``nn.BatchNorm2d`` bit for bit there. Its parameter and buffer names
are ``BatchNorm2d``'s, so checkpoints and exports do not see the difference.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.distributed import all_sum, world_size
from selfsup.types import BackboneOutput

# depth -> (block, blocks per stage), as torchvision.models.resnet{depth}
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of the global batch (every process), for inputs (B, C),
    (B, C, L), (B, C, H, W) or (B, C, D, H, W).

    Training with more than one process: mean and variance over the batch (and spatial) dims of all processes,
    differentiable (the backward pass sums over processes, as ``SyncBatchNorm``'s), in float32; the running
    statistics move towards the global ones (unbiased variance, as ``BatchNorm``), so they agree on every
    process. Otherwise it is ``F.batch_norm``. Every process must call it the same number of times.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (B, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not batch_stats or world_size() == 1:
            return super().forward(x)
        return self._global_forward(x)

    def _global_forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()   # half precision: stats in float32
        local = torch.cat([xf.sum(dims), xf.new_full((1,), float(x.numel() // x.shape[1]))])
        total = all_sum(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centered = xf - mean.view(shape)
        var = all_sum(centered.square().sum(dims)) / count
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(count))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1.0 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1.0 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``) replaced by a
    :class:`GlobalBatchNorm` holding the same parameters, buffers and settings, recursively (as
    ``SyncBatchNorm.convert_sync_batchnorm``, but working on CPU too). Always converts: with one process the
    result computes exactly what the original did. Returns the converted module (a new one if ``module`` itself
    is a batch norm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        with torch.no_grad():
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


@dataclass
class ResNetConfig:
    """depth: 18 / 34 (basic blocks) or 50 / 101 / 152 (bottlenecks); layers: blocks per stage instead of the
    depth's (e.g. (1, 1, 1, 1) for a tiny test model); cifar_stem: 3x3 stride-1 stem, no max-pool;
    zero_init_residual: the last BN of every residual branch starts at 0 (Goyal et al. 2017; torchvision's flag);
    global_batchnorm: :class:`GlobalBatchNorm` (statistics over all processes) instead of ``BatchNorm2d``."""

    depth: int = 18
    cifar_stem: bool = False
    zero_init_residual: bool = False
    num_channels: int = 3
    layers: tuple[int, ...] | None = None
    global_batchnorm: bool = True

    def __post_init__(self) -> None:
        if self.depth not in DEPTHS:
            raise ValueError(f"unknown ResNet depth {self.depth}; choose from {sorted(DEPTHS)}")
        if self.layers is not None:
            self.layers = tuple(int(n) for n in self.layers)
            if len(self.layers) != 4 or min(self.layers) < 1:
                raise ValueError(f"layers must be 4 positive block counts, got {self.layers}")

    @property
    def block(self) -> str:
        return DEPTHS[self.depth][0]

    @property
    def blocks(self) -> tuple[int, ...]:
        return self.layers or DEPTHS[self.depth][1]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Output channels of the four stages (64..512, times 4 for bottlenecks)."""
        return tuple(w * (4 if self.block == "bottleneck" else 1) for w in (64, 128, 256, 512))

    @property
    def hidden_size(self) -> int:
        return self.hidden_sizes[-1]

    def to_dict(self) -> dict:
        return asdict(self)


class ResNetStage(nn.Sequential):
    """One stage of residual blocks (torchvision's ``layer1`` ... ``layer4``, same parameter names): one FSDP unit
    (selfsup.sharding)."""

    shard_unit = True


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without ``avgpool`` / ``fc``: pixels (B, C, H, W) -> tokens (B, H'·W', C)."""

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

        self.config = cfg = config or ResNetConfig()
        block = BasicBlock if cfg.block == "basic" else Bottleneck
        norm = GlobalBatchNorm if cfg.global_batchnorm else nn.BatchNorm2d
        net = ResNet(block, list(cfg.blocks), zero_init_residual=cfg.zero_init_residual, norm_layer=norm)
        if cfg.cifar_stem or cfg.num_channels != 3:
            kernel, stride, pad = (3, 1, 1) if cfg.cifar_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(cfg.num_channels, 64, kernel, stride, pad, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        self.conv1, self.bn1, self.relu = net.conv1, net.bn1, net.relu
        self.maxpool = nn.Identity() if cfg.cifar_stem else net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (ResNetStage(*stage) for stage in
                                                              (net.layer1, net.layer2, net.layer3, net.layer4))

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def hidden_state_sizes(self) -> tuple[int, ...]:
        """The channels of each entry of ``hidden_states``: the stem's, then every stage's."""
        return (self.conv1.out_channels, *self.config.hidden_sizes)

    def stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: Tensor, padding_mask: Tensor | None = None, output_hidden_states: bool = False,
                structure: Mapping[str, Any] | None = None) -> BackboneOutput:
        """x: (B, C, H, W) images. Returns the last feature map as (B, H'·W', C) tokens; with
        ``output_hidden_states`` also the stem's output (after the max-pool) and every stage's, each as tokens
        (5 entries, as ``transformers``' ``ResNetModel``)."""
        if padding_mask is not None:
            raise ValueError("ResNetBackbone takes whole images; padding_mask must be None")
        if x.dim() != 4 or x.shape[1] != self.config.num_channels:
            raise ValueError(f"expected images (B, {self.config.num_channels}, H, W), got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x.to(self.conv1.weight.dtype)))))
        states = [x] if output_hidden_states else None
        for stage in self.stages():
            x = stage(x)
            if states is not None:
                states.append(x)
        return BackboneOutput(as_tokens(x), tuple(as_tokens(s) for s in states) if states is not None else None)


def as_tokens(feature_map: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H·W, C), row-major over the map."""
    return feature_map.flatten(2).transpose(1, 2)


def feature_map(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of :func:`as_tokens`: (B, H·W, C) -> (B, C, H, W)."""
    b, n, c = tokens.shape
    if n != height * width:
        raise ValueError(f"{n} tokens do not form a {height}x{width} map")
    return tokens.transpose(1, 2).reshape(b, c, height, width)


__all__ = ["ResNetConfig", "ResNetBackbone", "GlobalBatchNorm", "sync_batchnorm", "as_tokens", "feature_map",
           "DEPTHS"]
