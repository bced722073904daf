"""Image augmentations (``torchvision.transforms.v2``) whose randomness comes from a per-example seed.

The pipelines follow each method's paper, scaled to ``image_size``: SimCLR (Chen et al., 2020), BYOL's two
asymmetric views (Grill et al., 2020), DINO's multi-crop (Caron et al., 2021; SwAV's with
``global_scale=(0.14, 1)``), MAE's crop-and-flip (He et al., 2022), and the evaluation resize + centre crop.
Each is a ``v2.Compose`` working on PIL RGB images and ending in a normalised float32 (3, H, W) tensor; the
transform objects carry the paper's numbers and can be inspected.

``v2`` transforms draw from torch's global CPU generator. :class:`ViewDataset` runs view ``v`` of example
``i`` under ``torch.random.fork_rng`` with that generator seeded from ``example_seed(seed, epoch, i, stream=2
+ v)`` (about 5 µs), so an example's views depend on (seed, epoch, index, view) only: the same in any process,
DataLoader worker or order, and the caller's RNG is left as it was. Only the CPU generator is seeded, so
CUDA generators are untouched. The transforms run on one intra-op thread (:func:`single_thread`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from selfsup.data import VIEW_STREAM, example_seed
from selfsup.types import EXAMPLE_INDEX, PRETEXT_LABELS, PRETEXT_TARGETS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
BICUBIC, BILINEAR = v2.InterpolationMode.BICUBIC, v2.InterpolationMode.BILINEAR


def blur_kernel(image_size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10 % of the image side, made odd, at least 3 (23 for 224, 3 for 32)."""
    k = int(0.1 * image_size)
    return max(3, k + 1 - k % 2)


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def augment(image_size: int, scale: tuple[float, float], jitter: tuple[float, float, float, float],
            jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5, solarize_p: float = 0.0,
            hflip_p: float = 0.5, interpolation: v2.InterpolationMode = BILINEAR,
            mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """The shared two-view recipe: random resized crop to ``image_size`` with area ``scale``, horizontal flip,
    colour jitter (brightness, contrast, saturation, hue) with probability ``jitter_p``, grayscale, Gaussian
    blur (:func:`blur_kernel`, sigma 0.1..2) with ``blur_p``, solarization (threshold 128 of 255) with
    ``solarize_p``, then a normalised float tensor. A step with probability 0 is left out."""
    steps: list[Any] = [v2.RandomResizedCrop(image_size, scale=scale, interpolation=interpolation, antialias=True)]
    if hflip_p > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip_p))
    if jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p))
    if grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel(image_size), sigma=(0.1, 2.0))], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))
    return v2.Compose(steps + _to_tensor(mean, std))


def simclr_transform(image_size: int = 32, scale: tuple[float, float] = (0.08, 1.0),
                     jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1), blur_p: float = 0.5,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """SimCLR: crop (0.08..1), flip, jitter (colour strength 0.5: 0.4, 0.4, 0.4, 0.1) p=0.8, grayscale 0.2,
    blur p=0.5 (the paper and lightly's CIFAR settings use ``blur_p=0``). Use it for both views."""
    return augment(image_size, scale, jitter, blur_p=blur_p, mean=mean, std=std)


def moco_v1_transform(image_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                      std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """MoCo v1 (He et al., 2020): crop (0.2..1), flip, colour jitter 0.4 on all four, always, grayscale 0.2, no blur —
    the augmentation MoCo v2's ablation starts from (v2 adds blur and jitter p=0.8 with hue 0.1). The official
    code jitters after the grayscale; here the grayscale comes after (``augment``'s order)."""
    return augment(image_size, (0.2, 1.0), (0.4, 0.4, 0.4, 0.4), jitter_p=1.0, grayscale_p=0.2, blur_p=0.0,
                   mean=mean, std=std)


def byol_transforms(image_size: int = 32, scale: tuple[float, float] = (0.08, 1.0),
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[v2.Compose]:
    """BYOL's asymmetric pair (Grill et al., 2020, Table 6): jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2,
    bicubic crops; view 1 always blurred and never solarized, view 2 blurred p=0.1 and solarized p=0.2."""
    common = dict(image_size=image_size, scale=scale, jitter=(0.4, 0.4, 0.2, 0.1), interpolation=BICUBIC,
                  mean=mean, std=std)
    return [augment(blur_p=1.0, solarize_p=0.0, **common), augment(blur_p=0.1, solarize_p=0.2, **common)]


def multicrop_transforms(image_size: int = 32, local_size: int | None = None, num_local: int = 6,
                         global_scale: tuple[float, float] = (0.4, 1.0),
                         local_scale: tuple[float, float] = (0.05, 0.4), mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> list[v2.Compose]:
    """DINO's multi-crop: 2 global views of ``image_size`` (area ``global_scale``; blur 1.0 on the first,
    blur 0.1 + solarize 0.2 on the second) and ``num_local`` local views of ``local_size`` (area
    ``local_scale``, blur 0.5); jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2 throughout.
    ``local_size`` defaults to DINO's 96/224 of ``image_size`` (14 for 32); SwAV: ``global_scale=(0.14, 1)``,
    ``local_scale=(0.05, 0.14)``. ``num_local`` 6 as lightly's ``DINOTransform`` (DINO's code: 8)."""
    local_size = local_size or max(1, round(image_size * 96 / 224))
    common = dict(jitter=(0.4, 0.4, 0.2, 0.1), interpolation=BICUBIC, mean=mean, std=std)
    globals_ = [augment(image_size, global_scale, blur_p=1.0, **common),
                augment(image_size, global_scale, blur_p=0.1, solarize_p=0.2, **common)]
    return globals_ + [augment(local_size, local_scale, blur_p=0.5, **common) for _ in range(num_local)]


ROTATION_SETS = {"4": (0, 90, 180, 270), "8": tuple(range(0, 360, 45)), "0_180": (0, 180), "90_270": (90, 270)}


class Rotate:
    """Rotate a (C, H, W) tensor counter-clockwise by ``angle`` degrees: multiples of 90 exactly
    (``torch.rot90``: no interpolation, nothing lost on a square image), other angles bilinearly, the corners
    filled with 0 (the mean colour of a normalised image)."""

    def __init__(self, angle: int) -> None:
        self.angle = int(angle) % 360

    def __call__(self, x: Tensor) -> Tensor:
        if self.angle % 90 == 0:
            return torch.rot90(x, self.angle // 90, dims=(-2, -1))
        return v2.functional.rotate(x, float(self.angle), interpolation=BILINEAR)

    def __repr__(self) -> str:
        return f"Rotate({self.angle})"


def rotation_transforms(image_size: int = 32, angles: Sequence[int] = ROTATION_SETS["4"],
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> list[v2.Compose]:
    """RotNet (Gidaris et al., 2018): one view per angle of ``angles``, each the same crop of the image (resize,
    centre crop, random crop with 1/8 padding, flip: RotNet's CIFAR augmentation) rotated by its angle; view ``k``'s
    label is ``k``. Use with ``ViewDataset(..., shared_draws=True)`` so the views differ only by their rotation."""
    base = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
            v2.RandomCrop(image_size, padding=max(1, image_size // 8)), v2.RandomHorizontalFlip()]
    return [v2.Compose(base + _to_tensor(mean, std) + [Rotate(a)]) for a in angles]


def hamming_permutations(count: int, tiles: int = 9, seed: int = 0) -> np.ndarray:
    """(count, tiles) permutations of ``tiles`` tiles, far apart: Noroozi & Favaro's Algorithm 1 (ECCV 2016) — start
    from a random permutation, then repeatedly add the permutation whose summed Hamming distance to those chosen is
    largest (ties: the first). ``seed`` draws the first one."""
    import itertools

    every = np.array(list(itertools.permutations(range(tiles))), dtype=np.int8)
    if not 1 <= count <= len(every):
        raise ValueError(f"choose between 1 and {len(every)} permutations of {tiles} tiles, not {count}")
    j = int(np.random.default_rng(seed).integers(len(every)))
    chosen, total = [j], np.zeros(len(every), dtype=np.int64)
    for _ in range(count - 1):
        total += (every != every[j]).sum(axis=1)
        total[chosen] = -1
        j = int(total.argmax())
        chosen.append(j)
    return every[chosen].astype(np.int64)


class SingleView:
    """One view per example batched as views (``{"views": [view]}``, ``makes_views``), not as plain images: for
    objectives on one view that still read ``batch["views"]`` and the example index (instance discrimination)."""

    makes_views = True

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> dict[str, Any]:
        return {"views": [self.transform(image)]}


class JigsawTiles:
    """The jigsaw puzzle of one image (context-free network, Noroozi & Favaro, 2016): resize and crop to
    ``image_size``, cut a ``grid`` x ``grid`` grid of cells, take from each cell a random ``tile_size`` tile (the
    gap between tiles and their jitter within the cell keep edges from giving the order away; 64 of 75 pixels
    in the paper), normalise every tile on its own (its mean and standard deviation per channel, so that low-level
    statistics do not either), then shuffle the tiles by one of ``permutations`` (drawn uniformly).

    Returns ``{"views": [tile per position], "pretext_label": k}``: position ``j`` shows tile
    ``permutations[k][j]`` (row-major cell index), so ``argsort(permutations[k])`` puts them back."""

    makes_views = True   # one call makes every view and the label (ViewDataset, view_loader)

    def __init__(self, image_size: int, permutations: np.ndarray, grid: int = 3, tile_size: int | None = None,
                 grayscale_p: float = 0.3) -> None:
        self.image_size, self.grid = image_size, grid
        self.cell = image_size // grid
        self.tile = tile_size or max(1, round(self.cell * 64 / 75))
        if self.tile > self.cell:
            raise ValueError(f"a {self.tile}-pixel tile does not fit a {self.cell}-pixel cell")
        self.permutations = torch.as_tensor(permutations, dtype=torch.long)
        if self.permutations.shape[1] != grid * grid:
            raise ValueError(f"permutations of {self.permutations.shape[1]} tiles for a {grid} x {grid} grid")
        self.base = v2.Compose([v2.Resize(image_size, antialias=True), v2.RandomCrop(image_size, pad_if_needed=True),
                                v2.RandomHorizontalFlip(), v2.RandomGrayscale(p=grayscale_p),
                                v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.base(image).as_subclass(Tensor)
        tiles = []
        for index in range(self.grid * self.grid):
            row, col = divmod(index, self.grid)
            dy, dx = (int(torch.randint(0, self.cell - self.tile + 1, ())) for _ in range(2))
            y, x0 = row * self.cell + dy, col * self.cell + dx
            tile = x[:, y:y + self.tile, x0:x0 + self.tile]
            tiles.append(normalise_each(tile))
        label = int(torch.randint(0, len(self.permutations), ()))
        return {"views": [tiles[int(i)] for i in self.permutations[label]], "pretext_label": label}

    def __repr__(self) -> str:
        return (f"JigsawTiles(image_size={self.image_size}, grid={self.grid}, tile={self.tile}, "
                f"permutations={len(self.permutations)})")


NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))   # relative position k: (row, col)


class RelativePatches:
    """A centre patch and one of its 8 neighbours (context prediction, Doersch, Gupta & Efros, ICCV 2015): resize
    and crop to ``image_size``, a 3 x 3 grid of cells, in the centre cell and in neighbour ``k`` (drawn uniformly;
    :data:`NEIGHBOURS`, row-major around the centre) a patch of 2/3 of the cell (the paper's 96-pixel patches with
    48-pixel gaps) placed at the cell's centre with up to 7/96 of a patch of jitter, against the trivial shortcuts
    of edges and lines running across. Colour dropping (probability ``drop_colour_p``): two of the three channels
    replaced by faint noise, so chromatic aberration cannot locate a patch. Each patch normalised on its own.

    Returns ``{"views": [centre, neighbour], "pretext_label": k}``."""

    makes_views = True

    def __init__(self, image_size: int, patch_size: int | None = None, drop_colour_p: float = 1.0,
                 normalize: bool = True) -> None:
        self.image_size, self.cell = image_size, image_size // 3
        self.patch = patch_size or max(1, round(self.cell * 2 / 3))
        if self.patch > self.cell:
            raise ValueError(f"a {self.patch}-pixel patch does not fit a {self.cell}-pixel cell")
        self.jitter = min((self.cell - self.patch) // 2, max(0, round(self.patch * 7 / 96)))
        self.drop_colour_p, self.normalize = drop_colour_p, normalize
        self.base = v2.Compose([v2.Resize(image_size, antialias=True), v2.RandomCrop(image_size, pad_if_needed=True),
                                v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def cut(self, x: Tensor, row: int, col: int) -> Tensor:
        start = (self.cell - self.patch) // 2
        dy, dx = (int(torch.randint(-self.jitter, self.jitter + 1, ())) for _ in range(2))
        y, x0 = row * self.cell + start + dy, col * self.cell + start + dx
        patch = x[:, y:y + self.patch, x0:x0 + self.patch]
        if self.normalize:
            patch = normalise_each(patch)
        return patch

    def drop_colour(self, patch: Tensor) -> Tensor:
        if patch.shape[0] != 3 or float(torch.rand(())) >= self.drop_colour_p:
            return patch
        keep = int(torch.randint(0, 3, ()))
        noise = torch.randn_like(patch) * 0.01 * (patch[keep].std() + 1e-5)
        return torch.where(torch.arange(3)[:, None, None] == keep, patch, noise)

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.base(image).as_subclass(Tensor)
        label = int(torch.randint(0, len(NEIGHBOURS), ()))
        centre, neighbour = self.cut(x, 1, 1), self.cut(x, *NEIGHBOURS[label])
        return {"views": [self.drop_colour(centre), self.drop_colour(neighbour)], "pretext_label": label}

    def __repr__(self) -> str:
        return f"RelativePatches(image_size={self.image_size}, patch={self.patch}, jitter={self.jitter})"


def normalise_each(patches: Tensor) -> Tensor:
    """Patches (..., C, p, p), each channel of each patch to zero mean and unit standard deviation (+1e-5): what
    the jigsaw tiles and relative-position patches are trained on."""
    mean, std = patches.mean(dim=(-2, -1), keepdim=True), patches.std(dim=(-2, -1), keepdim=True)
    return (patches - mean) / (std + 1e-5)


def grid_readout(image_size: int, patch: int, grid: int = 3) -> Callable[[Tensor], Tensor]:
    """For evaluating a method trained on patches of a ``grid`` x ``grid`` grid of cells: images (B, C, H, W) ->
    (B, grid * grid, C, patch, patch), the patch at the centre of every cell (row-major, no jitter), each normalised
    on its own (:func:`normalise_each`), as the training patches were; the colour is kept."""
    cell = image_size // grid
    if patch > cell:
        raise ValueError(f"a {patch}-pixel patch does not fit a {cell}-pixel cell")
    start = (cell - patch) // 2

    def cut(images: Tensor) -> Tensor:
        if images.shape[-1] != image_size or images.shape[-2] != image_size:
            raise ValueError(f"grid readout of {image_size}-pixel images, got {tuple(images.shape[-2:])}")
        rows = [images[..., r * cell + start:r * cell + start + patch, c * cell + start:c * cell + start + patch]
                for r in range(grid) for c in range(grid)]
        return normalise_each(torch.stack(rows, dim=1))

    return cut


class PatchGrid:
    """A grid of overlapping patches of one image (CPC, van den Oord, Li & Vinyals, 2018, sec. 3.2: a 256-pixel
    image, randomly cropped from 300 pixels, flipped, in greyscale, cut into a 7 x 7 grid of 64-pixel patches with
    32 pixels of overlap; each patch a random 60-pixel subcrop padded back to 64). Scaled to ``image_size``: patches
    of a quarter of the image at a stride of half a patch (32 pixels -> 7 x 7 patches of 8 at stride 4), the image
    resized to 300/256 of ``image_size`` and randomly cropped, flipped with probability 0.5, greyscale with
    ``grayscale_p`` (the paper's: 1), normalised; each patch keeps a random ``60/64`` subwindow, zero (the mean)
    around it.

    Returns ``{"views": [patch of row i, column j at i * grid + j]}`` (row-major)."""

    makes_views = True

    def __init__(self, image_size: int = 32, patch_size: int | None = None, stride: int | None = None,
                 grayscale_p: float = 1.0, subcrop: float = 60 / 64, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.image_size = image_size
        self.patch = patch_size or max(2, image_size // 4)
        self.stride = stride or max(1, self.patch // 2)
        if self.patch > image_size:
            raise ValueError(f"a {self.patch}-pixel patch does not fit a {image_size}-pixel image")
        self.grid = (image_size - self.patch) // self.stride + 1
        self.keep = max(1, min(self.patch, round(self.patch * subcrop)))
        steps: list[Any] = [v2.Resize(round(image_size * 300 / 256), antialias=True), v2.RandomCrop(image_size),
                            v2.RandomHorizontalFlip(p=0.5)]
        if grayscale_p > 0:
            steps.append(v2.RandomGrayscale(p=grayscale_p))
        self.base = v2.Compose(steps + _to_tensor(mean, std))

    def cut(self, x: Tensor, row: int, col: int) -> Tensor:
        y, x0 = row * self.stride, col * self.stride
        patch = x[:, y:y + self.patch, x0:x0 + self.patch]
        if self.keep == self.patch:
            return patch.clone()
        dy, dx = (int(torch.randint(0, self.patch - self.keep + 1, ())) for _ in range(2))
        out = torch.zeros_like(patch)
        out[:, dy:dy + self.keep, dx:dx + self.keep] = patch[:, dy:dy + self.keep, dx:dx + self.keep]
        return out

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.base(image).as_subclass(Tensor)
        return {"views": [self.cut(x, *divmod(index, self.grid)) for index in range(self.grid * self.grid)]}

    def __repr__(self) -> str:
        return (f"PatchGrid(image_size={self.image_size}, grid={self.grid}, patch={self.patch}, "
                f"stride={self.stride}, keep={self.keep})")


def centre_square(image_size: int, fraction: float = 0.5) -> tuple[int, int]:
    """The central square of ``fraction`` of an ``image_size`` side: (start, side); rows and columns
    ``start:start + side`` (16 of 32 from 8 on)."""
    side = max(1, int(image_size * fraction))
    return (image_size - side) // 2, side


class CentreHole:
    """An image with its central square hidden (context encoders, Pathak et al., CVPR 2016): resize, centre crop,
    random crop with 1/8 padding and flip (light augmentation; the pretext is the hole), normalise, then the central
    square of ``fraction`` of the side (:func:`centre_square`, half: a quarter of the pixels) filled with 0 — the mean
    colour once normalised, as the paper fills it with the mean. ``overlap``: the hole is that many pixels smaller
    on every side than the square the target is (the paper's released code: 4 of a 64-pixel square, its
    ``overlapPred``; :func:`paper_overlap`), so the encoder sees the target's border, which the objective weighs
    more. ``augment=False``: resize and centre crop only.

    Returns ``{"views": [masked image (3, H, H)], "pretext_target": the original centre (3, s, s), normalised}``."""

    makes_views = True

    def __init__(self, image_size: int, fraction: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, augment: bool = True, overlap: int = 0) -> None:
        self.image_size, self.fraction = image_size, fraction
        self.start, self.side = centre_square(image_size, fraction)
        if not 0 <= overlap < (self.side + 1) // 2:
            raise ValueError(f"overlap {overlap} leaves no hole in a {self.side}-pixel square")
        self.overlap = overlap
        steps: list[Any] = [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
        if augment:
            steps += [v2.RandomCrop(image_size, padding=max(1, image_size // 8)), v2.RandomHorizontalFlip()]
        self.base = v2.Compose(steps + _to_tensor(mean, std))

    def __call__(self, image: Any) -> dict[str, Any]:
        x = self.base(image).as_subclass(Tensor)
        square = slice(self.start, self.start + self.side)
        hole = slice(self.start + self.overlap, self.start + self.side - self.overlap)
        target = x[:, square, square].clone()
        x = x.clone()
        x[:, hole, hole] = 0.0
        return {"views": [x], "pretext_target": target}

    def __repr__(self) -> str:
        return f"CentreHole(image_size={self.image_size}, square={self.side} from {self.start}, overlap={self.overlap})"


def paper_overlap(side: int) -> int:
    """The border of the target square the context encoder's input keeps: the paper's 4 pixels of a 64-pixel square,
    scaled (1 of CIFAR's 16, 0 below 16)."""
    return side // 16


def crop_flip_transform(image_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """The light CIFAR augmentation: resize the shorter side to ``image_size``, a random ``image_size`` crop of it
    padded by 1/8 of the side (4 pixels at 32), horizontal flip, normalise; no colour changes."""
    return v2.Compose([v2.Resize(image_size, antialias=True),
                       v2.RandomCrop(image_size, padding=max(1, image_size // 8), pad_if_needed=True),
                       v2.RandomHorizontalFlip()] + _to_tensor(mean, std))


def mae_transform(image_size: int = 32, scale: tuple[float, float] = (0.2, 1.0),
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """MAE's pretraining augmentation: bicubic random resized crop (0.2..1), horizontal flip, normalise."""
    return v2.Compose([v2.RandomResizedCrop(image_size, scale=scale, interpolation=BICUBIC, antialias=True),
                       v2.RandomHorizontalFlip()] + _to_tensor(mean, std))


def eval_transform(image_size: int = 32, crop_fraction: float = 1.0, interpolation: v2.InterpolationMode = BILINEAR,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Deterministic: resize the shorter side to ``image_size / crop_fraction``, centre-crop ``image_size``,
    normalise. ``crop_fraction=0.875`` is ImageNet's 256 -> 224; 1.0 (default) keeps all of a CIFAR image."""
    return v2.Compose([v2.Resize(round(image_size / crop_fraction), interpolation=interpolation, antialias=True),
                       v2.CenterCrop(image_size)] + _to_tensor(mean, std))


def denormalize(tensor: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(..., 3, H, W) normalised images back to [0, 1] for pictures (clamped)."""
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=tensor.dtype, device=tensor.device).view(shape)
    s = torch.tensor(std, dtype=tensor.dtype, device=tensor.device).view(shape)
    return (tensor * s + m).clamp(0, 1)


# -- Lab colour (CIE 1976 L*a*b*, sRGB primaries, D65 white): colorization's and CMC's colour space ---------------
_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_D65 = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPS, _KAPPA = (6 / 29) ** 3, 841 / 108   # the CIE constants: f(t) = t^(1/3) above _EPS, t * _KAPPA + 4/29 below


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> L*a*b* (L in [0, 100], a and b about [-110, 110]): the sRGB transfer curve
    undone, XYZ by the sRGB matrix, normalised by the D65 white, the CIE cube root (linear near black)."""
    x = rgb.clamp(0, 1)
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    m = _RGB_TO_XYZ.to(x.dtype).to(x.device)
    xyz = torch.einsum("ij,...jhw->...ihw", m, linear) / _D65.to(x.dtype).to(x.device).view(3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), xyz * _KAPPA + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor, clamp: bool = True) -> Tensor:
    """The inverse of :func:`rgb_to_lab`: (..., 3, H, W) L*a*b* -> sRGB, clamped to [0, 1] unless ``clamp`` is False
    (out-of-gamut colours then show as values outside it)."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    xyz = torch.where(f > 6 / 29, f ** 3, (f - 4 / 29) / _KAPPA) * _D65.to(lab.dtype).to(lab.device).view(3, 1, 1)
    linear = torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB_TO_XYZ).to(lab.dtype).to(lab.device), xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, linear * 12.92)
    return rgb.clamp(0, 1) if clamp else rgb


AB_GRID, AB_LIMIT = 10, 110   # colorization's quantisation of the ab plane: a grid of 10 over [-110, 110]

# The Q = 313 bins of Zhang, Isola & Efros (2016): the centres of the grid of 10 inside the convex hull of
# ImageNet's ab values, as the b range of each a (a -90, -80, ..., 100; both ends kept, b every 10).
PUBLISHED_AB_HULL = {-90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
                     -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
                     30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
                     90: (-110, 70), 100: (-90, 0)}


def published_ab_bins() -> Tensor:
    """(313, 2) float32 the paper's bin centres (a, b) (:data:`PUBLISHED_AB_HULL`), row-major over (a, b): the bins
    colorization classifies over by default."""
    rows = [(a, b) for a, (lo, hi) in sorted(PUBLISHED_AB_HULL.items()) for b in range(lo, hi + 1, AB_GRID)]
    return torch.tensor(rows, dtype=torch.float32)


def ab_bins(grid: int = AB_GRID, limit: int = AB_LIMIT, lightness_step: float = 0.1) -> Tensor:
    """(Q, 2) float32 the centres (a, b) of the ab grid (``grid`` apart over [-``limit``, ``limit``]) that are in
    the sRGB gamut for some lightness: a centre is kept when ``lab_to_rgb`` of (L, a, b) lies in [0, 1] for one L of
    0, ``lightness_step``, ..., 100. Row-major over (a, b). This criterion keeps 229 of the grid's centres, a subset of
    the paper's 313 (:func:`published_ab_bins`, the hull of ImageNet's colours, which also holds colours no sRGB
    pixel has)."""
    centres = torch.arange(-limit, limit + 1e-9, grid, dtype=torch.float64)
    a, b = torch.meshgrid(centres, centres, indexing="ij")
    lightness = torch.arange(0, 100 + 1e-9, lightness_step, dtype=torch.float64)
    n, m = len(centres), len(lightness)
    lab = torch.stack([lightness.view(-1, 1, 1).expand(m, n, n), a.expand(m, n, n), b.expand(m, n, n)], dim=1)
    rgb = lab_to_rgb(lab, clamp=False)
    keep = ((rgb >= -1e-9) & (rgb <= 1 + 1e-9)).all(dim=1).any(dim=0)
    return torch.stack([a[keep], b[keep]], dim=1).float()


def ab_bin_index(ab: Tensor, bins: Tensor) -> Tensor:
    """(..., 2, H, W) ab values -> (..., H, W) long: the index of the nearest bin centre of ``bins`` (Q, 2)."""
    flat = ab.movedim(-3, -1).to(bins.dtype)                       # (..., H, W, 2)
    return torch.cdist(flat.reshape(-1, 2), bins.to(flat.device)).argmin(dim=-1).reshape(flat.shape[:-1])


def lightness_view(lightness: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(..., 1, H, W) L (0..100) -> (..., 3, H, W) float32: the grey sRGB image of that lightness (a = b = 0, so its
    three channels are one, a monotone function of L), normalised by ``mean`` / ``std`` as any view is; an image
    encoder takes it as it takes colour images, whose colourless version it is."""
    lab = torch.cat([lightness, torch.zeros_like(lightness).expand(*lightness.shape[:-3], 2, *lightness.shape[-2:])],
                    dim=-3)
    grey = lab_to_rgb(lab.double())
    m = torch.tensor(mean, dtype=grey.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=grey.dtype).view(3, 1, 1)
    return ((grey - m.to(grey.device)) / s.to(grey.device)).float()


class LabColours:
    """Colorization's example (Zhang, Isola & Efros, ECCV 2016): a random crop (area ``scale``) and flip of the image,
    in Lab; the view is its lightness L alone (:func:`lightness_view`: the grey image, normalised, three equal
    channels), the target each cell's colour on a ``target_size`` grid (the paper predicts at 1/4 of the input
    side: 56 of 224; by default ``image_size // 4``): the cell's mean (a, b). The objective encodes it over its bins.

    Returns ``{"views": [grey view], "pretext_target": (2, target_size, target_size) float32}``."""

    makes_views = True

    def __init__(self, image_size: int, target_size: int | None = None, scale: tuple[float, float] = (0.5, 1.0),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.image_size, self.target_size = image_size, target_size or max(1, image_size // 4)
        if image_size % self.target_size:
            raise ValueError(f"a {self.target_size}-cell target grid does not divide a {image_size}-pixel image")
        self.mean, self.std = tuple(mean), tuple(std)
        self.base = v2.Compose([v2.RandomResizedCrop(image_size, scale=scale, antialias=True),
                                v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image: Any) -> dict[str, Any]:
        lab = rgb_to_lab(self.base(image).as_subclass(Tensor).double())
        cell = self.image_size // self.target_size
        ab = torch.nn.functional.avg_pool2d(lab[1:], cell)
        return {"views": [lightness_view(lab[:1], self.mean, self.std)], "pretext_target": ab.float()}

    def __repr__(self) -> str:
        return f"LabColours(image_size={self.image_size}, target_size={self.target_size})"


# CMC's normalisation of Lab (Tian, Krishnan & Isola, 2020; CMC's train_CMC.py): each channel's range to [-1, 1],
# L in [0, 100], a in [-86.183, 98.233], b in [-107.857, 94.478] (the extremes of sRGB's gamut)
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def lab_views(rgb: Tensor) -> list[Tensor]:
    """(..., 3, H, W) sRGB in [0, 1] -> CMC's two views of it, the L view and the ab view: the Lab image
    normalised by :data:`LAB_MEAN` / :data:`LAB_STD`, each view keeping its own channels and zero elsewhere, so
    both are 3-channel images that a 3-channel encoder reads — (L, 0, 0) and (0, a, b). A zero channel adds
    nothing to the first convolution's output and gives its weights no gradient: an encoder on the L view is
    a 1-channel network, one on the ab view a 2-channel network (the paper's split), in the given encoder's
    architecture."""
    lab = rgb_to_lab(rgb)
    mean = torch.tensor(LAB_MEAN, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    std = torch.tensor(LAB_STD, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    lab = (lab - mean) / std
    keep_l = torch.tensor([1.0, 0.0, 0.0], dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    return [lab * keep_l, lab * (1 - keep_l)]


def lab_views_of_normalised(pixels: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> list[Tensor]:
    """:func:`lab_views` of normalised RGB images (what ``eval_transform`` makes): an evaluation image's views."""
    return lab_views(denormalize(pixels, mean, std))


class LabViews:
    """CMC's L and ab views of one augmented crop (Tian et al., 2020, sec. 4.2; CMC's ImageNet loader): a random
    resized crop (area ``scale``, 0.2..1 there) and a horizontal flip drawn once, the crop in Lab
    (:func:`lab_views`). Returns ``{"views": [L view, ab view]}``."""

    makes_views = True

    def __init__(self, image_size: int, scale: tuple[float, float] = (0.2, 1.0)) -> None:
        self.image_size, self.scale = image_size, tuple(scale)
        self.base = v2.Compose([v2.RandomResizedCrop(image_size, scale=self.scale, interpolation=BILINEAR,
                                                     antialias=True),
                                v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, image: Any) -> dict[str, Any]:
        return {"views": lab_views(self.base(image).as_subclass(Tensor))}

    def __repr__(self) -> str:
        return f"LabViews(image_size={self.image_size}, scale={self.scale})"


class ViewDataset(Dataset):
    """Augmented views of an image data set (anything whose items are ``{"image": PIL, "label": int}``).

    ``__getitem__(i)`` -> ``{"views": [(3, h, w) float32 tensor per transform], "label": int, "seed": int}``;
    view ``v`` is drawn from ``example_seed(seed, epoch, i, stream=VIEW_STREAM + v)`` alone (with
    ``shared_draws``, every view from view 0's stream: the same crop, for views that differ only by a fixed
    transformation such as a rotation), and ``"seed"``
    (``example_seed(seed, epoch, i)``, stream 1) seeds the objective's own draws, as in ``SeededExamples``.
    Call :meth:`set_epoch` each epoch (the loader helpers do) so that views change between epochs.
    """

    def __init__(self, images: Any, transforms: Sequence[Callable] | Callable, seed: int = 0,
                 shared_draws: bool = False) -> None:
        self.images, self.seed, self.epoch, self.shared_draws = images, seed, 0, shared_draws
        self.transforms = [transforms] if callable(transforms) else list(transforms)
        if not self.transforms:
            raise ValueError("ViewDataset needs at least one transform")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def view(self, image: Any, index: int, v: int) -> Tensor:
        """View ``v`` of ``image`` (example ``index``), drawn from its own seed; the global RNG is restored."""
        return draw_view(self.transforms[v], image, self.seed, self.epoch, index, 0 if self.shared_draws else v)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        return stream_views(item["image"], item.get("label", -1), self.transforms, self.seed, self.epoch, index,
                            self.shared_draws)


def draw_view(transform: Callable, image: Any, seed: int, epoch: int, index: int, v: int) -> Tensor:
    """View ``v`` of example ``index`` in ``epoch``: ``transform(image)`` with torch's CPU generator seeded from
    ``example_seed(seed, epoch, index, stream=VIEW_STREAM + v)``; the caller's RNG is restored. (A streamed example's
    ``index`` is ``selfsup.streaming.record_index`` of its shard and position.)"""
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.default_generator.manual_seed(example_seed(seed, epoch, index, stream=VIEW_STREAM + v))
        out = transform(image)
    return out.as_subclass(Tensor) if isinstance(out, Tensor) else out


def stream_views(image: Any, label: int, transforms: Sequence[Callable], seed: int, epoch: int,
                 index: int, shared_draws: bool = False) -> dict[str, Any]:
    """Example ``index``'s views, as :class:`ViewDataset` gives them (a streamed one too): ``{"views", "label",
    "seed", "index"}``, and what a transform that makes every view in one draw returns beside them
    (``"pretext_label"``: a jigsaw permutation; ``"pretext_target"``: a tensor the views hide, such as colours).
    ``shared_draws``: every view from view 0's draws."""
    views = [draw_view(t, image, seed, epoch, index, 0 if shared_draws else v) for v, t in enumerate(transforms)]
    out = {"label": int(label), "seed": example_seed(seed, epoch, index), "index": int(index)}
    if len(views) == 1 and isinstance(views[0], dict):
        return {**out, **{k: v for k, v in views[0].items() if k in EXTRA_FIELDS}, "views": list(views[0]["views"])}
    return {**out, "views": views}


EXTRA_FIELDS = {"pretext_label": PRETEXT_LABELS, "pretext_target": PRETEXT_TARGETS}   # example field: batch key


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread (restored after). One image's ops are tiny: a 3x3 blur of a 32x32
    image took 0.3 ms on one thread and 20 ms on two busy cores. DataLoader workers are single-threaded
    already, so this also makes ``num_workers=0`` run the same kernels as the workers."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def collate_views(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"views": [{"pixel_values": (B, 3, h_v, w_v)} per view], "labels": (B,) long, "example_seeds": (B,)
    long, "example_index": (B,) long}``: each view a batch the image adapters read; with ``"pretext_labels"`` (B,)
    and ``"pretext_targets"`` (B, ...) when the views came with them (:data:`EXTRA_FIELDS`)."""
    num_views = len(examples[0]["views"])
    batch = {"views": [{"pixel_values": torch.stack([e["views"][v] for e in examples])} for v in range(num_views)],
             "labels": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
             "example_seeds": torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long),
             EXAMPLE_INDEX: torch.tensor([int(e.get("index", -1)) for e in examples], dtype=torch.long)}
    for field_name, key in EXTRA_FIELDS.items():
        if field_name in examples[0]:
            batch[key] = torch.stack([torch.as_tensor(e[field_name]) for e in examples])
    return batch


def collate_images(examples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """Single-view batches (MAE, evaluation) from a one-transform :class:`ViewDataset`:
    ``{"pixel_values": (B, 3, H, W), "labels": (B,) long, "example_seeds": (B,) long}``."""
    if len(examples[0]["views"]) != 1:
        raise ValueError(f"collate_images takes one view per example, got {len(examples[0]['views'])}; "
                         "use collate_views")
    batch = collate_views(examples)
    return {"pixel_values": batch["views"][0]["pixel_values"], "labels": batch["labels"],
            "example_seeds": batch["example_seeds"], EXAMPLE_INDEX: batch[EXAMPLE_INDEX]}
