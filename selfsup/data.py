"""Data plumbing shared by every modality: resumable, world-size-aware batching and file checks.

Every process sees the same sequence of *global* batches (``per_device_batch_size x num_processes``
examples, reshuffled each epoch from the seed) and takes its own slice of each, so a run on two processes
sees exactly the examples a one-process run sees with twice the per-device batch size. The position in the
data is counted in examples, so a run resumes at the same example even on a different number of processes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from selfsup.errors import SelfsupError
from selfsup.streaming import ShardStream


def example_seed(seed: int, epoch: int, index: int, stream: int = 1) -> int:
    """The seed of example ``index``'s random draws in ``epoch`` (masks, negatives, noise, augmentations): a
    function of (run seed, epoch, example index, ``stream``) only, so an example gets the same draws whichever
    process, batch or position it lands in, and a resumed run the same as a straight one. ``stream`` separates
    independent uses (0: the crop offset of :func:`example_rng`; 1: the objective's draws; 2+: free)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch, index, stream]).generate_state(1)[0])


VIEW_STREAM = 2   # view v of an example draws from example_seed(..., stream=VIEW_STREAM + v), in every modality


def view_generator(seed: int, epoch: int, index: int, view: int) -> torch.Generator:
    """The ``torch.Generator`` of view ``view`` of example ``index`` in ``epoch`` (two-view augmentations): the
    same view in any process, DataLoader worker, batch or order, and in a resumed run."""
    return torch.Generator().manual_seed(example_seed(seed, epoch, index, stream=VIEW_STREAM + view))


def example_rng(seed: int, epoch: int, index: int):
    """A NumPy generator for example ``index`` in ``epoch`` (random crops and the like), from the same triple."""
    import numpy as np

    return np.random.default_rng([seed, epoch, index])


class SeededExamples(Dataset):
    """A map-style data set whose examples carry their :func:`example_seed` (``"seed"``) for the epoch, so that
    an objective draws each example's mask from the example's own generator: the same global batch then gets the
    same draws however it is split across processes. The loader tells it the epoch (``set_epoch``)."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "seed": example_seed(self.seed, self.epoch, index)}


def length_grouped_order(lengths: Sequence[int | float], batch_size: int, seed: int = 0, epoch: int = 0,
                         mega: int = 50) -> list[int]:
    """An epoch's order that puts clips of similar length in the same batch (HF ``LengthGroupedSampler``).

    A permutation drawn from ``seed + epoch`` (as :class:`ShardedBatchSampler`) is cut into mega-batches of
    ``mega * batch_size``, each sorted longest first; the longest clip of all goes first, so an out-of-memory
    batch shows at once. With several processes pass the *global* batch size.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    size = max(1, mega * batch_size)
    megas = [sorted(order[i:i + size], key=lambda j: lengths[j], reverse=True) for i in range(0, len(order), size)]
    if megas:
        top = max(range(len(megas)), key=lambda m: lengths[megas[m][0]])
        megas[0][0], megas[top][0] = megas[top][0], megas[0][0]
    return [i for m in megas for i in m]


class ShardedBatchSampler(Sampler[list[int]]):
    """Yields this process's slice of each global batch of a map-style data set.

    Global batch g of epoch e holds ``perm_e[g*G:(g+1)*G]`` with ``G = batch_size * num_processes`` and
    ``perm_e`` a permutation drawn from ``seed + e``; process r takes ``[r*batch_size:(r+1)*batch_size]`` of it.
    The incomplete global batch at the end of an epoch is dropped, or with ``drop_last=False`` kept and split into
    near-equal slices, one per process (the first processes take one more when it does not divide), so an epoch
    sees every example once, as a DataLoader without ``drop_last`` does (GraphMAE's epochs). With ``lengths``
    the epoch's order is :func:`length_grouped_order` over global batches, so that little of each batch is
    padding.
    """

    def __init__(self, num_examples: int, batch_size: int, num_processes: int = 1, process_index: int = 0,
                 seed: int = 0, shuffle: bool = True, lengths: Sequence[int | float] | None = None,
                 drop_last: bool = True) -> None:
        self.num_examples, self.batch_size, self.lengths = num_examples, batch_size, lengths
        self.drop_last = drop_last or num_examples % (batch_size * num_processes) < num_processes
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start_batch = 0, 0
        if len(self) == 0:
            raise SelfsupError(
                f"only {num_examples} training examples: fewer than one global batch of "
                f"{batch_size * num_processes}; lower --per_device_train_batch_size or add data")

    def __len__(self) -> int:
        full = self.num_examples // (self.batch_size * self.num_processes)
        return full if self.drop_last else full + 1

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[int]]:
        gb = self.batch_size * self.num_processes
        if self.lengths is not None:
            order = length_grouped_order(self.lengths, gb, self.seed, self.epoch)
        elif self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=g).tolist()
        else:
            order = list(range(self.num_examples))
        full = self.num_examples // gb
        for b in range(self.start_batch, len(self)):
            if b < full:
                start = b * gb + self.process_index * self.batch_size
                yield order[start:start + self.batch_size]
            else:   # the incomplete last global batch, split near-equally
                rest = order[full * gb:]
                share, extra = divmod(len(rest), self.num_processes)
                start = self.process_index * share + min(self.process_index, extra)
                yield rest[start:start + share + int(self.process_index < extra)]


class ShardedStream(IterableDataset):
    """The streaming counterpart: groups a stream into global batches and yields this process's slice.

    ``make_stream(epoch)`` returns a fresh iterator over examples (shuffled by epoch if the caller wants).
    """

    def __init__(self, make_stream: Callable[[int], Iterable[Any]], batch_size: int, num_processes: int = 1,
                 process_index: int = 0, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.make_stream, self.batch_size = make_stream, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.collate_fn = collate_fn or (lambda x: x)
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[Any]:
        gb = self.batch_size * self.num_processes
        buf: list[Any] = []
        index = 0
        for example in self.make_stream(self.epoch):
            buf.append(example)
            if len(buf) == gb:
                if index >= self.start_batch:
                    lo = self.process_index * self.batch_size
                    yield self.collate_fn(buf[lo:lo + self.batch_size])
                index += 1
                buf = []


def make_train_loader(dataset: Any, collate_fn: Callable, batch_size: int, num_processes: int, process_index: int,
                      seed: int, num_workers: int = 0, lengths: Sequence[int | float] | None = None,
                      drop_last: bool = True) -> DataLoader:
    """A DataLoader over a map-style data set, or over a stream that batches itself (:class:`ShardedStream`, or
    ``selfsup.streaming.ShardStream``: each process reads its own shards; run in this process, ``num_workers`` 0).
    ``lengths`` (per example) turns on length-grouped batching; ``drop_last=False`` keeps each epoch's incomplete
    last global batch (:class:`ShardedBatchSampler`)."""
    # The loader gets a generator of its own: creating an iterator must not draw from the global RNG, or a
    # resumed run (which creates its iterator at another step) would see other masks and dropout.
    own = torch.Generator().manual_seed(seed)
    if isinstance(dataset, (ShardedStream, ShardStream)):
        return DataLoader(dataset, batch_size=None, generator=own)
    sampler = ShardedBatchSampler(len(dataset), batch_size, num_processes, process_index, seed, lengths=lengths,
                                  drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers,
                      persistent_workers=False, generator=own)


def set_loader_position(loader: DataLoader, epoch: int, start_batch: int) -> None:
    """Point a loader from :func:`make_train_loader` at global batch ``start_batch`` of ``epoch``; a data set
    with ``set_epoch`` (random crops drawn per epoch) is told the epoch too."""
    target = loader.batch_sampler if isinstance(loader.batch_sampler, ShardedBatchSampler) else loader.dataset
    target.set_position(epoch, start_batch)
    if hasattr(loader.dataset, "set_epoch") and not isinstance(loader.dataset, ShardedStream):
        loader.dataset.set_epoch(epoch)


def loader_length(loader: DataLoader) -> int | None:
    """Global batches per epoch, or None for a stream of unknown length."""
    return len(loader.batch_sampler) if isinstance(loader.batch_sampler, ShardedBatchSampler) else None


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def check_files(paths: Sequence[str | Path], extensions: Sequence[str] | None = None,
                what: str = "data file") -> list[Path]:
    """Each path must be an existing, non-empty file (with one of ``extensions``); raises a one-line error."""
    out = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise SelfsupError(f"{raw}: {what} not found")
        if path.is_dir():
            raise SelfsupError(f"{raw}: is a folder; pass folders with --train_dir")
        if path.stat().st_size == 0:
            raise SelfsupError(f"{raw}: {what} is empty")
        if extensions is not None and suffix_of(path) not in extensions:
            raise SelfsupError(f"{raw}: unsupported {what} type {suffix_of(path) or '(none)'}; "
                               f"expected one of {', '.join(extensions)}")
        out.append(path)
    return out


def suffix_of(path: Path) -> str:
    """Lower-case suffix, looking through compression suffixes (``a.jsonl.gz`` -> ``.jsonl``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def files_in_dir(folder: str | Path, extensions: Sequence[str]) -> list[Path]:
    """Every file below ``folder`` with one of ``extensions``, sorted; an error when there is none."""
    root = Path(folder)
    if not root.is_dir():
        raise SelfsupError(f"{folder}: folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and suffix_of(p) in extensions)
    if not files:
        raise SelfsupError(f"{folder}: no files of type {', '.join(extensions)} in this folder")
    return files

