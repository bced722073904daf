"""Images: the patch-embedding adapter (ViT) and the pixel adapter (CNN backbones).

:class:`ImageAdapter` turns ``pixel_values`` (B, C, H, W) into patch tokens in the two stages of the adapter
contract, so that MAE can drop patches after the positions are added and before the class token is prepended:

* ``embed(batch)`` -> :class:`Tokens` with ``x`` (B, N, D) the patch embeddings and ``targets["pixels"]``
  (B, N, P·P·C) each patch's pixels (``patches(batch)``), row-major over the grid, channel last inside a patch
  (``transformers``' ``ViTMAEForPreTraining.patchify`` order). The embedding is the stride-P convolution
  ``patch_embed`` (its (D, C, P, P) weight and bias are the parameters, as ``transformers``' ViT names them),
  run as one matmul on the patch pixels (``embed_patches``), so MAE embeds its visible patches alone;
* ``add_positions(x)`` adds the patch positions (fixed 2-D sin-cos, as MAE, or learned, as ViT), interpolated
  for images of another size than the configured one (multi-crop's local views);
* ``add_prefix(x)`` prepends the class token plus its position (zero for sin-cos, as MAE).

``forward`` runs all three, which is what the encoder of every image objective sees. :class:`PixelAdapter` hands
the images unchanged to a backbone that takes pixels (a ResNet), which returns its last feature map as tokens.
Loading, bad-image handling and augmentations live in ``modalities/image_data.py``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.dropout import Dropout
from selfsup.types import Adapter, Batch, Tokens

POSITIONS = ("sincos", "learned")


@dataclass
class ImageConfig:
    """image_size, patch_size: square images cut into (image_size / patch_size)² patches; num_channels: 3 (RGB);
    positions: ``"sincos"`` (fixed, MAE) or ``"learned"`` (ViT); class_token: prepend a class token;
    dropout: after the positions (``transformers``' ``hidden_dropout_prob`` on the embeddings)."""

    image_size: int = 32
    patch_size: int = 4
    num_channels: int = 3
    positions: str = "sincos"
    class_token: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose from {list(POSITIONS)}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim): sin of the first half of the frequencies, then cos (MAE's layout)."""
    if dim % 2:
        raise ValueError(f"sin-cos positions need an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = positions.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_size: int, class_token: bool = False) -> Tensor:
    """(grid², dim) fixed 2-D sin-cos positions (MAE's ``get_2d_sincos_pos_embed``): the first half of the
    width encodes the column, the second half the row; with ``class_token`` a zero row first."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need a width divisible by 4, got {dim}")
    w, h = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    table = np.concatenate([sincos_1d(dim // 2, w), sincos_1d(dim // 2, h)], axis=1)
    if class_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float()


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, P·P·C), patches row-major, each patch (row, column, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, num_channels: int = 3) -> Tensor:
    """(B, N, P·P·C) -> (B, C, H, W), the inverse of :func:`patchify` for a square grid."""
    b, n, _ = patches.shape
    g, p, c = int(round(n ** 0.5)), patch_size, num_channels
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = patches.reshape(b, g, g, p, p, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)


class ImageAdapter(Adapter):
    """``pixel_values`` (B, C, H, W) -> patch tokens; see the module docstring for the three stages."""

    batch_keys = ("pixel_values",)

    def __init__(self, config: ImageConfig, hidden_size: int) -> None:
        super().__init__()
        self.config, self.hidden_size = config, hidden_size
        c = config
        self.patch_embed = nn.Conv2d(c.num_channels, hidden_size, c.patch_size, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if c.class_token else None
        rows = c.num_patches + int(c.class_token)
        if c.positions == "sincos":
            table = sincos_2d(hidden_size, c.grid_size, c.class_token)[None]
            self.position_embeddings = nn.Parameter(table, requires_grad=False)
        else:
            self.position_embeddings = nn.Parameter(torch.zeros(1, rows, hidden_size))
            nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.dropout = Dropout(c.dropout)
        # MAE's init: the patch projection as a linear layer (xavier uniform), class token N(0, 0.02)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches in the backbone's input (1 with a class token)."""
        return int(self.cls_token is not None)

    def content_prefixes(self) -> tuple[str, ...]:
        return ("patch_embed.",)

    def position_prefixes(self) -> tuple[str, ...]:
        return ("position_embeddings", "cls_token")

    def check_size(self, pixels: Tensor, any_size: bool = False) -> None:
        """(B, C, S, S) with the configured C and S, or with ``any_size`` any square S that is a multiple of the
        patch size (multi-crop's smaller views; the positions are then interpolated)."""
        c = self.config
        ok = pixels.dim() == 4 and pixels.shape[1] == c.num_channels
        if ok and any_size:
            ok = pixels.shape[2] == pixels.shape[3] and pixels.shape[2] % c.patch_size == 0 and pixels.shape[2] > 0
        elif ok:
            ok = tuple(pixels.shape[2:]) == (c.image_size,) * 2
        if not ok:
            size = f"S, S) with S a multiple of {c.patch_size}" if any_size else f"{c.image_size}, {c.image_size})"
            raise ValueError(f"expected pixel_values of shape (B, {c.num_channels}, {size}, got {tuple(pixels.shape)}")

    def patches(self, batch: Batch, any_size: bool = False) -> Tensor:
        """(B, N, P·P·C) each patch's pixels (:func:`patchify`) of ``batch["pixel_values"]``, size checked
        (:meth:`check_size`)."""
        pixels: Tensor = batch["pixel_values"]
        self.check_size(pixels, any_size)
        return patchify(pixels, self.config.patch_size)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """(…, P·P·C) patch pixels in :func:`patchify`'s order -> (…, D) patch embeddings. The stride-P
        convolution ``patch_embed`` (kernel = stride = P) is one matmul on the patch pixels, so only the patches
        asked for are embedded (MAE: the visible ones); the (D, C, P, P) weight is read in (row, column, channel)
        order."""
        w = self.patch_embed.weight
        return F.linear(patches.to(w.dtype), w.permute(0, 2, 3, 1).reshape(w.shape[0], -1), self.patch_embed.bias)

    def embed(self, batch: Batch) -> Tokens:
        pixels = self.patches(batch, any_size=True)
        return Tokens(x=self.embed_patches(pixels), padding_mask=None, targets={"pixels": pixels})

    def patch_positions(self, ids: Tensor | None = None, grid_size: int | None = None) -> Tensor:
        """(1, N, D) the positions of the patches (without the class token's); with ``ids`` (B, M) patch
        indices, theirs (B, M, D). For a ``grid_size`` other than the configured one (a smaller multi-crop view)
        the table is resized by bicubic interpolation, as DINO's ViT and ``transformers``' ViT
        (``interpolate_pos_encoding=True``) do."""
        table = self.position_embeddings[:, self.num_prefix_tokens:]
        g = self.config.grid_size
        if grid_size is not None and grid_size != g:
            grid = table.reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
            table = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, -1)
        return table if ids is None else F.embedding(ids, table[0])

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None) -> Tensor:
        """x (B, N, D) the patches of a square grid (N = g²; g other than the configured grid: interpolated)."""
        g = math.isqrt(x.shape[1])
        if g * g != x.shape[1]:
            raise ValueError(f"{x.shape[1]} patch tokens do not form a square grid")
        return x + self.patch_positions(grid_size=g).to(x.dtype)

    def add_prefix(self, x: Tensor) -> Tensor:
        """Prepend the class token (plus its position) to (B, M, D) patch tokens, then dropout."""
        if self.cls_token is not None:
            cls = (self.cls_token + self.position_embeddings[:, :1]).to(x.dtype).expand(len(x), -1, -1)
            x = torch.cat([cls, x], dim=1)
        return self.dropout(x)

    add_class_token = add_prefix

    def target_size(self, name: str) -> int:
        if name == "pixels":
            return self.config.patch_size ** 2 * self.config.num_channels
        return super().target_size(name)

    def target_to_input(self, name: str, values: Tensor) -> Tensor:
        """``"pixels"`` (B, N, P·P·C) -> images (B, C, H, W) (:func:`unpatchify`)."""
        if name == "pixels":
            return unpatchify(values, self.config.patch_size, self.config.num_channels)
        return values

    def decoder_positions(self, width: int) -> Tensor:
        """MAE's decoder positions: fixed 2-D sin-cos of ``width`` over the patch grid, a zero row first for the
        class token (when there is one)."""
        return sincos_2d(width, self.config.grid_size, self.num_prefix_tokens > 0)


class PixelAdapter(Adapter):
    """For backbones that take images (a ResNet): ``x`` is ``pixel_values`` (B, C, H, W) itself; no positions."""

    batch_keys = ("pixel_values",)

    def __init__(self, num_channels: int = 3, hidden_size: int = 0) -> None:
        super().__init__()
        self.num_channels, self.hidden_size = num_channels, hidden_size

    def embed(self, batch: Batch) -> Tokens:
        pixels: Tensor = batch["pixel_values"]
        if pixels.dim() != 4 or pixels.shape[1] != self.num_channels:
            raise ValueError(f"expected pixel_values of shape (B, {self.num_channels}, H, W), got {tuple(pixels.shape)}")
        return Tokens(x=pixels, padding_mask=None, targets={})

    def add_positions(self, x: Tensor, padding_mask: Tensor | None = None, structure=None) -> Tensor:
        return x


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
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    d = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    rows = [t.detach().float().cpu() * d + m for t in (originals, masked, reconstructions)]
    return picture_grid(rows, path, max_images=max_images, scale=scale, pad=pad)


def picture_grid(rows: Sequence[Tensor], path: str | Path | None = None, max_images: int = 8,
                 scale: int | None = None, pad: int = 2) -> ReconstructionGrid:
    """Rows of images as one picture: each row a (B, C, H, W) tensor in [0, 1] (C = 3, or 1 for grey), the same
    size in every row, ``max_images`` columns; enlarged ``scale`` times (nearest; default: to about 96 pixels),
    cells ``pad`` white pixels apart. Written with PIL when ``path`` is given."""
    rows = [t[:max_images].detach().float().cpu() for t in rows]
    n, c, h, w = rows[0].shape
    if any(r.shape[0] != n or r.shape[2:] != (h, w) for r in rows):
        raise ValueError(f"picture rows differ in shape: {[tuple(r.shape) for r in rows]}")
    s = scale or max(1, 96 // max(h, w))
    grid = np.full((len(rows) * (s * h + pad) + pad, n * s * w + (n + 1) * pad, 3), 255, dtype=np.uint8)
    for r, images in enumerate(rows):
        images = images.clamp(0, 1).repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
        images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if images.shape[-1] == 1:
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
