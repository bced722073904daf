"""Sharded streaming: each process reads only its own shards, and a checkpoint keeps its exact position.

A stream is a list of *shards* (files, or runs of files of a folder; the modality lists them) and a ``read``
function that yields a shard's records in a fixed order. Epoch ``e`` of process ``r`` of ``W``:

1. the shards are put in an order drawn from ``seed + e`` (the same on every process, a new one each epoch);
2. the first ``W * (S // W)`` shards of that order are dealt out whole, round-robin: process ``r`` reads shards
   ``r, r + W, ...`` of it and nothing else. When ``S`` is not a multiple of ``W`` the ``S % W`` shards left over
   are read by every process, each keeping the records at positions ``p`` with ``p % W == r``, so every record is
   still trained on once an epoch and the shares stay even, at the price of reading those few shards ``W``
   times. (``datasets.distributed.split_dataset_by_node`` does the second for *all* shards as soon as ``S % W``
   is not 0.) :func:`assignment_note` says which case a run is in;
3. the records a process keeps of a shard are cut into chunks of ``shuffle_chunk``; each chunk is permuted by a
   generator drawn from ``(seed, epoch, shard, chunk)``. That is a shuffle buffer which replays identically, so a
   resumed stream continues with the very records a straight one would have read;
4. ``prepare(record, shard, position, epoch)`` makes a training example of a record (decode, crop, views) and
   may return None for a bad one (skipped and counted in ``skipped``). An example's identity is
   :func:`record_index` ``(shard, position)``, its position in its shard's own order, so per-example seeds
   (``selfsup.data.example_seed``) are those of the record whichever process or order it lands in;
5. examples are collated into local batches of ``batch_size``; the incomplete last local batch of an epoch is
   dropped (fewer than ``batch_size`` records per process per epoch).

Each process runs its own epochs (processes with more records in an epoch simply take a step or two longer to
finish it; training counts steps, so nothing waits). The position after every yielded batch is
:meth:`ShardStream.state_dict`: plain JSON, ``{"epoch", "unit", "offset", "batches", ...}``: the shard of this
epoch's list being read and how many of its records are used. The trainer writes it per process into each
checkpoint (``data_state_{rank}.json``) and :meth:`ShardStream.load_state_dict` continues from exactly there;
resuming re-reads the current shard up to the offset (records are read, not decoded, until then).

The loader runs the stream in the training process (``num_workers=0``): DataLoader workers would each hold a
position of their own and interleave them in an order a resumed run cannot restore.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset

from selfsup.errors import SelfsupError

POSITION_BITS = 32   # record_index: the shard in the high bits, the position in the shard in the low 32


def record_index(shard: int, position: int) -> int:
    """The identity of record ``position`` of shard ``shard`` (in the shard's own order): what per-example seeds
    (``example_seed(seed, epoch, record_index(...))``) and the tests' example ids are made of."""
    if not 0 <= position < 1 << POSITION_BITS:
        raise SelfsupError(f"shard {shard}: more than 2**{POSITION_BITS} records; cut it into smaller shards")
    return (shard << POSITION_BITS) | position


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """Epoch ``epoch``'s order of the shards, the same on every process."""
    if not shuffle:
        return list(range(num_shards))
    return np.random.default_rng([seed, epoch]).permutation(num_shards).tolist()


def assign(num_shards: int, num_processes: int, process_index: int, seed: int, epoch: int,
           shuffle: bool = True) -> list[tuple[int, bool]]:
    """What process ``process_index`` reads in ``epoch``: ``(shard, whole)`` in reading order; ``whole`` False
    for a left-over shard of which it keeps every ``num_processes``-th record (see the module docstring)."""
    order = shard_order(num_shards, seed, epoch, shuffle)
    dealt = num_processes * (num_shards // num_processes)
    return [(s, True) for s in order[process_index:dealt:num_processes]] + [(s, False) for s in order[dealt:]]


def assignment_note(num_shards: int, num_processes: int) -> str | None:
    """A line for the log when the shards do not divide evenly over the processes, else None."""
    if num_processes == 1 or num_shards % num_processes == 0:
        return None
    left = num_shards % num_processes
    if num_shards < num_processes:
        return (f"{num_shards} shards for {num_processes} processes: every process reads every shard and keeps "
                f"1/{num_processes} of its records (each record is still used once an epoch); give at least "
                f"{num_processes} shards so that each process reads only its own")
    return (f"{num_shards} shards are not a multiple of {num_processes} processes: each process reads "
            f"{num_shards // num_processes} shards of its own, and the {left} left over each epoch are read by every "
            f"process, each keeping 1/{num_processes} of their records; a multiple of {num_processes} shards avoids "
            "the extra reading")


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class ShardStream(IterableDataset):
    """This process's batches of a sharded stream, with an exact, JSON-able position (module docstring).

    shards: what ``read`` takes (paths, lists of paths); their order is their identity, keep it sorted.
    read(shard) -> records in a fixed order. prepare(record, shard_index, position, epoch) -> example or None.
    collate(list of examples) -> batch.
    """

    def __init__(self, shards: Sequence[Any], read: Callable[[Any], Iterable[Any]],
                 prepare: Callable[[Any, int, int, int], Any], collate: Callable[[list[Any]], Any], batch_size: int,
                 num_processes: int = 1, process_index: int = 0, seed: int = 0, shuffle: bool = True,
                 shuffle_chunk: int = 10_000, source: str = "stream") -> None:
        if not shards:
            raise SelfsupError(f"{source}: no shards to stream")
        self.shards, self.read, self.prepare, self.collate = list(shards), read, prepare, collate
        self.batch_size, self.num_processes, self.process_index = batch_size, num_processes, process_index
        self.seed, self.shuffle, self.shuffle_chunk, self.source = seed, shuffle, max(1, shuffle_chunk), source
        self.epoch, self.unit, self.offset, self.batches = 0, 0, 0, 0
        self.skipped = 0
        self.note = assignment_note(len(self.shards), num_processes)

    # -- position -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: plain JSON."""
        return {"epoch": self.epoch, "unit": self.unit, "offset": self.offset, "batches": self.batches,
                "num_processes": self.num_processes, "process_index": self.process_index,
                "num_shards": len(self.shards), "seed": self.seed, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of the same stream on the same number of processes."""
        expected = {"num_processes": self.num_processes, "num_shards": len(self.shards), "seed": self.seed}
        for key, value in expected.items():
            if state.get(key) != value:
                raise SelfsupError(f"{self.source}: the checkpoint's stream position is for {key} {state.get(key)}, "
                                   f"this run has {value}; a stream resumes on the same shards, seed and number of "
                                   "processes")
        self.epoch, self.unit, self.offset = int(state["epoch"]), int(state["unit"]), int(state["offset"])
        self.batches, self.skipped = int(state["batches"]), int(state.get("skipped", 0))

    def set_position(self, epoch: int, start_batch: int) -> None:
        """What ``selfsup.data.set_loader_position`` calls: the stream keeps its own position (restored by
        :meth:`load_state_dict`), so only the start of an epoch can be asked for besides the current place."""
        if (epoch, start_batch) == (self.epoch, self.batches):
            return
        if start_batch != 0:
            raise SelfsupError(f"{self.source}: a stream cannot jump to batch {start_batch} of epoch {epoch}; "
                               "it resumes from the position its checkpoint holds")
        self.epoch, self.unit, self.offset, self.batches = epoch, 0, 0, 0

    # -- reading ------------------------------------------------------------------------------------------
    def units(self, epoch: int) -> list[tuple[int, bool]]:
        return assign(len(self.shards), self.num_processes, self.process_index, self.seed, epoch, self.shuffle)

    def unit_records(self, epoch: int, shard: int, whole: bool) -> Iterator[tuple[int, Any]]:
        """``(position, record)`` of the records this process keeps of ``shard``, in this epoch's order."""
        w, r = self.num_processes, self.process_index
        kept = ((p, rec) for p, rec in enumerate(self.read(self.shards[shard])) if whole or p % w == r)
        for c, chunk in enumerate(chunked(kept, self.shuffle_chunk)):
            if self.shuffle:
                perm = np.random.default_rng([self.seed, epoch, shard, c]).permutation(len(chunk))
                chunk = [chunk[i] for i in perm]
            yield from chunk

    def __iter__(self) -> Iterator[Any]:
        units = self.units(self.epoch)
        buf: list[Any] = []
        while self.unit < len(units):
            shard, whole = units[self.unit]
            for used, (position, record) in enumerate(self.unit_records(self.epoch, shard, whole), 1):
                if used <= self.offset:
                    continue                      # read again on resume, not decoded
                example = self.prepare(record, shard, position, self.epoch)
                if example is None:
                    self.skipped += 1
                else:
                    buf.append(example)
                if len(buf) == self.batch_size:
                    self.offset, self.batches = used, self.batches + 1
                    batch, buf = self.collate(buf), []
                    yield batch
            self.unit, self.offset = self.unit + 1, 0
        # the epoch is over (an incomplete local batch is dropped): the next pass reads the next epoch
        self.epoch, self.unit, self.offset, self.batches = self.epoch + 1, 0, 0, 0

    def warn_if_uneven(self, printer: Callable[[str], None] | None = None) -> None:
        """Say once, on the main process's log, when the shards do not divide evenly (:func:`assignment_note`)."""
        if self.note:
            (printer or (lambda m: warnings.warn(m, stacklevel=2)))(f"note: {self.source}: {self.note}")


def stream_loader(shards: Sequence[Any], read: Callable, prepare: Callable, collate: Callable, batch_size: int,
                  accelerator, seed: int, shuffle_chunk: int, source: str):
    """The training loader of this process's :class:`ShardStream` over ``shards`` (what every streamed recipe
    builds), saying once on the main process when the shards do not divide evenly."""
    from selfsup.data import make_train_loader

    stream = ShardStream(shards, read, prepare, collate, batch_size, accelerator.num_processes,
                         accelerator.process_index, seed, shuffle_chunk=shuffle_chunk, source=source)
    stream.warn_if_uneven(accelerator.print)
    return make_train_loader(stream, collate, batch_size, accelerator.num_processes, accelerator.process_index, seed)


__all__ = ["ShardStream", "stream_loader", "record_index", "shard_order", "assign", "assignment_note"]
