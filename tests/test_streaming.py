"""Sharded streaming (``selfsup.streaming``): each process reads only its shards, every record is used once an
epoch, and a checkpoint's per-process position resumes exactly, also after a SIGKILL on two processes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from selfsup.streaming import ShardStream, assign
from tests.conftest import ROOT
from tests.launch import torchrun, torchrun_command

WORKER = ROOT / "tests" / "stream_worker.py"


def toy_stream(shards, world, rank, batch=3, seed=0, chunk=4, log=None):
    """A stream over ``shards`` (lists of records); examples are ``(shard, position, record)``; ``log`` collects
    the shards actually opened."""
    def read(shard):
        if log is not None:
            log.append(shard)
        return iter(shards[shard])

    return ShardStream(list(range(len(shards))), read, lambda rec, s, p, e: (s, p, rec), list, batch, world, rank,
                       seed=seed, shuffle_chunk=chunk)


def epoch_of(stream):
    return [ex for batch in stream for ex in batch]


@pytest.mark.parametrize("num_shards,world", [(4, 2), (5, 2), (7, 3), (1, 2)])
def test_every_record_once_an_epoch_and_whole_shards_only_to_their_owner(num_shards, world):
    shards = [[f"{s}:{p}" for p in range(6)] for s in range(num_shards)]
    for epoch in range(2):
        seen, opened = [], {}
        for rank in range(world):
            log = []
            stream = toy_stream(shards, world, rank, batch=1, chunk=4, log=log)
            stream.set_position(epoch, 0)
            got = epoch_of(stream)
            seen += [rec for _, _, rec in got]
            opened[rank] = log
            units = assign(num_shards, world, rank, 0, epoch)
            whole = {s for s, w in units if w}
            # whole shards are read by their owner only; a left-over shard gives each process its own positions
            for s, p, _ in got:
                assert s in whole or p % world == rank
            assert set(log) == {s for s, _ in units}
        assert sorted(seen) == sorted(r for s in shards for r in s), "a record was skipped or repeated"
        owners = Counter(s for rank in opened for s in opened[rank])
        dealt = world * (num_shards // world)
        assert sum(1 for n in owners.values() if n == 1) == dealt   # only the left-over shards are read by all
    # the shard order changes between epochs
    if num_shards >= 4:
        assert assign(num_shards, world, 0, 0, 0) != assign(num_shards, world, 0, 0, 1)


def test_state_dict_resumes_mid_shard_exactly_and_is_plain_json():
    shards = [[f"{s}:{p}" for p in range(10)] for s in range(3)]
    straight = toy_stream(shards, 1, 0, batch=4)
    reference = [list(b) for b in straight] + [list(b) for b in straight]   # two epochs
    first = toy_stream(shards, 1, 0, batch=4)
    it = iter(first)
    head = [list(next(it)) for _ in range(5)]                 # stop in the middle of a shard
    state = json.loads(json.dumps(first.state_dict()))
    assert state["offset"] not in (0, 10) or state["unit"] > 0
    resumed = toy_stream(shards, 1, 0, batch=4)
    resumed.load_state_dict(state)
    tail = [list(b) for b in resumed] + [list(b) for b in resumed]
    assert head + tail == reference
    assert len(reference) == 2 * (30 // 4) and reference[:7] != reference[7:]   # epochs differ in order
    other = toy_stream(shards, 2, 0, batch=4)
    with pytest.raises(Exception, match="same shards, seed and number of processes"):
        other.load_state_dict(state)


def write_shards(folder: Path, num_shards: int, per_shard: int) -> dict[int, int]:
    """``num_shards`` jsonl shards of ``per_shard`` records; returns id -> shard."""
    folder.mkdir(parents=True)
    where = {}
    for s in range(num_shards):
        with open(folder / f"part-{s:03d}.jsonl", "w") as f:
            for p in range(per_shard):
                i = 1000 * s + p
                where[i] = s
                f.write(json.dumps({"id": i, "x": [0.1 * p, 0.2, -0.1 * s, 1.0]}) + "\n")
    return where


def read_log(out: Path, rank: int, up_to: int | None = None, after: int = 0) -> dict[int, list[int]]:
    rows = [json.loads(line) for line in (out / f"ids_{rank}.jsonl").read_text().splitlines()]
    return {r["step"]: r["ids"] for r in rows if after < r["step"] <= (up_to if up_to is not None else 10**9)}


def launch(out: Path, data: Path, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(torchrun_command(2, WORKER, str(out), str(data), *argv), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.long
def test_two_processes_killed_and_resumed_see_every_example_of_the_epoch_once(tmp_path):
    """5 shards of 8 records on 2 processes (4 shards dealt whole, 1 left over and split), batch 4 a process:
    an epoch is 5 steps. The run is SIGKILLed once checkpoint-3 exists and resumed from the latest checkpoint;
    the steps up to that checkpoint plus the resumed steps cover epoch 0 exactly once and go on into epoch 1
    without a repeat."""
    data, out = tmp_path / "data", tmp_path / "run"
    where = write_shards(data, 5, 8)
    proc = launch(out, data, "--max_steps", "8", "--checkpointing_steps", "1", "--sleep", "0.4")
    deadline = time.time() + 120
    while not (out / "checkpoint-3").is_dir():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no checkpoint-3 within two minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert not (out / "metrics.json").exists(), "the run finished before it was killed"
    killed_logs = {r: read_log(out, r) for r in range(2)}
    for r in range(2):
        os.replace(out / f"ids_{r}.jsonl", out / f"killed_ids_{r}.jsonl")
    done = torchrun(2, WORKER, str(out), str(data), "--max_steps", "8", "--checkpointing_steps", "1",
                    "--resume_from_checkpoint", "latest")
    at = int(re.search(r"resumed from \S+checkpoint-(\d+) at step (\d+)", done.stdout + done.stderr).group(2))
    assert 3 <= at < 8
    assert json.loads((out / "metrics.json").read_text())["num_processes"] == 2
    ids: dict[int, list[int]] = {}          # step -> ids of both processes
    for r in range(2):
        before = {s: v for s, v in killed_logs[r].items() if s <= at}   # steps after the checkpoint are redone
        assert sorted(before) == list(range(1, at + 1))
        after = read_log(out, r, after=at)
        assert sorted(after) == list(range(at + 1, 9))
        steps = {**before, **after}
        for step, got in steps.items():
            ids.setdefault(step, []).extend(got)
        # epoch 0 on process r: only its own whole shards, and of the left-over shard only its positions
        units = assign(5, 2, r, 7, 0)
        whole = {s for s, w in units if w}
        epoch0 = [i for step in range(1, 6) for i in steps[step]]
        assert {where[i] for i in epoch0} == {s for s, _ in units}
        assert all(where[i] in whole or (i % 1000) % 2 == r for i in epoch0)
    epoch0 = [i for s in range(1, 6) for i in ids[s]]
    assert Counter(epoch0) == Counter(list(where)), "epoch 0: an example was repeated or skipped"
    epoch1 = [i for s in range(6, 9) for i in ids[s]]
    assert len(epoch1) == len(set(epoch1)) == 24


@pytest.mark.long
def test_resume_after_a_clean_stop_replays_the_straight_run(tmp_path):
    """Two processes, 3 shards (one left over; an epoch is 3 steps), one run straight to 7 steps and one resumed
    from its checkpoint at step 4, in the middle of epoch 1:
    the same ids, in the same order, with the same per-example seeds, on each process."""
    data = tmp_path / "data"
    write_shards(data, 3, 10)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    torchrun(2, WORKER, str(straight), str(data), "--max_steps", "7", "--checkpointing_steps", "2")
    torchrun(2, WORKER, str(resumed), str(data), "--max_steps", "7",
             "--resume_from_checkpoint", str(straight / "checkpoint-4"))
    for r in range(2):
        a = [json.loads(x) for x in (straight / f"ids_{r}.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (resumed / f"ids_{r}.jsonl").read_text().splitlines()]
        assert [x["step"] for x in b] == [5, 6, 7]
        assert a[4:] == b                       # ids and seeds, in order
        assert len({i for x in a for i in x["ids"]}) >= 12
