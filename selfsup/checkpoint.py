"""Atomic checkpoints that load without executing pickled code.

A checkpoint is a folder ``checkpoint-{step}`` holding

* ``model.safetensors``  the whole objective (adapters, backbone, heads, EMA teachers, queues: every buffer);
* ``optimizer.pt``, ``scheduler.pt``  state dicts (tensors and plain Python values, read with
  ``weights_only=True``);
* instead of the first two, in an FSDP run with the ``sharded`` layout (``selfsup.sharding``): each process's
  pieces, ``model-{rank}-of-{world}.safetensors`` and ``optimizer-{rank}-of-{world}.pt``;
* ``rng_state_{rank}.pt``  each process's Python, NumPy and torch generators;
* ``data_state_{rank}.json``  a streamed run's position of each process in its shards (plain JSON;
  ``selfsup.streaming``);
* ``trainer_state.json``  step, epoch, position in the data (in examples) and the objective's extra state.

It is written under ``checkpoint-{step}.tmp`` and renamed when complete, so a killed run never leaves a
half-written checkpoint that ``--resume_from_checkpoint latest`` would pick.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from safetensors.torch import load_file, load_model, save_file, save_model

from selfsup import sharding
from selfsup.distributed import writes_node_files
from selfsup.errors import SelfsupError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
PIECES = "selfsup_pieces"   # which entries of a sharded checkpoint's files are pieces (the rest are whole)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str | None, output_dir: str | Path) -> Path | None:
    """``latest`` -> newest checkpoint in output_dir (None when there is none yet); a path -> that path."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / "trainer_state.json").is_file():
        raise SelfsupError(f"{spec}: not a checkpoint folder (no trainer_state.json)")
    return path


def shard_files(folder: Path, rank: int, world: int) -> tuple[Path, Path]:
    """The model and optimizer pieces of process ``rank`` of ``world`` in a sharded checkpoint."""
    tag = f"{rank:05d}-of-{world:05d}"
    return folder / f"model-{tag}.safetensors", folder / f"optimizer-{tag}.pt"


def sharded_world(folder: Path) -> int | None:
    """The number of processes that wrote a sharded checkpoint, None for a whole one."""
    found = sorted(folder.glob("model-*-of-*.safetensors"))
    return int(found[0].stem.rsplit("-of-", 1)[1]) if found else None


def save_weights(accelerator, objective: torch.nn.Module, optimizer, folder: Path, layout: str,
                 writer: bool) -> None:
    """The model and optimizer files: whole (a plain run, or an FSDP run's ``full`` layout: gathered), written by
    the ``writer`` of each disk, or each process's pieces (``sharded``)."""
    if not sharding.is_sharded(objective):
        if writer:
            save_model(objective, str(folder / "model.safetensors"))
            torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        return
    if layout == "sharded":
        model_file, optim_file = shard_files(folder, accelerator.process_index, accelerator.num_processes)
        pieces = sharding.piece_names(objective)            # the rest is whole in every file
        save_file(sharding.local_tensors(objective), str(model_file), metadata={PIECES: json.dumps(pieces)})
        optim = sharding.optimizer_state(optimizer, whole=False)
        optim[PIECES] = sharding.piece_params(optimizer)
        torch.save(optim, optim_file)
        return
    tensors = sharding.full_tensors(objective)            # collectives: every process takes part
    optim = sharding.optimizer_state(optimizer, whole=True)
    if writer:
        seen: set[int] = set()
        unique = {}
        for name, t in tensors.items():                    # a tied weight once, as save_model writes it
            if id(t) not in seen:
                seen.add(id(t))
                unique[name] = t.contiguous()
        save_file(unique, str(folder / "model.safetensors"))
        torch.save(optim, folder / "optimizer.pt")


def whole_from_pieces(path: Path, world: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The whole weights and optimizer state of a sharded checkpoint: each process's pieces joined in rank order
    (FSDP2 cuts along the first dimension), for a run of another size or an unsharded one."""
    from safetensors import safe_open

    files = [shard_files(path, r, world) for r in range(world)]
    with safe_open(str(files[0][0]), "pt") as f:
        pieces = set(json.loads((f.metadata() or {}).get(PIECES, "[]")))
    parts = [load_file(str(m)) for m, _ in files]
    tensors = {n: torch.cat([p[n] for p in parts]) if n in pieces else t for n, t in parts[0].items()}
    optims = [torch.load(o, map_location="cpu", weights_only=True) for _, o in files]
    sharded_params = set(optims[0].pop(PIECES, []))
    state = {}
    for index, values in optims[0]["state"].items():
        state[index] = {k: torch.cat([o["state"][index][k] for o in optims])
                        if index in sharded_params and isinstance(v, Tensor) and v.dim() > 0 else v
                        for k, v in values.items()}
    return tensors, {**optims[0], "state": state}


def load_weights(path: Path, accelerator, objective: torch.nn.Module, optimizer) -> None:
    """Restore what :func:`save_weights` wrote, into a plain or a sharded model of any number of processes."""
    world = sharded_world(path)
    if world is not None and sharding.is_sharded(objective) and world == accelerator.num_processes:
        model_file, optim_file = shard_files(path, accelerator.process_index, world)
        missing, unexpected = sharding.load_local_tensors(objective, load_file(str(model_file)))
        optim = torch.load(optim_file, map_location="cpu", weights_only=True)
        optim.pop(PIECES, None)
        whole = False
    elif world is not None:                                 # another size, or unsharded: join the pieces
        tensors, optim = whole_from_pieces(path, world)
        missing, unexpected = sharding.load_whole_into_shards(objective, tensors)
        whole = True
    else:
        if sharding.is_sharded(objective):
            tensors = load_file(str(path / "model.safetensors"))
            missing, unexpected = sharding.load_whole_into_shards(objective, tensors)
        else:
            missing, unexpected = load_model(objective, str(path / "model.safetensors"), strict=False)
        optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        whole = True
    if missing or unexpected:
        raise SelfsupError(f"{path}: checkpoint does not fit this model "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if sharding.is_sharded(objective):
        sharding.load_optimizer_state(optimizer, optim, whole=whole)
    else:
        optimizer.load_state_dict(optim)


def save_checkpoint(accelerator, objective: torch.nn.Module, optimizer, scheduler, state: dict[str, Any],
                    output_dir: str | Path, keep: int, layout: str = "sharded",
                    data_state: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoint-{state['step']}`` atomically (every process calls this); ``layout``: how an FSDP run
    writes its weights (:mod:`selfsup.sharding`); ``data_state``: this process's position in a stream. On machines
    with disks of their own, each machine's checkpoint holds what its processes need to resume: the whole files
    (written by its local main process) and its processes' random states, positions and pieces."""
    final = Path(output_dir) / f"checkpoint-{state['step']}"
    tmp = final.with_name(final.name + ".tmp")
    writer = writes_node_files(accelerator, output_dir)
    if writer:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    if data_state is not None:   # inside the .tmp folder, so the rename makes it part of the atomic checkpoint
        (tmp / f"data_state_{accelerator.process_index}.json").write_text(json.dumps(data_state))
    save_weights(accelerator, objective, optimizer, tmp, layout, writer)
    if writer:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if writer:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_data_state(path: Path, rank: int) -> dict[str, Any] | None:
    """Process ``rank``'s stream position in checkpoint ``path`` (None when it holds none)."""
    file = path / f"data_state_{rank}.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except ValueError as err:
        raise SelfsupError(f"{file}: cannot read the stream position ({err})") from None


def load_checkpoint(path: Path, accelerator, objective: torch.nn.Module, optimizer, scheduler) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote; returns the trainer state."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        load_weights(path, accelerator, objective, optimizer)
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
        rng_file = path / f"rng_state_{accelerator.process_index}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=True))
        elif accelerator.is_main_process:
            print(f"warning: {rng_file} missing (different number of processes?); random state not restored")
    except SelfsupError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged checkpoint is a user-facing problem
        raise SelfsupError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None
    return state
