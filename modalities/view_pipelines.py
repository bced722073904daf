"""Every image method's data side by name: the views (and the labels or targets they carry) a method trains on.

A preset names its pipeline (``"transform"`` in a method's ``PRESETS``, beside its objective; ``"simclr"`` when it
names none) and the image recipe builds it with :func:`view_pipeline` from the flags' :class:`ViewOptions`. A method
whose data side is new adds one entry to :data:`PIPELINES` (its transform beside the others in ``image_views``); the
recipe does not change. A pipeline also says what its views imply for the objective's config (``objective``: rotation's
number of classes is the number of angles) and whether its views share their random draws (``shared_draws``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from selfsup.modalities.image_views import (IMAGENET_MEAN, IMAGENET_STD, ROTATION_SETS, CentreHole, JigsawTiles,
                                            LabColours, LabViews, PatchGrid, RelativePatches, byol_transforms,
                                            centre_square, crop_flip_transform, denormalize, grid_readout,
                                            hamming_permutations, lab_to_rgb, lab_views_of_normalised, SingleView,
                                            moco_v1_transform, multicrop_transforms, paper_overlap, published_ab_bins,
                                            rgb_to_lab, rotation_transforms, simclr_transform)


@dataclass
class ViewOptions:
    """What the recipe's flags give every pipeline. patch_size: a ViT's (tiles, patches and local crops are then
    a whole number of patches), None on a ResNet; rotations: a key of ``ROTATION_SETS``; jigsaw_permutations: the
    size of the permutation set; num_local_views / local_size / global_scale: multi-crop's; cell_fraction: the side of
    jigsaw's tiles and relative position's patches as a fraction of their grid cell (None: each paper's, 64/75 and
    2/3)."""

    image_size: int = 32
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    patch_size: int | None = None
    rotations: str = "4"
    jigsaw_permutations: int = 100
    num_local_views: int = 0
    local_size: int | None = None
    global_scale: tuple[float, float] = (0.4, 1.0)
    cell_fraction: float | None = None

    @property
    def norm(self) -> dict[str, Sequence[float]]:
        return {"mean": self.mean, "std": self.std}

    def whole_patches(self, size: int) -> int:
        """``size`` rounded down to a whole number of ViT patches (at least one); unchanged on a ResNet."""
        return max(self.patch_size, size // self.patch_size * self.patch_size) if self.patch_size else size


@dataclass
class ViewPipeline:
    """transforms: one per view, or one that makes every view (``makes_views``); shared_draws: every view from
    view 0's random draws (views that differ by a fixed transformation); objective: the config fields of the
    objective these views imply; render: the picture of a method that predicts what its views hid (colours, a
    masked region) — ``render(batch, predictions)``, given a collated batch of these views and the objective's
    ``pretext_predictions(batch)`` (shaped like ``batch["pretext_targets"]``), returns the picture's rows, each a
    (B, 3, H, W) tensor in [0, 1] (e.g. input / prediction / original); the recipe draws it at every evaluation.
    eval_views: for a method with one encoder per view of its own kind (CMC's L and ab), how a normalised
    evaluation image (B, 3, H, W) becomes its views (a list of tensors); the recipe then hands the kNN and the
    probes ``{"views": [{"pixel_values": view}, ...]}`` batches. None: the encoder reads the image itself.
    patch_readout: for a method trained on patches of the image (jigsaw, relative position), how a normalised
    evaluation image (B, 3, H, W) becomes the patches it is read through under ``--probe_readout patches``
    ((B, K, 3, p, p): :func:`modalities.image_views.grid_readout`, the features of the K patches averaged)."""

    transforms: list[Callable]
    shared_draws: bool = False
    objective: dict[str, Any] = field(default_factory=dict)
    render: Callable[[dict[str, Any], Any], list] | None = None
    eval_views: Callable[[Any], list] | None = None
    patch_readout: Callable[[Any], Any] | None = None


def local_view_size(o: ViewOptions) -> int:
    """Multi-crop's local size: ``local_size``, else DINO's 96/224 of ``image_size``; on a ViT rounded to a whole
    number of patches (its positions are interpolated to the smaller grid)."""
    size = o.local_size or max(1, round(o.image_size * 96 / 224))
    if o.patch_size:
        rounded = max(o.patch_size, round(size / o.patch_size) * o.patch_size)
        if o.local_size and rounded != size:
            raise ValueError(f"local size {size} is not a multiple of the ViT's patch size {o.patch_size}")
        size = rounded
    return size


@lru_cache(maxsize=8)
def _permutations(count: int) -> np.ndarray:
    return hamming_permutations(count)


def simclr(o: ViewOptions) -> ViewPipeline:
    """SimCLR's pair; at 64 pixels or less lightly's CIFAR-10 setting: colour jitter at half strength, no blur."""
    small = o.image_size <= 64
    view = simclr_transform(o.image_size, jitter=(0.2, 0.2, 0.2, 0.05) if small else (0.4, 0.4, 0.4, 0.1),
                            blur_p=0.0 if small else 0.5, **o.norm)
    return ViewPipeline([view, view])


def one_view(o: ViewOptions) -> ViewPipeline:
    """One view per example (instance discrimination, Wu et al., 2018): crop (0.2..1, lemniscate's), colour
    jitter 0.4 (p 0.8 here), grayscale 0.2, flip, no blur."""
    return ViewPipeline([SingleView(simclr_transform(o.image_size, scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.4),
                                                     blur_p=0.0, **o.norm))])


def crop_flip(o: ViewOptions) -> ViewPipeline:
    """One view per example with the light CIFAR augmentation (padded crop, flip; Deep InfoMax)."""
    return ViewPipeline([SingleView(crop_flip_transform(o.image_size, **o.norm))])


def multicrop(o: ViewOptions) -> ViewPipeline:
    return ViewPipeline(multicrop_transforms(o.image_size, local_view_size(o), num_local=o.num_local_views,
                                             global_scale=tuple(o.global_scale), **o.norm))


def rotation(o: ViewOptions) -> ViewPipeline:
    if o.rotations not in ROTATION_SETS:
        raise ValueError(f"unknown rotation set {o.rotations!r}; choose from {sorted(ROTATION_SETS)}")
    angles = ROTATION_SETS[o.rotations]
    return ViewPipeline(rotation_transforms(o.image_size, angles, **o.norm), shared_draws=True,
                        objective={"num_classes": len(angles)})


def cell_part(o: ViewOptions, paper: float) -> int:
    """The side of a tile / patch cut from a third of the image: ``cell_fraction`` of it (``paper``'s when None), at
    least one pixel, a whole number of a ViT's patches."""
    fraction = paper if o.cell_fraction is None else o.cell_fraction
    if not 0 < fraction <= 1:
        raise ValueError(f"cell_fraction is a fraction of a cell in (0, 1], got {fraction}")
    return o.whole_patches(max(1, round((o.image_size // 3) * fraction)))


def jigsaw(o: ViewOptions) -> ViewPipeline:
    """Tiles of 64/75 of a cell, the paper's (or ``cell_fraction``), each normalised on its own."""
    tile = cell_part(o, 64 / 75)
    return ViewPipeline([JigsawTiles(o.image_size, _permutations(o.jigsaw_permutations), tile_size=tile)],
                        objective={"num_permutations": o.jigsaw_permutations},
                        patch_readout=grid_readout(o.image_size, tile))


def relative_position(o: ViewOptions) -> ViewPipeline:
    """Patches of 2/3 of a cell, the paper's: a gap of half a patch (or ``cell_fraction``)."""
    patch = cell_part(o, 2 / 3)
    return ViewPipeline([RelativePatches(o.image_size, patch)], patch_readout=grid_readout(o.image_size, patch))


def cpc(o: ViewOptions, grayscale_p: float = 1.0) -> ViewPipeline:
    """CPC's grid of overlapping patches (a quarter of the image at half a patch's stride: 7 x 7), greyscale as in
    the paper (``cpc_colour``: in colour)."""
    return ViewPipeline([PatchGrid(o.image_size, o.whole_patches(max(2, o.image_size // 4)), grayscale_p=grayscale_p,
                                   **o.norm)])


def paste_centre(images: Any, region: Any) -> Any:
    """(B, C, H, W) images with their central square replaced by ``region`` (B, C, s, s) (a copy)."""
    start, side = (images.shape[-1] - region.shape[-1]) // 2, region.shape[-1]
    out = images.clone()
    out[..., start:start + side, start:start + side] = region.to(out.dtype)
    return out


def inpainting(o: ViewOptions) -> ViewPipeline:
    """Context encoders: the image with its central half-side square filled with the mean colour but for a border
    of :func:`paper_overlap` pixels; the target is the whole square, its border weighed more (the objective's
    ``overlap``, which these views set). The picture's rows: the masked input, the prediction pasted in, the
    original."""
    def render(batch: dict[str, Any], predictions: Any) -> list:
        masked = batch["views"][0]["pixel_values"]
        rows = [masked, paste_centre(masked, predictions), paste_centre(masked, batch["pretext_targets"])]
        return [denormalize(r.detach().float(), o.mean, o.std) for r in rows]

    overlap = paper_overlap(centre_square(o.image_size)[1])
    hole = CentreHole(o.image_size, **o.norm, overlap=overlap)
    return ViewPipeline([hole], render=render, objective={"overlap": hole.overlap})


def colour_rows(mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Colorization's picture: rows [the grey input, the input coloured by the predicted ab, the input coloured by
    the target's ab (each cell's mean colour, what the objective is asked for)], each (B, 3, H, W) in [0, 1]; the
    predictions and the target, both (B, 2, h, w), are upsampled (bilinear) to the image."""

    def render(batch: dict[str, Any], predictions: torch.Tensor) -> list[torch.Tensor]:
        grey = denormalize(batch["views"][0]["pixel_values"].float(), mean, std)
        lightness, size = rgb_to_lab(grey)[:, :1], grey.shape[-2:]

        def coloured(ab: torch.Tensor) -> torch.Tensor:
            ab = F.interpolate(ab.float(), size=size, mode="bilinear", align_corners=False)
            return lab_to_rgb(torch.cat([lightness, ab], dim=1))

        return [grey, coloured(predictions), coloured(batch["pretext_targets"].to(grey.device))]

    return render


def colorization(o: ViewOptions) -> ViewPipeline:
    """The lightness as the view, each cell's mean ab on a grid of 1/4 of the side as the target; the paper's 313
    bins' centres reach the objective's config."""
    bins = published_ab_bins()
    return ViewPipeline([LabColours(o.image_size, **o.norm)],
                        objective={"ab_bins": tuple(tuple(row) for row in bins.tolist())},
                        render=colour_rows(o.mean, o.std))


def cmc(o: ViewOptions) -> ViewPipeline:
    """CMC's L and ab views of one crop (0.2..1) and flip; an evaluation image's views are its L and ab too."""
    return ViewPipeline([LabViews(o.image_size)], objective={"num_views": 2, "view_names": ("L", "ab")},
                        eval_views=lambda pixels: lab_views_of_normalised(pixels, o.mean, o.std))


PIPELINES: dict[str, Callable[[ViewOptions], ViewPipeline]] = {
    "simclr": simclr,
    "byol": lambda o: ViewPipeline(byol_transforms(o.image_size, **o.norm)),
    "moco_v1": lambda o: ViewPipeline([moco_v1_transform(o.image_size, **o.norm)] * 2),
    "multicrop": multicrop,
    "one_view": one_view,
    "crop_flip": crop_flip,
    "rotation": rotation,
    "jigsaw": jigsaw,
    "relative_position": relative_position,
    "cpc": cpc,
    "cpc_colour": lambda o: cpc(o, grayscale_p=0.0),
    "inpainting": inpainting,
    "colorization": colorization,
    "cmc": cmc,
}


def view_pipeline(name: str, options: ViewOptions) -> ViewPipeline:
    """The pipeline ``name`` (:data:`PIPELINES`) built from ``options``; a clear error naming the choices."""
    if name not in PIPELINES:
        raise ValueError(f"unknown view pipeline {name!r}; choose from {sorted(PIPELINES)}")
    return PIPELINES[name](options)


__all__ = ["ViewOptions", "ViewPipeline", "PIPELINES", "view_pipeline", "local_view_size", "paste_centre"]
