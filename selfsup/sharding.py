"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) through Accelerate, and the
checkpoints, evaluation and export of a sharded model.

**Wrapping policy** (one for every recipe): every module whose class sets ``shard_unit = True`` is one FSDP unit —
the layers of the shared backbones (``TransformerLayer``, the GNN layers, the ResNet stages). Its weights are
all-gathered just before its forward and freed after it, so a process holds its shard of everything plus one
layer's whole weights at a time. Everything else — adapters, heads, codebooks, prototypes, an EMA teacher's
non-layer parts — is in the root unit, gathered for the objective's whole forward. Teachers' layers are units too
(they are the same classes); their weights stay sharded between steps, and the EMA update runs on each process's
shards (``selfsup.objectives.ema.update_momentum`` works on the local pieces: no weight is ever gathered for it).
Buffers (queues, centres, batch-norm statistics) are not sharded: each process keeps the whole buffer, updated
identically on all of them from gathered quantities, as under DDP.

**On CPU.** Accelerate takes an FSDP plugin only on GPUs (on CPU it silently falls back to DDP), while FSDP2 itself
runs on gloo. :func:`use_fsdp` switches a CPU accelerator to FSDP after it is built, so the CPU run goes through
Accelerate's own FSDP2 preparation (``fsdp2_prepare_model``) exactly as a GPU run does.

**Checkpoints** (``selfsup.checkpoint``) hold no pickled code in either layout:

* ``sharded`` (default): every process writes its own pieces, ``model-{rank}-of-{world}.safetensors`` and
  ``optimizer-{rank}-of-{world}.pt`` (plain tensors; which entries are pieces is in the files). A run of the same
  size reads its own; any other run (another size, unsharded) joins every process's pieces.
* ``full``: the weights and optimizer state are gathered and written as one ``model.safetensors`` and
  ``optimizer.pt``, the same files a plain run writes: resume on any number of processes, sharded or not.
"""
from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

CHECKPOINT_LAYOUTS = ("sharded", "full")


def shard_unit_names(model: nn.Module) -> list[str]:
    """The class names of ``model``'s modules that are FSDP units (``shard_unit = True`` on the class)."""
    return sorted({type(m).__name__ for m in model.modules() if getattr(type(m), "shard_unit", False)})


def fsdp_requested(fsdp: bool) -> bool:
    """The ``--fsdp`` flag, or an ``accelerate launch`` whose config turned FSDP on."""
    return fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_plugin():
    """Accelerate's FSDP2 plugin with selfsup's wrapping policy; settings from an ``accelerate launch --config_file``
    (its ``FSDP_*`` variables) win over these defaults."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from selfsup.errors import SelfsupError

    version = int(os.environ.get("FSDP_VERSION", "2"))
    if version != 2:
        raise SelfsupError(f"selfsup shards with FSDP2; the accelerate config asks for fsdp_version {version}")
    defaults: dict[str, Any] = {"fsdp_version": 2}
    if "FSDP_AUTO_WRAP_POLICY" not in os.environ:
        defaults["auto_wrap_policy"] = "transformer_based_wrap"
    if "FSDP_RESHARD_AFTER_FORWARD" not in os.environ:
        defaults["reshard_after_forward"] = True
    return FullyShardedDataParallelPlugin(**defaults)


def use_fsdp(accelerator, plugin) -> None:
    """Make a CPU accelerator (which Accelerate builds as DDP whatever plugin it is given) an FSDP2 one."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = plugin
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)


class _Replicated(nn.Module):
    """Holds a model's scalar parameters (CLIP's temperature, SigLIP's bias) outside its module tree, for
    Accelerate's ``ignored_modules``: FSDP cannot shard a 0-dim tensor, so these stay whole on every process and the
    engine averages their gradients itself (:func:`average_replicated_grads`)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)


def replicated_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters FSDP leaves whole: the scalars."""
    return [p for p in model.parameters() if p.dim() == 0]


def set_wrapping(accelerator, model: nn.Module) -> None:
    """Name the model's shard units to the plugin (unless the accelerate config named its own) and keep its scalar
    parameters out of the sharding."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if plugin is None:
        return
    if "FSDP_TRANSFORMER_CLS_TO_WRAP" not in os.environ:
        plugin.transformer_cls_names_to_wrap = shard_unit_names(model)
    scalars = replicated_parameters(model)
    plugin.ignored_modules = [_Replicated(scalars)] if scalars else None


def average_replicated_grads(params: list[nn.Parameter]) -> None:
    """The mean over the processes of the gradients of ``params`` (what FSDP does for the sharded ones)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_initialized():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, value in zip(grads, flat):
        g.copy_(value.reshape(g.shape))


def is_sharded(model: nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


# -- the whole model from its shards --------------------------------------------------------------------------------
def skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its parameters and buffers on the meta device (no memory), tied weights kept tied:
    the shape into which :func:`gathered_copy` pours the weights of the sharded model. Take it before sharding."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def full_tensors(model: nn.Module, to_cpu: bool = True) -> dict[str, Tensor]:
    """Every parameter and persistent buffer of ``model`` whole (shards all-gathered: every process must call this,
    in the same order), keyed as in ``state_dict``, aliases kept (a tied weight is the same tensor under each of its
    names)."""
    from torch.distributed.tensor import DTensor

    out: dict[str, Tensor] = {}
    seen: dict[int, Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            whole = t.full_tensor() if isinstance(t, DTensor) else t
            seen[id(t)] = whole.detach().cpu() if to_cpu else whole.detach()
        out[name] = seen[id(t)]
    return out


def materialise(shape: nn.Module, tensors: dict[str, Tensor], device: torch.device | str) -> nn.Module:
    """Fill a :func:`skeleton` with ``tensors`` (a whole state dict) on ``device``, in place; tied weights stay one
    parameter. Returns ``shape``."""
    made: dict[int, Any] = {}
    names = dict(shape.state_dict(keep_vars=True))
    by_id = {id(t): n for n, t in reversed(list(names.items()))}
    for module in shape.modules():
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for key, t in list(store.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    name = by_id.get(id(t))
                    if name is None or name not in tensors:   # a non-persistent buffer: recomputed, not saved
                        value = torch.zeros_like(t, device=device)
                    else:
                        value = tensors[name].to(device=device, dtype=t.dtype).clone()
                    made[id(t)] = nn.Parameter(value, requires_grad=t.requires_grad) if is_param else value
                store[key] = made[id(t)]
    return shape


def gathered_copy(model: nn.Module, shape: nn.Module, is_main: bool, device: torch.device | str) -> nn.Module | None:
    """A plain (unsharded) copy of the sharded ``model`` on the main process, built in ``shape`` (its
    :func:`skeleton`); None on the others. Every process must call it."""
    tensors = full_tensors(model)
    if not is_main:
        return None
    plain = materialise(copy.deepcopy(shape), tensors, device)
    plain.train(model.training)
    return plain


# -- loading whole tensors into shards ----------------------------------------------------------------------------
def local_piece(like: Tensor, whole: Tensor) -> Tensor:
    """This process's piece of ``whole`` laid out as the DTensor ``like`` (no communication: every process has
    ``whole``)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None).to_local()


@torch.no_grad()
def load_whole_into_shards(model: nn.Module, tensors: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Copy a whole state dict into a sharded ``model`` (each process keeps its piece). Returns (missing,
    unexpected) names, as ``load_state_dict`` does."""
    from torch.distributed.tensor import DTensor

    own = model.state_dict(keep_vars=True)
    missing = [n for n in own if n not in tensors and not any(own[n] is own[m] for m in tensors if m in own)]
    unexpected = [n for n in tensors if n not in own]
    for name, t in own.items():
        if name not in tensors:
            continue
        whole = tensors[name]
        if tuple(whole.shape) != tuple(t.shape):
            unexpected.append(f"{name} (shape {tuple(whole.shape)} vs {tuple(t.shape)})")
            continue
        if isinstance(t, DTensor):
            t.to_local().copy_(local_piece(t, whole.to(t.device)))
        else:
            t.copy_(whole.to(t.device))
    return missing, unexpected


def local_tensors(model: nn.Module) -> dict[str, Tensor]:
    """This process's pieces of every parameter and persistent buffer (a buffer whole), keyed as in ``state_dict``,
    each stored once (a tied weight under its first name)."""
    from torch.distributed.tensor import DTensor

    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            continue
        seen.add(id(t))
        out[name] = (t.to_local() if isinstance(t, DTensor) else t).detach().contiguous().cpu()
    return out


def piece_names(model: nn.Module) -> list[str]:
    """The names :func:`local_tensors` stores as pieces (the sharded parameters, each under its first name)."""
    from torch.distributed.tensor import DTensor

    seen: set[int] = set()
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            if isinstance(t, DTensor):
                out.append(name)
    return out


def piece_params(optimizer) -> list[int]:
    """The indices (in ``optimizer.state_dict()``'s numbering) of the sharded parameters."""
    from torch.distributed.tensor import DTensor

    return [i for i, p in enumerate(_ordered_params(optimizer)) if isinstance(p, DTensor)]


@torch.no_grad()
def load_local_tensors(model: nn.Module, tensors: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Copy this process's pieces (from :func:`local_tensors` of the same layout) back; (missing, unexpected)."""
    from torch.distributed.tensor import DTensor

    own = model.state_dict(keep_vars=True)
    firsts: dict[int, str] = {}
    for n, t in own.items():
        firsts.setdefault(id(t), n)
    wanted = set(firsts.values())
    missing = sorted(wanted - set(tensors))
    unexpected = sorted(set(tensors) - wanted)
    for name in wanted & set(tensors):
        t = own[name]
        target = t.to_local() if isinstance(t, DTensor) else t
        if tuple(target.shape) != tuple(tensors[name].shape):
            unexpected.append(f"{name} (shape {tuple(tensors[name].shape)} vs {tuple(target.shape)})")
            continue
        target.copy_(tensors[name].to(target.device))
    return missing, unexpected


# -- optimizer state ----------------------------------------------------------------------------------------------
def _ordered_params(optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def optimizer_state(optimizer, whole: bool) -> dict[str, Any]:
    """``optimizer.state_dict()`` with plain tensors: each DTensor state as this process's piece, or (``whole``) as
    the whole tensor (all-gathered: every process must call this)."""
    from torch.distributed.tensor import DTensor

    sd = optimizer.state_dict()
    state = {}   # new dicts: state_dict() hands out the optimizer's own per-parameter dicts
    for index, values in sd["state"].items():
        state[index] = {k: (v.full_tensor() if whole else v.to_local()).detach().cpu() if isinstance(v, DTensor)
                        else v for k, v in values.items()}
    return {**sd, "state": state}


def load_optimizer_state(optimizer, sd: dict[str, Any], whole: bool) -> None:
    """Load a state from :func:`optimizer_state` (or a plain run's ``optimizer.pt`` when ``whole``), then make each
    state tensor of a sharded parameter a DTensor laid out like the parameter again."""
    from torch.distributed.tensor import DTensor

    optimizer.load_state_dict(sd)
    for p in _ordered_params(optimizer):
        if not isinstance(p, DTensor) or p not in optimizer.state:
            continue
        state = optimizer.state[p]
        for k, v in list(state.items()):
            if isinstance(v, DTensor) or not isinstance(v, Tensor) or v.dim() == 0:
                continue
            piece = local_piece(p, v.to(p.device)) if whole else v.to(device=p.device, dtype=p.dtype)
            state[k] = DTensor.from_local(piece, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                          stride=p.stride())


__all__ = ["CHECKPOINT_LAYOUTS", "shard_unit_names", "fsdp_requested", "make_plugin", "use_fsdp", "set_wrapping",
           "replicated_parameters", "average_replicated_grads",
           "is_sharded", "skeleton", "full_tensors", "materialise", "gathered_copy", "local_piece",
           "load_whole_into_shards", "local_tensors", "piece_names", "piece_params", "load_local_tensors", "optimizer_state", "load_optimizer_state"]
