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

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from selfsup.data import VIEW_STREAM, example_seed

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


class ViewDataset(Dataset):
    """Augmented views of an image data set (anything whose items are ``{"image": PIL, "label": int}``).

    ``__getitem__(i)`` -> ``{"views": [(3, h, w) float32 tensor per transform], "label": int, "seed": int}``;
    view ``v`` is drawn from ``example_seed(seed, epoch, i, stream=VIEW_STREAM + v)`` alone, and ``"seed"``
    (``example_seed(seed, epoch, i)``, stream 1) seeds the objective's own draws, as in ``SeededExamples``.
    Call :meth:`set_epoch` each epoch (the loader helpers do) so that views change between epochs.
    """

    def __init__(self, images: Any, transforms: Sequence[Callable] | Callable, seed: int = 0) -> None:
        self.images, self.seed, self.epoch = images, seed, 0
        self.transforms = [transforms] if callable(transforms) else list(transforms)
        if not self.transforms:
            raise ValueError("ViewDataset needs at least one transform")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def view(self, image: Any, index: int, v: int) -> Tensor:
        """View ``v`` of ``image`` (example ``index``), drawn from its own seed; the global RNG is restored."""
        return draw_view(self.transforms[v], image, self.seed, self.epoch, index, v)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        return {"views": [self.view(item["image"], index, v) for v in range(len(self.transforms))],
                "label": int(item.get("label", -1)), "seed": example_seed(self.seed, self.epoch, index)}


def draw_view(transform: Callable, image: Any, seed: int, epoch: int, index: int, v: int) -> Tensor:
    """View ``v`` of example ``index`` in ``epoch``: ``transform(image)`` with torch's CPU generator seeded from
    ``example_seed(seed, epoch, index, stream=VIEW_STREAM + v)``; the caller's RNG is restored. (A streamed example's
    ``index`` is ``selfsup.streaming.record_index`` of its shard and position.)"""
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.default_generator.manual_seed(example_seed(seed, epoch, index, stream=VIEW_STREAM + v))
        out = transform(image)
    return out.as_subclass(Tensor) if isinstance(out, Tensor) else out


def stream_views(image: Any, label: int, transforms: Sequence[Callable], seed: int, epoch: int,
                 index: int) -> dict[str, Any]:
    """A streamed example as :class:`ViewDataset` gives one: ``{"views", "label", "seed"}``."""
    return {"views": [draw_view(t, image, seed, epoch, index, v) for v, t in enumerate(transforms)],
            "label": int(label), "seed": example_seed(seed, epoch, index)}


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
    long}``: each view a batch the image adapters read."""
    num_views = len(examples[0]["views"])
    return {"views": [{"pixel_values": torch.stack([e["views"][v] for e in examples])} for v in range(num_views)],
            "labels": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
            "example_seeds": torch.tensor([int(e["seed"]) for e in examples], dtype=torch.long)}


def collate_images(examples: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
    """Single-view batches (MAE, evaluation) from a one-transform :class:`ViewDataset`:
    ``{"pixel_values": (B, 3, H, W), "labels": (B,) long, "example_seeds": (B,) long}``."""
    if len(examples[0]["views"]) != 1:
        raise ValueError(f"collate_images takes one view per example, got {len(examples[0]['views'])}; "
                         "use collate_views")
    batch = collate_views(examples)
    return {"pixel_values": batch["views"][0]["pixel_values"], "labels": batch["labels"], "example_seeds": batch["example_seeds"]}
