"""Gradient accumulation that keeps every negative: GradCache (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup", arXiv:2101.06983), behind ``--contrastive_accumulation``.

Plain accumulation runs the loss once per micro-batch, so a contrastive loss over k micro-batches of b sees b - 1
negatives per example instead of k * b - 1. GradCache splits the objective at its per-example embeddings:

1. embed every micro-batch without a graph (``objective.embed_for_loss``), saving the torch RNG state first;
2. compute the loss of the whole window on the k * b cached embeddings (``objective.loss_from_embeddings``;
   under several processes the losses gather every process's rows, so it is the global batch's loss), and take
   its gradient with respect to the cached embeddings and to the parameters the loss itself uses (CLIP's
   temperature, DINO's last layer);
3. per micro-batch, restore the RNG state (dropout draws the same masks: GradCache's ``RandContext``), embed again
   with a graph and backpropagate the cached embedding gradients; the last micro-batch also carries the loss's
   direct parameter gradients, so DDP reduces every parameter in the one synchronised backward pass (``no_sync``
   for the others).

The parameter gradients are then those of the loss of one batch of k * b examples, at the memory of one
micro-batch's graph plus the k * b embeddings. Peak memory: ``benchmarks/gradcache_memory.py``.

An objective opts in by exposing ``embed_for_loss(batch) -> tuple[Tensor, ...]`` (each tensor (b, ...), one row
per example; tensors without a graph, such as an EMA teacher's outputs, are cached and not backpropagated) and
``loss_from_embeddings(embeddings) -> ObjectiveOutput`` (the loss of the batch whose rows these are, depending on
the batch only through them), with ``forward(batch) = loss_from_embeddings(embed_for_loss(batch))``. State that
the loss updates (a MoCo queue, DINO's centre) is then updated once per optimizer step with the whole window.
Batch norm is refused: its statistics would come from each micro-batch, not from the whole batch.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup.errors import SelfsupError

logger = logging.getLogger(__name__)
FLAG = "--contrastive_accumulation"


def check_supported(objective: nn.Module) -> None:
    """Raise a one-line :class:`SelfsupError` unless ``objective`` can be trained exactly by GradCache."""
    name = type(objective).__name__
    if not (callable(getattr(objective, "embed_for_loss", None))
            and callable(getattr(objective, "loss_from_embeddings", None))):
        raise SelfsupError(f"{FLAG}: {name} does not support it (it has no embed_for_loss / loss_from_embeddings; "
                           f"see docs/features.md for the objectives that do); drop the flag")
    for module_name, module in objective.named_modules():
        if isinstance(module, _BatchNorm):
            raise SelfsupError(f"{FLAG}: {name} has batch norm ({module_name}: {type(module).__name__}), whose "
                               f"statistics would be each micro-batch's, not the whole batch's; use a model without "
                               f"batch norm (e.g. a ViT and a head without it) or drop the flag")


def as_tuple(embeddings: Any, name: str) -> tuple[Tensor, ...]:
    if isinstance(embeddings, Tensor):
        return (embeddings,)
    if not isinstance(embeddings, (tuple, list)) or not all(isinstance(t, Tensor) for t in embeddings):
        raise TypeError(f"{name}.embed_for_loss must return a tensor or a tuple of tensors")
    return tuple(embeddings)


class RngState:
    """The torch RNG states (CPU and every initialised CUDA device) at one point, to replay a forward pass."""

    def __init__(self) -> None:
        self.devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; afterwards the RNG is where it was before the block (fork_rng)."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


@contextmanager
def forward_is_embedding(model: nn.Module, objective: nn.Module) -> Iterator[None]:
    """Make ``model(batch)`` return ``objective.embed_for_loss(batch)``. The synchronised pass must go through
    the DDP wrapper's own forward (it prepares the gradient reduction), and that calls ``objective.forward``; the
    instance attribute shadows the class's method for the block. accelerate may have put its autocast wrapper
    there (mixed precision), so it is put back afterwards (the caller runs under ``accelerator.autocast()``)."""
    saved = objective.__dict__.get("forward")
    objective.forward = objective.embed_for_loss
    try:
        yield
    finally:
        if saved is None:
            del objective.forward
        else:
            objective.forward = saved


def embed_through(model: nn.Module, objective: nn.Module, batch: Any) -> tuple[Tensor, ...]:
    """``objective.embed_for_loss(batch)`` through ``model``'s (a DDP wrapper's) own forward."""
    with forward_is_embedding(model, objective):
        out = model(batch)
    return as_tuple(out, type(objective).__name__)


def accumulate(accelerator: Any, model: nn.Module, micro_batches: Sequence[Any]) -> tuple[float, dict[str, float], int]:
    """One accumulation window by GradCache (module doc): leaves in the parameters' ``.grad`` the gradient of the
    loss of the whole window (all processes' micro-batches together), the engine's normalisation included.

    accelerator: the run's ``Accelerator``; model: the prepared objective (DDP-wrapped or not);
    micro_batches: this process's k micro-batches. Returns what ``Trainer.accumulate`` returns: the global loss,
    the metrics of the window's loss and the number of targets over all processes (0 for a mean loss).
    """
    if "FSDP" in str(getattr(accelerator, "distributed_type", "")):
        raise SelfsupError(f"{FLAG} does not work with FSDP yet (the loss runs outside the sharded forward); "
                           f"drop one of the two")
    objective = accelerator.unwrap_model(model)
    name = type(objective).__name__
    states, cached = [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(RngState())
            with accelerator.autocast():
                cached.append(embed_through(model, objective, batch))
    rows = [len(c[0]) for c in cached]
    width = len(cached[0])
    if any(len(c) != width for c in cached) or any(len(t) != n for c, n in zip(cached, rows) for t in c):
        raise ValueError(f"{name}.embed_for_loss must return the same number of tensors for every micro-batch, "
                         f"each with one row per example")
    leaves = [torch.cat([c[j] for c in cached]).detach().requires_grad_(cached[0][j].is_floating_point())
              for j in range(width)]
    with accelerator.autocast():
        out = objective.loss_from_embeddings(tuple(leaves))
    params = [p for p in objective.parameters() if p.requires_grad]
    wanted = [t for t in leaves if t.requires_grad]
    grads = torch.autograd.grad(out.loss, wanted + params, allow_unused=True)
    embedding_grads = dict(zip([id(t) for t in wanted], grads[: len(wanted)]))
    param_grads = [(p, g) for p, g in zip(params, grads[len(wanted):]) if g is not None]

    # the engine's normalisation (selfsup/train.py): a summed loss over T targets of all processes gives the
    # gradient of the global mean after DDP's average when scaled by num_processes / T
    n = accelerator.num_processes
    summed = out.num_targets is not None
    count = torch.as_tensor(out.num_targets if summed else 0, dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(torch.stack([out.loss.detach().double(), count]), reduction="sum")
    if summed:
        total = float(totals[1])
        scale, loss = (n / total, float(totals[0]) / total) if total > 0 else (0.0, 0.0)
    else:
        total, scale, loss = 0.0, 1.0, float(totals[0]) / n

    per_leaf = [None if embedding_grads.get(id(t)) is None else (embedding_grads[id(t)] * scale).split(rows)
                for t in leaves]
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with accelerator.no_sync(model) if not last and n > 1 else nullcontext():
            with states[i].replay(), accelerator.autocast():
                again = embed_through(model, objective, batch)
            check_replay(again, cached[i], name)
            roots = [(t, g[i]) for t, g in zip(again, per_leaf) if g is not None and t.requires_grad]
            if last:
                roots += [(p, g * scale) for p, g in param_grads]
            if roots:
                torch.autograd.backward([t for t, _ in roots], grad_tensors=[g.to(t.dtype) for t, g in roots])
    metrics = {k: float(v) for k, v in out.metrics.items()}
    return loss, metrics, int(total)


_warned = False


def check_replay(again: Sequence[Tensor], cached: Sequence[Tensor], name: str) -> None:
    """Warn once when the pass with a graph did not reproduce the cached embeddings (a random draw the saved RNG
    state does not cover, or a layer that depends on the batch): the gradients are then not the whole batch's."""
    global _warned
    if _warned:
        return
    for a, c in zip(again, cached):
        if a.shape != c.shape or not torch.allclose(a.detach().to(c.dtype), c, rtol=1e-3, atol=1e-5):
            _warned = True
            logger.warning("%s: %s's second embedding pass differs from the first; the gradients are not exactly "
                           "the whole batch's (is there randomness outside torch's RNG?)", FLAG, name)
            return


__all__ = ["check_supported", "accumulate", "RngState", "FLAG"]
