"""Masked autoencoders (MAE; He et al., 2021, arXiv:2111.06377), as ``transformers``' ``ViTMAEForPreTraining``.

masker x target x loss = a random 75 % of the patches dropped (argsort of per-patch noise, sec. 3) x each patch's
pixels (per-patch normalised with ``norm_pix_loss``, sec. 3 "Reconstruction target") x MSE over the dropped
patches. The steps, in the order the objective runs them:

1. ``adapter.patches`` (each patch's pixels: the targets) and random masking: ``noise`` (B, N) from the batch
   (``"noise"``, as HF's ``forward(noise=...)``), else from each example's seed (``"example_seeds"``, so N
   processes draw what one draws), else ``torch.rand``; the first K = ``int(N * (1 - mask_ratio))`` patches of
   ``argsort(noise)`` stay visible;
2. ``adapter.embed_patches`` + the patch positions on the K visible patches -> ``adapter.add_class_token`` -> the
   encoder (``backbone``, pre-LN + final norm);
3. ``decoder_embed`` -> mask tokens for the dropped patches -> decoder positions (fixed 2-D sin-cos of the
   decoder width, a zero row for the class token) -> ``decoder`` (pre-LN layers + the decoder norm) ->
   ``decoder_pred`` to P·P·C pixels;
4. loss: per patch the mean squared error over its pixels, summed over the dropped patches
   (``num_targets`` = their number; the engine divides by the global count, so the mean is HF's).

Speed, with HF's results (only the order of some float sums differs; ``tests/test_mae.py`` checks the loss, the
logits and every gradient of a training step against ``ViTMAEForPreTraining``):

* only the visible patches are embedded: the stride-P patch convolution is a matmul on their pixels (HF embeds
  all N and then drops 75 %);
* the decoder runs in *shuffled* order (class token, the visible tokens, then the mask tokens, each with the
  position of the patch it stands for) instead of unshuffling with ``ids_restore``: attention is
  permutation-equivariant. Its input is the visible rows, then rows of a per-patch table (``table_rows``);
* its first layer: a mask token's input is ``mask_token`` + its patch's position, one of N rows for the whole
  batch, so that layer's norm and QKV projection run on those N rows once and are gathered per token
  (``TransformerEncoder(first_qkv=...)``) instead of running on B·(N - K) tokens;
* its last layer computes only the dropped patches' tokens (``outputs_from``): every token is still a key and a
  value, but the queries, the output projection, the MLP, the decoder norm, ``decoder_pred`` and the loss run on
  the N - K dropped patches alone (HF predicts every patch and masks the loss). :meth:`predict` runs them on
  every patch and unshuffles for the full (B, N, P·P·C) logits HF returns.

On a CPU in bf16 the backbone's attention takes SDPA's math kernel on these short sequences
(``selfsup.backbones.transformer.attention_kernels``). ``benchmarks/mae_speed.py`` times a training step.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.backbones.transformer import TransformerEncoder
from selfsup.modalities.image import ImageAdapter, sincos_2d, unpatchify
from selfsup.objectives.masking import example_generators
from selfsup.types import Batch, Encoder, Objective, ObjectiveOutput


@dataclass
class MAEConfig:
    """mask_ratio: share of the patches dropped (the paper's 0.75); norm_pix_loss: regress each patch's pixels
    normalised by its own mean and variance (the paper's best target; HF's default is False);
    norm_pix_eps: added to that variance (HF / MAE: 1e-6)."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    norm_pix_eps: float = 1e-6

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    def to_dict(self) -> dict:
        return asdict(self)


class Masking(NamedTuple):
    """One draw of MAE's random masking for a batch of N patches, K of them visible.

    ids_shuffle: (B, N) patch indices, visible first (``argsort(noise)``); ids_restore: (B, N) its inverse;
    mask: (B, N) bool, True where a patch is dropped (HF's ``mask`` == 1); num_visible: K.
    """

    ids_shuffle: Tensor
    ids_restore: Tensor
    mask: Tensor
    num_visible: int


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K = ``int(N * (1 - mask_ratio))``, as ``ViTMAEEmbeddings.random_masking``."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(noise: Tensor, mask_ratio: float) -> Masking:
    """MAE's per-example shuffle from noise (B, N): the K patches of lowest noise stay visible."""
    b, n = noise.shape
    k = num_visible(n, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = ids_restore >= k
    return Masking(ids_shuffle, ids_restore, mask, k)


def masking_noise(batch: Batch, shape: tuple[int, int], device: torch.device) -> Tensor:
    """(B, N) float32 noise: ``batch["noise"]``, else one ``torch.rand(N)`` per example from its seed
    (``batch["example_seeds"]``, see ``selfsup.data.example_seed``), else ``torch.rand``."""
    if batch.get("noise") is not None:
        noise = torch.as_tensor(batch["noise"])
        if tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected (batch, patches) = {tuple(shape)}")
        return noise.to(device=device, dtype=torch.float32)
    if batch.get("example_seeds") is not None:
        gens = example_generators(torch.as_tensor(batch["example_seeds"]))
        if len(gens) != shape[0]:
            raise ValueError(f"{len(gens)} example_seeds for a batch of {shape[0]}")
        return torch.stack([torch.rand(shape[1], generator=g) for g in gens]).to(device)
    return torch.rand(shape, device=device)


def take(x: Tensor, ids: Tensor) -> Tensor:
    """x (B, N, D) at ids (B, M) along N -> (B, M, D), with ``torch.gather`` (a broadcast index, no copy of it)."""
    return torch.gather(x, 1, ids[:, :, None].expand(-1, -1, x.shape[-1]))


class _TableRows(torch.autograd.Function):
    """``table[index]`` whose backward is one matmul, ``one_hot(index)ᵀ @ grad``: no scatter-add (slow on a CPU,
    and racy under advanced indexing), the same sums in a fixed order."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.rows, ctx.dtype = table.shape[0], table.dtype
        return table.index_select(0, index.flatten()).view(*index.shape, table.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        onehot = F.one_hot(index.flatten(), ctx.rows).to(flat.dtype)
        return (onehot.t() @ flat).to(ctx.dtype), None


def table_rows(table: Tensor, index: Tensor) -> Tensor:
    """(*index.shape, D) rows of ``table`` (R, D) picked by ``index`` (long, any shape), differentiable in
    ``table`` (a few rows picked by many tokens, as MAE's mask tokens)."""
    return _TableRows.apply(table, index)


def patch_targets(pixels: Tensor, norm_pix_loss: bool, eps: float = 1e-6) -> Tensor:
    """(…, P·P·C) patch pixels -> float32 targets, each patch normalised by its mean and (unbiased) variance
    when ``norm_pix_loss`` (MAE / HF)."""
    target = pixels.float()
    if norm_pix_loss and target.numel():
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    return target


def mae_loss(pred: Tensor, pixels: Tensor, mask: Tensor, norm_pix_loss: bool, eps: float = 1e-6
             ) -> tuple[Tensor, int]:
    """(sum over the dropped patches of each patch's mean squared error, their number).

    pred, pixels: (B, N, P·P·C) predictions and patch pixels; mask: (B, N) True where dropped. Divided by the
    count this is ``ViTMAEForPreTraining``'s loss; predictions at visible patches do not enter it.
    """
    mask = mask.bool()
    per_patch = (pred.float() - patch_targets(pixels, norm_pix_loss, eps)).pow(2).mean(dim=-1)
    return per_patch[mask].sum(), int(mask.sum())


def xavier_init(module: nn.Module) -> nn.Module:
    """MAE's initialisation (``_init_weights`` of the official code): every Linear xavier-uniform with a zero
    bias (the fused QKV projection as one matrix, as timm's ``qkv``), LayerNorms ones and zeros."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class MAEObjective(Objective):
    """MAE, given an :class:`ImageAdapter`, a pre-LN :class:`TransformerEncoder` (the ViT encoder) and a second
    one as the decoder (its final norm is MAE's decoder norm); it owns ``decoder_embed``, ``mask_token``, the
    fixed ``decoder_pos_embed`` (1, 1 + N, Dd) and ``decoder_pred``. See the module docstring for the steps.

    batch: ``pixel_values`` (B, C, H, W), optional ``noise`` (B, N) or ``example_seeds`` (B,). ``forward``
    returns the loss summed over the dropped patches (``num_targets``) and ``metrics["mae_loss"]``, the mean.
    """

    def __init__(self, adapter: ImageAdapter, backbone: TransformerEncoder, decoder: TransformerEncoder,
                 config: MAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or MAEConfig()
        if adapter.hidden_size != backbone.config.hidden_size:
            raise ValueError(f"adapter width {adapter.hidden_size} != encoder width {backbone.config.hidden_size}")
        self.adapter, self.backbone, self.decoder = adapter, backbone, decoder
        image, width = adapter.config, decoder.config.hidden_size
        self.decoder_embed = nn.Linear(backbone.config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("decoder_pos_embed",
                             sincos_2d(width, image.grid_size, adapter.num_prefix_tokens > 0)[None])
        self.decoder_pred = nn.Linear(width, image.patch_size ** 2 * image.num_channels)
        xavier_init(self.decoder_embed), xavier_init(self.decoder_pred)
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.adapter.config.num_patches

    # -- the steps ---------------------------------------------------------------------------------------------
    def draw_masking(self, batch: Batch, device: torch.device | None = None) -> Masking:
        """The masking of ``batch`` (see :func:`masking_noise`)."""
        b = len(batch["pixel_values"])
        noise = masking_noise(batch, (b, self.num_patches), device or batch["pixel_values"].device)
        return random_masking(noise, self.config.mask_ratio)

    def encode(self, batch: Batch) -> tuple[Tensor, Tensor, Masking]:
        """(latent (B, p + K, D) = the encoder's last hidden state on the class token and the visible patches,
        which is ``ViTMAEModel``'s; patch pixels (B, N, P·P·C); the masking). Only the visible patches are
        embedded (the patch convolution is a matmul on their pixels) and given their positions."""
        pixels = self.adapter.patches(batch)
        masking = self.draw_masking(batch, pixels.device)
        ids = masking.ids_shuffle[:, :masking.num_visible]
        x = self.adapter.embed_patches(take(pixels, ids))
        visible = x + self.adapter.patch_positions(ids).to(x.dtype)
        latent = self.backbone(self.adapter.add_class_token(visible)).last_hidden_state
        return latent, pixels, masking

    def decode(self, latent: Tensor, masking: Masking, outputs_from: int = 0) -> Tensor:
        """(B, p + N, Dd) the decoder's output (after its norm) in *shuffled* order: class token, the K visible
        patches, then the N - K dropped ones, each token with the decoder position of its patch. With
        ``outputs_from`` only the tokens from there on (the decoder's last layer computes just them).

        A dropped patch's decoder input is ``mask_token`` + its position, one of N rows whatever the example: the
        input is the visible rows followed by those N rows picked per token (:func:`table_rows`), and with a pre-LN decoder
        the first layer's norm and QKV projection run once on the N rows and are gathered the same way
        (``first_qkv``) instead of running on all B·(N - K) mask tokens."""
        p, k = self.adapter.num_prefix_tokens, masking.num_visible
        y = self.decoder_embed(latent)
        b, n = masking.ids_shuffle.shape
        table = self.decoder_pos_embed[0].to(y.dtype)
        pos = F.embedding(masking.ids_shuffle[:, :k], table[p:])            # (B, K, Dd), no grad
        if p:
            pos = torch.cat([table[:p].expand(b, -1, -1), pos], dim=1)
        visible = y + pos                                                   # (B, p + K, Dd)
        masked = self.mask_token[0].to(y.dtype) + table[p:]                 # (N, Dd): one row per patch
        ids = masking.ids_shuffle[:, k:]                                    # (B, N - K): the dropped patches

        def gather(per_token: Tensor, per_patch: Tensor) -> Tensor:         # (B, p + N, ·)
            return torch.cat([per_token, table_rows(per_patch, ids)], dim=1)

        first_qkv = None
        if self.decoder.config.norm_first and len(self.decoder.layers) and n > k:
            layer = self.decoder.layers[0]
            qkv = lambda t: layer.attn.qkv(layer.norm1(t))                  # noqa: E731
            first_qkv = gather(qkv(visible), qkv(masked))
        return self.decoder(gather(visible, masked), outputs_from=outputs_from,
                            first_qkv=first_qkv).last_hidden_state

    def forward(self, batch: Batch) -> ObjectiveOutput:
        latent, pixels, masking = self.encode(batch)
        start = self.adapter.num_prefix_tokens + masking.num_visible
        h = self.decode(latent, masking, outputs_from=start)                # (B, N - K, Dd): dropped only
        pred = self.decoder_pred(h)                                         # (B, N - K, P·P·C)
        target = patch_targets(take(pixels, masking.ids_shuffle[:, masking.num_visible:]),
                               self.config.norm_pix_loss, self.config.norm_pix_eps)
        loss = (pred.float() - target).pow(2).mean(dim=-1).sum()
        n = target.shape[0] * target.shape[1]
        return ObjectiveOutput(loss=loss, num_targets=n, metrics={"mae_loss": loss.detach() / max(n, 1)})

    def predict(self, batch: Batch) -> dict[str, Tensor]:
        """What ``ViTMAEForPreTraining`` returns: ``logits`` (B, N, P·P·C) at every patch in image order,
        ``mask`` (B, N) float (1 = dropped), ``ids_restore`` (B, N), ``latent`` (B, p + K, D), and ``loss``
        (the mean over the dropped patches)."""
        latent, pixels, masking = self.encode(batch)
        h = self.decode(latent, masking, outputs_from=self.adapter.num_prefix_tokens)
        logits = take(self.decoder_pred(h), masking.ids_restore)
        total, count = mae_loss(logits, pixels, masking.mask, self.config.norm_pix_loss, self.config.norm_pix_eps)
        return {"logits": logits, "mask": masking.mask.float(), "ids_restore": masking.ids_restore,
                "latent": latent, "loss": total / max(count, 1)}

    @torch.no_grad()
    def reconstruct(self, batch: Batch) -> dict[str, Tensor]:
        """Images (B, C, H, W) for a picture, in the space of ``pixel_values``: ``original``; ``masked`` (the
        dropped patches zeroed, as the MAE demo shows them); ``reconstruction`` (the prediction at every patch,
        un-normalised with each patch's own mean and variance under ``norm_pix_loss``, as the MAE
        visualisation does); ``pasted`` (the reconstruction with the visible patches pasted back); ``mask``
        (B, N) bool."""
        out = self.predict(batch)
        c = self.adapter.config
        pixels = self.adapter.patches(batch).float()
        pred = out["logits"].float()
        if self.config.norm_pix_loss:
            mean, var = pixels.mean(dim=-1, keepdim=True), pixels.var(dim=-1, keepdim=True)
            pred = pred * (var + self.config.norm_pix_eps) ** 0.5 + mean
        mask = out["mask"].bool()
        keep = (~mask)[:, :, None].to(pixels.dtype)
        image = lambda patches: unpatchify(patches, c.patch_size, c.num_channels)  # noqa: E731
        return {"original": batch["pixel_values"].float(), "masked": image(pixels * keep),
                "reconstruction": image(pred), "pasted": image(pixels * keep + pred * (1 - keep)), "mask": mask}

    def encoder(self) -> Encoder:
        """The full-image encoder: every patch plus the class token, (B, p + N, D)."""
        return Encoder(self.adapter, self.backbone)


class ReconstructionGrid(NamedTuple):
    """path: the PNG written (or None); image: (H, W, 3) uint8 (``SummaryWriter.add_image(tag, image,
    step, dataformats="HWC")``)."""

    path: Path | None
    image: np.ndarray


def reconstruction_grid(originals: Tensor, masked: Tensor, reconstructions: Tensor, mean, std,
                        path: str | Path | None = None, max_images: int = 8, scale: int | None = None,
                        pad: int = 2) -> ReconstructionGrid:
    """A picture of MAE at work: rows original / masked / reconstruction, ``max_images`` columns.

    The three (B, C, H, W) tensors are in normalised space (``pixel_values``); ``mean`` / ``std`` (C,) undo the
    normalisation. Each image is enlarged ``scale`` times (nearest; default: to about 96 pixels) and cells are
    separated by ``pad`` white pixels, so the PNG is ``3·s·H + 4·pad`` high and ``n·s·W + (n + 1)·pad`` wide.
    Written with PIL when ``path`` is given.
    """
    rows = [t[:max_images].detach().float().cpu() for t in (originals, masked, reconstructions)]
    n, c, h, w = rows[0].shape
    s = scale or max(1, 96 // max(h, w))
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    d = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    grid = np.full((3 * s * h + 4 * pad, n * s * w + (n + 1) * pad, 3), 255, dtype=np.uint8)
    for r, images in enumerate(rows):
        images = (images * d + m).clamp(0, 1)
        images = images.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if c == 1:
            images = images.repeat(3, axis=-1)
        for i in range(n):
            y, x = pad + r * (s * h + pad), pad + i * (s * w + pad)
            grid[y:y + s * h, x:x + s * w] = images[i, :, :, :3]
    out = None
    if path is not None:
        from PIL import Image

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out, format="PNG")
    return ReconstructionGrid(out, grid)


__all__ = ["MAEConfig", "MAEObjective", "Masking", "random_masking", "masking_noise", "num_visible",
           "patch_targets", "table_rows", "mae_loss", "xavier_init", "reconstruction_grid", "ReconstructionGrid", "take"]
