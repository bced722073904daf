"""Helpers the image recipes (MAE, the two-view methods, CLIP) call, each one step of their ``main``, on typed
settings (:class:`ImageRun`): the image flags, the training images, the labelled images the kNN / linear probe
run on, the training loader of augmented views, the training set without augmentation an objective may read at each
epoch's start (:func:`epoch_images`), the probes and the images a picture shows. Nothing here calls back
into a recipe."""
from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from selfsup.config import RecipeSettings
from selfsup.data import make_train_loader, to_device
from selfsup.errors import SelfsupError
from selfsup.evaluate import PROBE_C_GRID, probe_encoders
from selfsup.modalities.image import picture_grid
from selfsup.modalities.image_data import ImageSet, load_images, split_images
from selfsup.modalities.image_views import (IMAGENET_MEAN, IMAGENET_STD, ViewDataset, collate_images,
                                            collate_views, eval_transform, stream_views)
from selfsup.modalities.shards import ImageStream
from selfsup.streaming import record_index, stream_loader as shard_loader
from selfsup.types import EXAMPLE_INDEX, Encoder


@dataclass
class ImageRun(RecipeSettings):
    """What the image recipes share: the run's settings and the flags of :func:`add_image_args` (with the data
    flags they read); a recipe's own settings extend it. The flags of the same names."""

    image_size: int = 32
    image_column: str | None = None
    label_column: str | None = None
    bad_images: str = "skip"
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    eval_dir: str | None = None
    eval_train_file: str | None = None
    eval_test_file: str | None = None
    eval_train_samples: int = 5000
    eval_test_samples: int = 1000
    knn_k: int = 200
    knn_temperature: float = 0.1
    no_linear_probe: bool = False
    probe_c: str = "cv"
    probe_layers: str = "last"
    probe_readout: str = "image"

    @property
    def probe_regularisation(self) -> float | tuple[float, ...]:
        """``--probe_c``: a number, or ``cv`` -- :data:`PROBE_C_GRID` searched by cross-validation on the fit images."""
        if self.probe_c == "cv":
            return PROBE_C_GRID
        try:
            return float(self.probe_c)
        except ValueError:
            raise SelfsupError(f"--probe_c takes a number or 'cv', got {self.probe_c!r}") from None


def probe_c_flag(value: str) -> str:
    """``--probe_c``'s check at parse time: ``cv`` or a positive number."""
    try:
        if value == "cv" or float(value) > 0:
            return value
    except ValueError:
        pass
    raise ArgumentTypeError(f"takes a positive number or 'cv', got {value!r}")


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
    e.add_argument("--probe_c", default="cv", type=probe_c_flag,
                   help="the linear probe's inverse L2 strength C, or 'cv': the C of 1e-4, 1e-3, ..., 1 that scores best in a "
                        "3-fold cross-validation on the fit images, chosen for each encoder alike")
    e.add_argument("--probe_layers", default="last", choices=["last", "all"],
                   help="'all': the kNN and the probe also on the stem's and every stage's (a ViT: every layer's) "
                        "output, pooled as the last and concatenated (knn/all_layers/..., probe/all_layers/...), "
                        "where a pretext task's features may sit below the last stage")
    e.add_argument("--probe_readout", default="image", choices=["image", "patches"],
                   help="'patches' (methods trained on patches: jigsaw, relative_position): the kNN and the probe read "
                        "an image as the mean of its 3 x 3 grid of patches' features, each patch of the training "
                        "size and normalised on its own, as the method saw them; random init alike")


def load_training_images(run: ImageRun, accelerator) -> tuple[ImageSet | ImageStream, str]:
    """The pretraining images from the data flags (scikit-learn's digits when none is given: the loader says so)
    and their source; with ``--streaming`` an :class:`ImageStream` (listed, not opened: each process opens only its
    shards). ``--max_train_samples N``: a seeded random N of them (:func:`sample`; image data sets are often sorted
    by class — CIFAR-10's files are — so the first N would be one class)."""
    if run.streaming:
        images = ImageStream(run.train_dir, run.train_file, run.dataset_name, run.image_column, run.label_column,
                             run.bad_images, run.stream_shard_size)
        accelerator.print(f"images: streaming {len(images)} from {images.source} in {len(images.shards)} shards")
        return images, images.source
    with accelerator.main_process_first():
        images = load_images(train_dir=run.train_dir, train_file=run.train_file, dataset_name=run.dataset_name,
                             dataset_config=run.dataset_config_name, image_column=run.image_column,
                             label_column=run.label_column, bad_images=run.bad_images)
    if run.max_train_samples:
        images = sample(images, run.max_train_samples, run.seed)
    shown = "scikit-learn's built-in digits (8x8, upscaled)" if images.source == "builtin:digits" else images.source
    accelerator.print(f"images: {len(images)} from {shown}" + (f" ({images.summary()})" if images.skipped else ""))
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


def labelled_images(run: ImageRun, train_images: ImageSet) -> tuple[ImageSet, ImageSet, str] | None:
    """(images the kNN / probe fit on, images they are scored on, source), or None when there are none.

    ``--eval_dir`` (its train and test splits), else ``--eval_train_file`` / ``--eval_test_file``, else a seeded
    20 % of the training images when they carry labels. Each side is a seeded sample of
    ``--eval_train_samples`` / ``--eval_test_samples`` images."""
    common = dict(image_column=run.image_column, label_column=run.label_column, bad_images=run.bad_images)
    if run.eval_dir:
        folder = Path(run.eval_dir)
        if not folder.is_dir():
            raise SelfsupError(f"{folder}: --eval_dir is not a folder")
        fit, score, source = (load_images(**find_split(folder, "train"), **common),
                              load_images(**find_split(folder, "test"), **common), str(folder))
    elif run.eval_train_file and run.eval_test_file:
        fit, score = (load_images(train_file=run.eval_train_file, **common),
                      load_images(train_file=run.eval_test_file, **common))
        source = run.eval_train_file
    elif isinstance(train_images, ImageStream):   # a stream holds no images out; the probes need --eval_dir
        return None
    elif train_images.num_classes > 1 and min(train_images.labels) >= 0:
        fit, score = split_images(train_images, 0.2, run.seed)
        source = f"{train_images.source} (a held-out 20 %)"
    else:
        return None
    for part, name in ((fit, "fit"), (score, "score")):
        if min(part.labels, default=-1) < 0:
            raise SelfsupError(f"{part.source}: the evaluation images to {name} on have no labels")
    return sample(fit, run.eval_train_samples, run.seed), sample(score, run.eval_test_samples, run.seed), source


def view_loader(images: ImageSet, transforms: Sequence[Callable], run: ImageRun, batch_size: int, accelerator,
                shared_draws: bool = False):
    """The training loader of ``batch_size`` examples per process: each example's views drawn from its own seed
    (N processes train as one; streamed: each process its own shards, the seeds from each image's shard and
    position); ``shared_draws``: every view from the same draws (views that differ by a fixed transformation,
    RotNet's rotations)."""
    if isinstance(images, ImageStream):
        return stream_loader(images, transforms, run, batch_size, accelerator, shared_draws)
    data = ViewDataset(images, list(transforms), seed=run.seed, shared_draws=shared_draws)
    collate = views_collate(transforms)
    global_batch = batch_size * accelerator.num_processes
    if len(data) < global_batch:
        raise SelfsupError(f"{images.source}: {len(data)} images are fewer than one global batch of {global_batch}")
    return make_train_loader(data, collate, batch_size, accelerator.num_processes, accelerator.process_index,
                             run.seed, run.dataloader_num_workers)


def epoch_images(images: ImageSet | ImageStream, run: ImageRun, batch_size: int, accelerator):
    """What ``Objective.on_epoch_start`` receives (DeepCluster clusters it): the training images without
    augmentation (``eval_transform``), this process's share (every ``num_processes``-th image from its index on),
    in batches of ``batch_size`` ``{"pixel_values", EXAMPLE_INDEX}`` (the index the training batches give); a loader
    of its own generator (walking it draws nothing from the global RNG). None for a stream (no whole set to
    walk)."""
    if isinstance(images, ImageStream):
        return None
    from torch.utils.data import DataLoader, Subset

    data = ViewDataset(images, eval_transform(run.image_size, mean=run.image_mean, std=run.image_std), seed=run.seed)
    share = Subset(data, range(accelerator.process_index, len(data), accelerator.num_processes))

    def collate(examples):
        batch = collate_images(examples)
        return {"pixel_values": batch["pixel_values"], EXAMPLE_INDEX: batch[EXAMPLE_INDEX]}

    return DataLoader(share, batch_size=batch_size, shuffle=False, collate_fn=collate,
                      num_workers=run.dataloader_num_workers, generator=torch.Generator().manual_seed(run.seed))


def views_collate(transforms: Sequence[Callable]) -> Callable:
    """Batches of several views (or of a transform that makes them all, jigsaw), else of single images."""
    several = len(transforms) > 1 or getattr(transforms[0], "makes_views", False)
    return collate_views if several else collate_images


def stream_loader(images: ImageStream, transforms: Sequence[Callable], run: ImageRun, batch_size: int, accelerator,
                  shared_draws: bool = False):
    """The loader of a ``ShardStream`` of augmented views over the shards of ``images``."""
    transforms = list(transforms)

    def prepare(entry, shard: int, position: int, epoch: int):
        image = images.decode(entry)
        if image is None:
            return None
        return stream_views(image, entry.label, transforms, run.seed, epoch, record_index(shard, position),
                            shared_draws)

    return shard_loader(images.shards, images.read, prepare, views_collate(transforms), batch_size, accelerator,
                         run.seed, run.stream_shuffle_chunk, images.source)


class EvalImages:
    """Labelled images turned once into normalised tensors (``eval_transform``: no randomness), then batched.
    ``views``: a view pipeline's ``eval_views`` (an encoder per view of its own kind, CMC's): the batches are then
    ``{"views": [{"pixel_values": view}, ...]}``, the images' views."""

    def __init__(self, images: ImageSet, run: ImageRun, views: Callable | None = None) -> None:
        transform = eval_transform(run.image_size, mean=run.image_mean, std=run.image_std)
        self.pixels = torch.stack([transform(images[i]["image"]).as_subclass(torch.Tensor) for i in range(len(images))])
        self.labels = images.labels
        self.views = views

    def batches(self, batch_size: int):
        for i in range(0, len(self.pixels), batch_size):
            pixels = self.pixels[i:i + batch_size]
            if self.views is None:
                yield {"pixel_values": pixels}
            else:
                yield {"views": [{"pixel_values": v} for v in self.views(pixels)]}


class PatchAverage(torch.nn.Module):
    """An encoder read through patches (``--probe_readout patches``): ``cut`` turns the (B, C, H, W) images of a
    batch into (B, K, C, p, p) patches (a view pipeline's ``patch_readout``), the encoder pools each, and an image's
    features are the mean over its K patches (every view of :meth:`Encoder.pooled_views` alike)."""

    def __init__(self, encoder: Encoder, cut: Callable) -> None:
        super().__init__()
        self.encoder, self.cut = encoder, cut

    @torch.no_grad()
    def pooled_views(self, batch, views=("last",)) -> dict[str, torch.Tensor]:
        patches = self.cut(batch["pixel_values"])
        b, k = patches.shape[:2]
        pooled = self.encoder.pooled_views({"pixel_values": patches.flatten(0, 1)}, views)
        return {name: f.view(b, k, -1).mean(dim=1) for name, f in pooled.items()}


def read_through(encoders: dict[str, Encoder | list[Encoder]], cut: Callable | None):
    """``encoders`` as they are (``cut`` None), or each wrapped in :class:`PatchAverage`."""
    if cut is None:
        return encoders
    return {k: [PatchAverage(e, cut) for e in v] if isinstance(v, list) else PatchAverage(v, cut)
            for k, v in encoders.items()}


def patch_readout(run: ImageRun, pipeline) -> Callable | None:
    """The readout of ``--probe_readout``: None for whole images, else the view pipeline's ``patch_readout``
    (an error for a method trained on whole images)."""
    if run.probe_readout == "image":
        return None
    if getattr(pipeline, "patch_readout", None) is None:
        raise SelfsupError(f"--probe_readout patches: {getattr(run, 'method', 'this method')} is trained on whole "
                           "images, not on patches (the methods on patches: jigsaw, relative_position)")
    return pipeline.patch_readout


def image_probe(encoders: dict[str, Encoder | list[Encoder]], fit: EvalImages, score: EvalImages, run: ImageRun,
                device: torch.device, linear: bool | None = None, readout: Callable | None = None
                ) -> dict[str, float]:
    """kNN (cosine, ``--knn_k`` neighbours, exp(sim / ``--knn_temperature``) votes) and, unless
    ``--no_linear_probe``, a linear probe on frozen pooled features, for each encoder
    (``{"": trained, "random_init_": [fresh, ...]}``); ``readout``: a :func:`patch_readout` to read every encoder
    through patches."""
    if readout is None and run.probe_readout != "image":
        patch_readout(run, None)            # the one-line error: no patches to read through
    encoders = read_through(encoders, readout)
    sets = {"train": fit, "test": score}
    return probe_encoders(encoders, lambda split: sets[split].batches(run.per_device_eval_batch_size),
                          fit.labels, score.labels, device, knn_k=run.knn_k, knn_temperature=run.knn_temperature,
                          linear=not run.no_linear_probe if linear is None else linear,
                          probe_c=run.probe_regularisation, all_layers=run.probe_layers == "all")


def knn_monitor(encoder_of: Callable[[Any], Encoder], fit: EvalImages, score: EvalImages, run: ImageRun,
                device: torch.device, readout: Callable | None = None) -> Callable[[Any], dict[str, float]]:
    """An ``eval_fn`` for the trainer: the kNN accuracy of the objective's encoder (``encoder_of(objective)``)
    on the labelled images, at every ``--eval_steps``, read as the final probes read it (``readout``)."""

    def eval_fn(objective) -> dict[str, float]:
        return {f"eval/{k}": v for k, v in image_probe({"": encoder_of(objective)}, fit, score, run, device,
                                                      linear=False, readout=readout).items()}

    return eval_fn


# -- pictures ------------------------------------------------------------------------------------------------------
def spread_over_classes(labels: Sequence[int], n: int, seed: int) -> list[int]:
    """Indices of ``n`` examples (all of them when there are fewer) for a picture, drawn from ``seed``: one of each
    class in turn (round robin; the classes and each class's examples in an order drawn from the seed) when
    ``labels`` are known (>= 0), else a random sample. Data sets are often sorted by class, so the first ``n``
    would show one class."""
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(labels))
    if not len(labels) or min(labels) < 0:
        return torch.randperm(len(labels), generator=g)[:n].tolist()
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    classes = [sorted(by_class)[k] for k in torch.randperm(len(by_class), generator=g).tolist()]
    queues = [[by_class[c][k] for k in torch.randperm(len(by_class[c]), generator=g).tolist()] for c in classes]
    picked: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        picked += [q[turn] for q in queues if turn < len(q)]
        if len(picked) >= n:
            break
    return picked[:n]


def picture_pixels(score: EvalImages | None, images: ImageSet, run: ImageRun, n: int) -> torch.Tensor:
    """(n, C, H, W) normalised images a picture shows (MAE's reconstructions): a seeded sample across the classes
    of the labelled held-out images (:func:`spread_over_classes`), else a seeded random sample of the training
    images; ``eval_transform``, no augmentation."""
    if score is not None:
        return score.pixels[spread_over_classes(score.labels, n, run.seed)]
    if isinstance(images, ImageStream):     # the first good images of the first shard: a stream is not sampled
        return EvalImages(images.head(n), run).pixels
    return EvalImages(sample(images, n, run.seed), run).pixels


def pretext_picture(render: Callable, transforms: Sequence[Callable], images: ImageSet, run: ImageRun,
                    device: torch.device, shared_draws: bool = False, n: int = 8,
                    path: str | Path | None = None) -> Callable[[Any], dict[str, Any]]:
    """An ``eval_fn`` part for a method that predicts what its views hid: the same ``n`` training images (a seeded
    sample; a stream's first ones), their views drawn once from the run's seed, the objective's
    ``pretext_predictions`` on them drawn by the pipeline's ``render`` into rows (:func:`picture_grid`), written
    to ``path`` and logged as ``images/pretext``."""
    chosen = images.head(n) if isinstance(images, ImageStream) else sample(images, n, run.seed)
    data = ViewDataset(chosen, list(transforms), seed=run.seed, shared_draws=shared_draws)
    batch = views_collate(transforms)([data[i] for i in range(len(data))])

    def eval_fn(objective) -> dict[str, Any]:
        on_device = to_device(batch, device)
        rows = render(on_device, objective.pretext_predictions(on_device))
        return {"images/pretext": picture_grid(rows, path, max_images=n).image}

    return eval_fn


__all__ = ["ImageRun", "add_image_args", "load_training_images", "sample", "find_split", "labelled_images",
           "view_loader", "EvalImages", "image_probe", "knn_monitor", "spread_over_classes", "picture_pixels",
           "pretext_picture", "PatchAverage", "patch_readout", "read_through"]
