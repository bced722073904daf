"""Context encoders (Pathak, Krähenbühl, Donahue, Darrell & Efros, CVPR 2016): fill in the hidden centre of an image.

``batch["views"]`` holds one batch, the images with their central half-side square filled with the mean colour but
for a border of ``overlap`` pixels (the data side, ``modalities.image_views.CentreHole``, whose pipeline sets
``overlap``), and ``batch["pretext_targets"]`` (B, 3, s, s) that square's original (normalised) pixels, border
included. The encoder runs on the masked image; a small decoder turns its last feature map (a
ResNet's map, a ViT's patch tokens as a grid) into the square: a 1 x 1 convolution, ``upsamples`` stride-2
up-convolutions (4 x 4 kernels, batch norm, ReLU; the paper's decoder), a 3 x 3 convolution to the pixels, resized to
the square when the up-convolutions do not land on its side exactly.

**Loss** (the paper's eq. 3-5): ``reconstruction_weight`` (0.999) x the squared error of the square plus
``adversarial_weight`` (0.001) x the generator's adversarial term ``-log D(prediction)``, where D is a small
convolutional discriminator of squares (strided 4 x 4 convolutions, leaky ReLU, no batch norm, a linear logit) trained
beside it on ``-log D(real) - log(1 - D(prediction))``. Per image, the squared error is the mean over its 3·s² values
(the paper's code: ``nn.MSECriterion``, so the weights mean what they meant there), the ``overlap``-pixel border's
values weighed ``overlap_weight`` (10) times, the centre's once (its ``wtl2Matrix``: the border the encoder sees is
predicted too, and weighed more, so that the filled square meets its surroundings); ``loss`` sums every image's terms
and ``num_targets`` is the number of images, B. ``adversarial_weight=0`` builds no discriminator (the L2-only
context encoder).

Both players learn from ONE backward pass of the summed loss: D's loss sees the prediction detached (it does not
reach the generator), and the generator's adversarial term runs D through ``torch.func.functional_call`` with D's
parameters detached (it does not move D). D's parameters are the objective's, so checkpoints hold them; they learn
at ``discriminator_lr_scale`` (0.1) of the run's rate, the paper's ten times slower discriminator
(``learning_rate_scales``: the engine's optimizer gives them groups of their own).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from selfsup.backbones.resnet import GlobalBatchNorm
from selfsup.objectives.two_view.common import get_views, online_encoder, take_encoder
from selfsup.objectives.two_view.presets import CPU, IMAGENET, LIGHTLY_CIFAR
from selfsup.types import PRETEXT_TARGETS, Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class InpaintingConfig:
    """hidden_dim: the decoder's width after its 1 x 1 convolution (halved by every up-convolution, at least 16);
    upsamples: its stride-2 up-convolutions (a 4 x 4 map to a 16 x 16 square: 2); reconstruction_weight /
    adversarial_weight: the paper's lambda_rec / lambda_adv (0 builds no discriminator); disc_dim / disc_layers:
    the discriminator's first width (doubled every layer) and its strided convolutions; num_channels: the pixels';
    discriminator_lr_scale: the discriminator's learning rate as a multiple of the run's (the paper's: a tenth);
    overlap: the target square's border, in pixels, that the input kept (the views set it; 0: the whole square was
    hidden); overlap_weight: that border's weight in the squared error (the paper's 10)."""

    hidden_dim: int = 256
    upsamples: int = 2
    reconstruction_weight: float = 0.999
    adversarial_weight: float = 0.001
    disc_dim: int = 64
    disc_layers: int = 3
    num_channels: int = 3
    discriminator_lr_scale: float = 0.1
    overlap: int = 0
    overlap_weight: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


def decoder(width: int, c: InpaintingConfig) -> nn.Sequential:
    """Feature map (B, width, g, g) -> pixels (B, C, g·2^upsamples, same)."""
    layers: list[nn.Module] = [nn.Conv2d(width, c.hidden_dim, 1, bias=False), GlobalBatchNorm(c.hidden_dim),
                               nn.ReLU()]
    channels = c.hidden_dim
    for _ in range(c.upsamples):
        out = max(16, channels // 2)
        layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1, bias=False), GlobalBatchNorm(out),
                   nn.ReLU()]
        channels = out
    layers.append(nn.Conv2d(channels, c.num_channels, 3, padding=1))
    return nn.Sequential(*layers)


def discriminator(c: InpaintingConfig) -> nn.Sequential:
    """Squares (B, C, s, s) -> (B, 1) logits: ``disc_layers`` strided 4 x 4 convolutions with leaky ReLU (0.2),
    DCGAN's, without batch norm (so a functional call with other parameters has no running statistics to move),
    global average pooling, a linear logit."""
    layers: list[nn.Module] = []
    channels = c.num_channels
    for i in range(c.disc_layers):
        out = c.disc_dim * 2 ** i
        layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 1))


class Inpainting(Objective):
    def __init__(self, encoder: Encoder, config: InpaintingConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or InpaintingConfig()
        take_encoder(self, encoder)
        self.decoder = decoder(int(self.backbone.hidden_size), c)
        self.discriminator = discriminator(c) if c.adversarial_weight > 0 else None

    def learning_rate_scales(self) -> dict[str, float]:
        """The discriminator learns at ``discriminator_lr_scale`` of the rate (the engine's optimizer groups)."""
        return {"discriminator.": self.config.discriminator_lr_scale} if self.discriminator is not None else {}

    def error_weights(self, side: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(side, side) the squared error's weights: ``overlap_weight`` on the border of ``overlap`` pixels, 1
        inside."""
        k = self.config.overlap
        if not 0 <= k < (side + 1) // 2:
            raise ValueError(f"inpainting overlap {k} leaves no hidden centre in a {side}-pixel target")
        weights = torch.full((side, side), float(self.config.overlap_weight), device=device, dtype=dtype)
        weights[k:side - k, k:side - k] = 1.0
        return weights

    def feature_map(self, view: Batch) -> Tensor:
        """(B, D, g, g) the encoder's last tokens (without a class token) as a square map."""
        out, _ = self.encoder()(view)
        h = out.last_hidden_state[:, self.adapter.num_prefix_tokens:]
        b, n, d = h.shape
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"inpainting decodes a square map of tokens; got {n}")
        return h.transpose(1, 2).reshape(b, d, g, g)

    def predict(self, view: Batch, side: int | None = None) -> Tensor:
        """(B, C, side, side) the decoder's square from the masked ``view`` (its own size when ``side`` is None)."""
        out = self.decoder(self.feature_map(view))
        if side is not None and out.shape[-1] != side:
            out = F.interpolate(out, size=(side, side), mode="bilinear", align_corners=False)
        return out

    @torch.no_grad()
    def pretext_predictions(self, batch: Batch) -> Tensor:
        """The predicted central squares of ``batch["views"][0]``, shaped like ``batch["pretext_targets"]`` (the
        decoder's own size when the batch has none)."""
        target = batch.get(PRETEXT_TARGETS)
        return self.predict(get_views(batch, need=1)[0], None if target is None else target.shape[-1])

    def forward(self, batch: Batch) -> ObjectiveOutput:
        views = get_views(batch, need=1)
        target = batch.get(PRETEXT_TARGETS)
        if target is None:
            raise ValueError(f"inpainting needs {PRETEXT_TARGETS!r}: the original central squares of the views")
        c = self.config
        prediction = self.predict(views[0], target.shape[-1])
        dtype = torch.promote_types(prediction.dtype, torch.float32)             # the loss in float32 at least
        prediction, target = prediction.to(dtype), target.to(dtype)
        squared = (prediction - target).pow(2)
        reconstruction = squared.flatten(1).mean(1)                            # (B,) per-image mean squared error
        if c.overlap:
            weighted = (squared * self.error_weights(target.shape[-1], target.device, dtype)).flatten(1).mean(1)
        else:
            weighted = reconstruction
        loss = c.reconstruction_weight * weighted.sum()
        metrics: dict[str, Tensor] = {"reconstruction_mse": reconstruction.detach().mean()}
        if self.discriminator is not None:
            real, fake = self.discriminator(target), self.discriminator(prediction.detach())
            disc_loss = F.softplus(-real).sum() + F.softplus(fake).sum()       # -log D(x) - log(1 - D(G(z)))
            frozen = {k: p.detach() for k, p in self.discriminator.named_parameters()}
            fooled = functional_call(self.discriminator, frozen, (prediction,))
            adversarial = F.softplus(-fooled).sum()                              # -log D(G(z))
            loss = loss + c.adversarial_weight * adversarial + disc_loss
            n = len(target)
            metrics.update(adversarial_loss=adversarial.detach() / n, discriminator_loss=disc_loss.detach() / n,
                           discriminator_accuracy=((real.detach() > 0).float().mean()
                                                   + (fake.detach() < 0).float().mean()) / 2)
        return ObjectiveOutput(loss, num_targets=len(target), metrics=metrics)

    encoder = online_encoder


# sizes and presets by method (the registry hands them to objectives/two_view/build.py and presets.py)
SIZES = {"inpainting": dict(
    tiny=dict(hidden_dim=32, upsamples=2, disc_dim=8, disc_layers=2),
    small=dict(hidden_dim=256, upsamples=2, disc_dim=64, disc_layers=3),   # a 4 x 4 map -> 16 x 16
    # as the paper's 128-pixel model: 4 up-convolutions from 512 channels (a 4 x 4 map -> the 64 x 64 centre; a
    # ResNet-50's 7 x 7 at 224 -> 112) and a discriminator of 4 strided layers from 64 (DCGAN's)
    base=dict(hidden_dim=512, upsamples=4, disc_dim=64, disc_layers=4))}
BACKBONE_DEFAULTS = {"inpainting": {"vit": dict(upsamples=1), "vit/base": dict(upsamples=3)}}
PRESETS = {"inpainting": dict(
    # the paper's Adam (beta1 0.5, no weight decay) at 5 x its rate: 300 steps are a fraction of an epoch
    cpu={**CPU, "optimizer": "adamw", "learning_rate": 1e-3, "adam_beta1": 0.5, "weight_decay": 0.0,
         "transform": "inpainting"},
    # the paper (sec. 5) and its released train.lua: Adam lr 2e-4, beta1 0.5, batch 64, lambda_rec 0.999 /
    # lambda_adv 0.001 (the config's defaults); no weight decay. It states no schedule length: 100 epochs here
    gpu={**LIGHTLY_CIFAR, "batch_size": 64, "epochs": 100, "optimizer": "adamw", "learning_rate": 2e-4,
         "adam_beta1": 0.5, "weight_decay": 0.0, "transform": "inpainting"},
    # on ImageNet at the paper's 128 x 128 (its settings: the gpu preset's), a ResNet-50 here
    imagenet={**IMAGENET, "image_size": 128, "batch_size": 64, "optimizer": "adamw", "learning_rate": 2e-4,
              "adam_beta1": 0.5, "weight_decay": 0.0, "warmup_epochs": 0, "transform": "inpainting"},
)}


__all__ = ["InpaintingConfig", "Inpainting", "decoder", "discriminator"]
