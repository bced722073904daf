"""Helpers the image recipes (MAE, the two-view methods) call, each one step of their ``main``: the image flags,
the training images, the labelled images the kNN / linear probe run on, the training loader of augmented views,
and the probes. Nothing here calls back into a recipe."""
from __future__ import annotations

from argparse import ArgumentParser, Namespace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from selfsup.data import make_train_loader
from selfsup.errors import SelfsupError
from selfsup.evaluate import probe_encoders
from selfsup.modalities.image_data import ImageSet, load_images, split_images
from selfsup.modalities.image_views import (IMAGENET_MEAN, IMAGENET_STD, ViewDataset, collate_images,
                                            collate_views, eval_transform)
from selfsup.types import Encoder


def add_image_args(p: ArgumentParser) -> None:
    g = p.add_argument_group("images")
    g.add_argument("--image_size", type=int, default=32, help="square side the views are cropped / resized to")
    g.add_argument("--image_column", default=None, help="column holding the images (default: guessed)")
    g.add_argument("--label_column", default=None, help="column holding the labels (default: guessed)")
    g.add_argument("--bad_images", default="skip", choices=["skip", "error"],
                   help="an unreadable, empty, tiny or huge image: skip and count it, or stop naming it")
    g.add_argument("--image_mean", type=float, nargs=3, default=list(IMAGENET_MEAN), help="normalisation mean")
    g.add_argument("--image_std", type=float, nargs=3, default=list(IMAGENET_STD), help="normalisation std")
    e = p.add_argument_group("image evaluation (kNN and linear probe on frozen features)")
    e.add_argument("--eval_dir", default=None,
                   help="labelled images: a folder holding train/test parquet files or train/ and test/ class "
                        "folders (e.g. ../shared/data/images/cifar10); default: a held-out part of the training "
                        "images when they have labels")
    e.add_argument("--eval_train_samples", type=int, default=5000, help="labelled images the kNN / probe fit on")
    e.add_argument("--eval_test_samples", type=int, default=1000, help="labelled images they are scored on")
    e.add_argument("--knn_k", type=int, default=200, help="kNN neighbours (lightly's benchmarks: 200)")
    e.add_argument("--knn_temperature", type=float, default=0.1, help="kNN vote temperature (lightly's: 0.1)")
    e.add_argument("--no_linear_probe", action="store_true", help="report the kNN only")


def load_training_images(args: Namespace, accelerator) -> tuple[ImageSet, str]:
    """The pretraining images from the data flags (scikit-learn's digits when none is given) and their source."""
    with accelerator.main_process_first():
        images = load_images(train_dir=args.train_dir, train_file=args.train_file, dataset_name=args.dataset_name,
                             dataset_config=args.dataset_config_name, image_column=args.image_column,
                             label_column=args.label_column, bad_images=args.bad_images,
                             max_examples=args.max_train_samples)
    accelerator.print(f"images: {len(images)} from {images.source}"
                      + (f" ({images.summary()})" if images.skipped else ""))
    if images.source == "builtin:digits":
        accelerator.print("no image data given: training on scikit-learn's built-in digits (8x8, upscaled)")
    return images, images.source


def sample(images: ImageSet, n: int, seed: int) -> ImageSet:
    """A seeded random subset of ``n`` images (all of them when ``n`` >= their number); data sets are often
    sorted by class, so the first ``n`` would not do."""
    if n <= 0 or n >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images.subset(sorted(order.tolist()))


def find_split(folder: Path, split: str) -> dict[str, Any]:
    """``load_images`` arguments for ``folder``'s ``split``: ``split.parquet`` / ``split-*.parquet`` files, or a
    ``split/`` folder of class folders."""
    files = sorted(folder.glob(f"{split}.parquet")) + sorted(folder.glob(f"{split}-*.parquet"))
    if files:
        return {"train_file": [str(f) for f in files]}
    if (folder / split).is_dir():
        return {"train_dir": str(folder / split)}
    raise SelfsupError(f"{folder}: no {split}.parquet and no {split}/ folder for the evaluation images")


def labelled_images(args: Namespace, train_images: ImageSet) -> tuple[ImageSet, ImageSet, str] | None:
    """(images the kNN / probe fit on, images they are scored on, source), or None when there are none.

    ``--eval_dir`` (its train and test splits), else ``--eval_train_file`` / ``--eval_test_file``, else a seeded
    20 % of the training images when they carry labels. Each side is a seeded sample of
    ``--eval_train_samples`` / ``--eval_test_samples`` images."""
    common = dict(image_column=args.image_column, label_column=args.label_column, bad_images=args.bad_images)
    if args.eval_dir:
        folder = Path(args.eval_dir)
        if not folder.is_dir():
            raise SelfsupError(f"{folder}: --eval_dir is not a folder")
        fit, score, source = (load_images(**find_split(folder, "train"), **common),
                              load_images(**find_split(folder, "test"), **common), str(folder))
    elif args.eval_train_file and args.eval_test_file:
        fit, score = (load_images(train_file=args.eval_train_file, **common),
                      load_images(train_file=args.eval_test_file, **common))
        source = args.eval_train_file
    elif train_images.num_classes > 1 and min(train_images.labels) >= 0:
        fit, score = split_images(train_images, 0.2, args.seed)
        source = f"{train_images.source} (a held-out 20 %)"
    else:
        return None
    for part, name in ((fit, "fit"), (score, "score")):
        if min(part.labels, default=-1) < 0:
            raise SelfsupError(f"{part.source}: the evaluation images to {name} on have no labels")
    return sample(fit, args.eval_train_samples, args.seed), sample(score, args.eval_test_samples, args.seed), source


def view_loader(images: ImageSet, transforms: Sequence[Callable], args: Namespace, accelerator):
    """The training loader: each example's views drawn from its own seed (N processes train as one)."""
    data = ViewDataset(images, list(transforms), seed=args.seed)
    collate = collate_views if len(transforms) > 1 else collate_images
    global_batch = args.per_device_train_batch_size * accelerator.num_processes
    if len(data) < global_batch:
        raise SelfsupError(f"{images.source}: {len(data)} images are fewer than one global batch of {global_batch}")
    return make_train_loader(data, collate, args.per_device_train_batch_size, accelerator.num_processes,
                             accelerator.process_index, args.seed, args.dataloader_num_workers)


class EvalImages:
    """Labelled images turned once into normalised tensors (``eval_transform``: no randomness), then batched."""

    def __init__(self, images: ImageSet, args: Namespace) -> None:
        transform = eval_transform(args.image_size, mean=args.image_mean, std=args.image_std)
        self.pixels = torch.stack([transform(images[i]["image"]).as_subclass(torch.Tensor) for i in range(len(images))])
        self.labels = images.labels

    def batches(self, batch_size: int):
        for i in range(0, len(self.pixels), batch_size):
            yield {"pixel_values": self.pixels[i:i + batch_size]}


def image_probe(encoders: dict[str, Encoder | list[Encoder]], fit: EvalImages, score: EvalImages, args: Namespace,
                device: torch.device, linear: bool | None = None) -> dict[str, float]:
    """kNN (cosine, ``--knn_k`` neighbours, exp(sim / ``--knn_temperature``) votes) and, unless
    ``--no_linear_probe``, a linear probe on frozen pooled features, for each encoder
    (``{"": trained, "random_init_": [fresh, ...]}``)."""
    sets = {"train": fit, "test": score}
    return probe_encoders(encoders, lambda split: sets[split].batches(args.per_device_eval_batch_size),
                          fit.labels, score.labels, device, knn_k=args.knn_k, knn_temperature=args.knn_temperature,
                          linear=not args.no_linear_probe if linear is None else linear)


def knn_monitor(encoder_of: Callable[[Any], Encoder], fit: EvalImages, score: EvalImages, args: Namespace,
                device: torch.device) -> Callable[[Any], dict[str, float]]:
    """An ``eval_fn`` for the trainer: the kNN accuracy of the objective's encoder (``encoder_of(objective)``)
    on the labelled images, at every ``--eval_steps``."""

    def eval_fn(objective) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in image_probe({"": encoder_of(objective)}, fit, score, args, device,
                                                      linear=False).items()}

    return eval_fn
