"""The one training loop every recipe shares, under HF Accelerate.

Mixed precision, gradient accumulation, warmup + cosine/linear decay, clipping, a tqdm bar on the main
process, tensorboard/wandb logging, periodic evaluation, atomic checkpoints and exact resume, and the training
curves of every run (``OUTPUT_DIR/training_curves.png`` + ``.json``, ``selfsup.plots``; the loss of every step and
the held-out figures of every evaluation, kept in the checkpoints so a resumed run draws the whole run).

Loss normalisation: an objective that returns ``num_targets`` returns a *summed* loss. The loop back-propagates
the sums of every micro-batch, then scales the gradients by ``num_processes / T`` with ``T`` the number of
targets summed over the accumulation window and over all processes (DDP averages gradients over processes).
The update is then exactly that of the mean loss over the global batch, however the targets are spread.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from selfsup import sharding
from selfsup.optim import make_optimizer as build_optimizer
from selfsup.checkpoint import load_checkpoint, load_data_state, resolve_checkpoint, save_checkpoint
from selfsup.compiling import compile_backbones
from selfsup.data import loader_length, set_loader_position, to_device
from selfsup.errors import SelfsupError
from selfsup import gradcache
from selfsup.plots import curves, write_training_curves
from selfsup.types import Objective, ObjectiveOutput

MAX_NONFINITE_STEPS = 10


@dataclass
class TrainingSettings:
    """What the training loop needs to know; the recipes' shared flags of the same names
    (:meth:`from_args` picks them out of a parsed command line)."""

    output_dir: str = "outputs/run"
    max_steps: int = 300
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    contrastive_accumulation: bool = False
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    lr_scheduler_type: str = "cosine"
    min_learning_rate: float | None = None
    warmup_steps: int | None = None
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    mixed_precision: str | None = None
    logging_steps: int = 10
    eval_steps: int = 0
    checkpointing_steps: int = 0
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    report_to: str | None = "tensorboard"
    fsdp: bool = False
    fsdp_checkpoint: str = "sharded"
    torch_compile: bool = False                 # --torch_compile: the backbones, in place (selfsup.compiling)
    torch_compile_backend: str = "inductor"

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> "TrainingSettings":
        """The settings among ``args``' attributes (an ``argparse.Namespace`` or any object); overrides win."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **overrides})

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * self.max_steps)


def make_accelerator(settings: TrainingSettings) -> Accelerator:
    """An Accelerator for these settings; on a machine with no GPU, a CPU one (works under torchrun too)."""
    trackers = [] if settings.report_to in (None, "none") else settings.report_to
    kwargs: dict[str, Any] = dict(log_with=trackers or None, project_dir=settings.output_dir)
    if settings.mixed_precision is not None:
        kwargs["mixed_precision"] = settings.mixed_precision
    if not torch.cuda.is_available():
        kwargs["cpu"] = True
    if kwargs.get("mixed_precision") == "fp16" and not torch.cuda.is_available():
        raise SelfsupError("--mixed_precision fp16 needs a GPU; use bf16 on CPU")
    if settings.fsdp_checkpoint not in sharding.CHECKPOINT_LAYOUTS:
        raise SelfsupError(f"--fsdp_checkpoint {settings.fsdp_checkpoint!r}: choose from "
                           f"{', '.join(sharding.CHECKPOINT_LAYOUTS)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    fsdp = sharding.fsdp_requested(settings.fsdp) and world > 1
    if fsdp:
        kwargs["fsdp_plugin"] = sharding.make_plugin()
    if world == 1:
        fresh_accelerator_state()
    try:
        accelerator = Accelerator(**kwargs)
    except (ValueError, ImportError) as err:
        raise SelfsupError(f"cannot set up training: {err}") from None
    if fsdp and accelerator.distributed_type != "FSDP":    # a CPU run: Accelerate built DDP (selfsup.sharding)
        sharding.use_fsdp(accelerator, kwargs["fsdp_plugin"])
    if settings.fsdp and world == 1:
        accelerator.print("note: --fsdp with one process trains unsharded")
    if accelerator.mixed_precision == "bf16" and accelerator.device.type == "cpu" and not cpu_has_native_bf16():
        accelerator.print("warning: this CPU has no native bf16 (no AVX-512 BF16 / AMX); bf16 runs emulated and "
                          "is much slower than fp32 here; use --mixed_precision no")
    return accelerator


def fresh_accelerator_state() -> None:
    """Forget the precision an earlier run in this process chose. accelerate keeps one global state and refuses
    another ``mixed_precision`` in the same process, but a recipe's ``main`` may run several times in one
    process (a notebook, a benchmark of several recipes). Single-process runs only: the process group stays."""
    from accelerate.state import AcceleratorState

    reset = getattr(AcceleratorState, "_reset_state", None)
    if reset is not None:
        reset(reset_partial_state=False)


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lr_lambda(kind: str, warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then cosine / linear decay to ``floor`` (a fraction of the peak; 0 by
    default, nanoGPT's 0.1) or constant."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * decay

    return f


def schedule_floor(args: "TrainingSettings") -> float:
    """``min_learning_rate`` as a fraction of ``learning_rate`` (0 when unset), checked."""
    if not args.min_learning_rate:
        return 0.0
    if args.learning_rate <= 0 or not 0 <= args.min_learning_rate <= args.learning_rate:
        raise ValueError(f"--min_learning_rate {args.min_learning_rate} must be between 0 and --learning_rate "
                         f"{args.learning_rate}")
    return args.min_learning_rate / args.learning_rate


def make_optimizer(objective: torch.nn.Module, args: TrainingSettings, device: torch.device) -> torch.optim.Optimizer:
    """``args.optimizer``: AdamW (fused on CPU and CUDA), SGD with momentum, or LARS (``selfsup.optim``); no
    weight decay on biases and norms (parameters with fewer than 2 dimensions), which LARS also leaves out of
    its trust-ratio adaptation. The parameters an objective's ``learning_rate_scales()`` names (by prefix; the
    longest prefix wins) form groups of their own at that multiple of the rate; the schedule scales every group."""
    scales = getattr(objective, "learning_rate_scales", dict)()
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]

    def scale_of(name: str) -> float:
        prefixes = [k for k in scales if name.startswith(k)]
        return float(scales[max(prefixes, key=len)]) if prefixes else 1.0

    groups = []
    for scale in [1.0, *sorted({float(v) for v in scales.values()} - {1.0})]:
        params = [p for n, p in named if scale_of(n) == scale]
        rate = {} if scale == 1.0 else {"lr": args.learning_rate * scale}
        if scale != 1.0 and not params:
            continue
        groups += [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay, **rate},
                   {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0, **rate}]
        if scalars := [p for p in params if p.ndim == 0]:   # their own group: FSDP keeps them whole (selfsup.sharding)
            groups.append({"params": scalars, "weight_decay": 0.0, **rate})
    fused = device.type in ("cuda", "cpu") if args.optimizer == "adamw" else None
    eps = {"eps": args.adam_epsilon} if args.optimizer == "adamw" else {}
    return build_optimizer(groups, args.optimizer, args.learning_rate, args.weight_decay,
                           betas=(args.adam_beta1, args.adam_beta2), momentum=args.momentum, fused=fused, **eps)


class Trainer:
    """Runs ``settings.max_steps`` optimizer steps of ``objective`` on ``train_loader``.

    eval_fn(objective) -> dict of figures, called on the main process every ``--eval_steps`` and at the end;
        values that are not numbers are pictures (HWC uint8 arrays) and go to the trackers that take images.
    run_config: JSON-able description of the run, logged to the trackers and kept in checkpoints.
    epoch_data: what ``objective.on_epoch_start(epoch, epoch_data)`` receives when an epoch begins (the whole
        training set without augmentation, this process's share, for an objective that reads all of it each
        epoch: DeepCluster's clustering; see :meth:`Objective.on_epoch_start`); None by default.
    """

    def __init__(self, objective: Objective, train_loader: DataLoader, settings: TrainingSettings,
                 accelerator: Accelerator, eval_fn: Callable[[Objective], dict[str, float]] | None = None,
                 run_config: dict[str, Any] | None = None, epoch_data: Any = None) -> None:
        if not isinstance(settings, TrainingSettings):
            raise TypeError("Trainer takes TrainingSettings (TrainingSettings.from_args(args)), not the flags")
        self.args = args = settings
        self.accelerator, self.eval_fn = accelerator, eval_fn
        self.loader, self.epoch_data = train_loader, epoch_data
        self.run_config = run_config or {}
        if args.contrastive_accumulation:
            gradcache.check_supported(objective)
        self.optimizer = make_optimizer(objective, args, accelerator.device)
        warmup = args.warmup
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(args.lr_scheduler_type, warmup, args.max_steps, schedule_floor(args)))
        self.shape = None     # an FSDP run: the objective's meta-device skeleton, for its gathered copies
        self.replicated: list[torch.nn.Parameter] = []   # ... and the parameters it leaves whole
        if accelerator.distributed_type == "FSDP":
            sharding.set_wrapping(accelerator, objective)
            self.shape = sharding.skeleton(objective)
            self.replicated = sharding.replicated_parameters(objective)
        if args.torch_compile:
            names = compile_backbones(objective, args.torch_compile_backend)
            accelerator.print(f"torch.compile ({args.torch_compile_backend}): {', '.join(names) or 'no backbone'}")
        self.model, self.optimizer = accelerator.prepare(objective, self.optimizer)
        self._gathered: tuple[int, Objective | None] | None = None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[float] = []                                # the loss of step i + 1 at [i]
        self.evaluations: list[tuple[int, dict[str, float]]] = []     # (step, numeric held-out figures)

    @property
    def objective(self) -> Objective:
        """The objective being trained (under FSDP: sharded; see :meth:`trained_objective`)."""
        return self.accelerator.unwrap_model(self.model)

    def trained_objective(self) -> Objective | None:
        """The objective with its whole weights, for evaluation and export. An FSDP run gathers its shards into a
        plain copy on the main process (every process must call this; the others get None); otherwise the trained
        objective itself."""
        if self.shape is None or not sharding.is_sharded(self.objective):
            return self.objective
        if self._gathered is None or self._gathered[0] != self.step:
            plain = sharding.gathered_copy(self.objective, self.shape, self.accelerator.is_main_process,
                                           self.accelerator.device)
            self._gathered = (self.step, plain)
        return self._gathered[1]

    # -- data -------------------------------------------------------------------------------------------
    def batches(self):
        """Endless local micro-batches, tracking (epoch, global batch in epoch) for resume; the objective's
        ``on_epoch_start`` runs before the first batch of every epoch (not on a resume in the middle of one)."""
        per_epoch = loader_length(self.loader)
        while True:
            if self.batch_in_epoch == 0:
                self.objective.on_epoch_start(self.epoch, self.epoch_data)
            set_loader_position(self.loader, self.epoch, self.batch_in_epoch)
            got = False
            for batch in self.loader:
                got = True
                self.batch_in_epoch += 1
                yield to_device(batch, self.accelerator.device)
            if not got and self.batch_in_epoch == 0:
                raise SelfsupError("the training data yielded no batch; is it smaller than one global batch?")
            if per_epoch is None or self.batch_in_epoch >= per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    # -- one optimizer step ---------------------------------------------------------------------------------
    def accumulate(self, micro_batches: list[Any]) -> tuple[float, dict[str, float], int]:
        """Forward/backward over an accumulation window with global normalisation (see module doc).

        Returns the global mean loss, the micro-batch-mean metrics of this process, and the number of
        targets over all processes (0 when the objective reports none).
        """
        if self.args.contrastive_accumulation and len(micro_batches) > 1:   # every negative: selfsup/gradcache.py
            return gradcache.accumulate(self.accelerator, self.model, micro_batches)
        acc, model = self.accelerator, self.model
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        targets = torch.zeros((), dtype=torch.float64, device=acc.device)
        metrics: dict[str, float] = {}
        summed = None
        for i, batch in enumerate(micro_batches):
            sync = i == len(micro_batches) - 1
            with acc.no_sync(model) if not sync and acc.num_processes > 1 else nullcontext():
                out: ObjectiveOutput = model(batch)
                acc.backward(out.loss)
            summed = out.num_targets is not None if summed is None else summed
            loss_sum += out.loss.detach().double()
            if summed:
                targets += torch.as_tensor(out.num_targets, dtype=torch.float64, device=acc.device)
            for k, v in out.metrics.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / len(micro_batches)
        sharding.average_replicated_grads(self.replicated)
        totals = acc.reduce(torch.stack([loss_sum, targets]), reduction="sum")
        if summed:
            count = float(totals[1])
            scale = acc.num_processes / count if count > 0 else 0.0
            loss = float(totals[0]) / count if count > 0 else 0.0
        else:
            count, scale = 0.0, 1.0 / len(micro_batches)
            loss = float(totals[0]) / (acc.num_processes * len(micro_batches))
        if scale != 1.0:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(scale)
        return loss, metrics, int(count)

    def optimizer_step(self) -> float | None:
        grad_norm = None
        if self.args.max_grad_norm and self.args.max_grad_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # -- state ----------------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        gb = self.args.per_device_train_batch_size * self.accelerator.num_processes
        return {"step": self.step, "epoch": self.epoch, "examples_in_epoch": self.batch_in_epoch * gb,
                "num_processes": self.accelerator.num_processes, "run_config": self.run_config,
                "objective_state": self.objective.extra_state(),
                "loss_history": self.history, "evaluations": [[s, f] for s, f in self.evaluations]}

    def maybe_resume(self) -> None:
        path = resolve_checkpoint(self.args.resume_from_checkpoint, self.args.output_dir)
        if path is None:
            if self.args.resume_from_checkpoint:
                self.accelerator.print(f"no checkpoint in {self.args.output_dir} yet; starting from step 0")
            return
        state = load_checkpoint(path, self.accelerator, self.objective, self.optimizer, self.scheduler)
        gb = self.args.per_device_train_batch_size * self.accelerator.num_processes
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch, rest = divmod(int(state["examples_in_epoch"]), gb)
        if rest:
            self.accelerator.print(f"warning: global batch size changed; resuming {rest} examples early")
        self.objective.load_extra_state(state.get("objective_state", {}))
        self.history = [float(v) for v in state.get("loss_history", [])][: self.step]
        self.evaluations = [(int(s), dict(f)) for s, f in state.get("evaluations", []) if int(s) <= self.step]
        self.resume_stream(path)
        self.accelerator.print(f"resumed from {path} at step {self.step}")

    def stream(self):
        """The training data set when it is a stream that keeps its own position (``state_dict`` /
        ``load_state_dict``, ``selfsup.streaming``), else None."""
        data = getattr(self.loader, "dataset", None)
        return data if hasattr(data, "state_dict") and hasattr(data, "load_state_dict") else None

    def resume_stream(self, path: Path) -> None:
        """Each process continues its stream where its checkpoint file says; its epoch counters follow (processes
        of a stream run their own epochs)."""
        if (stream := self.stream()) is None:
            return
        data_state = load_data_state(path, self.accelerator.process_index)
        if data_state is None:
            raise SelfsupError(f"{path}: no data_state_{self.accelerator.process_index}.json; a streamed run resumes "
                               "from a checkpoint of a streamed run on as many processes")
        stream.load_state_dict(data_state)
        self.epoch, self.batch_in_epoch = int(data_state["epoch"]), int(data_state["batches"])

    def save(self) -> Path:
        return save_checkpoint(self.accelerator, self.objective, self.optimizer, self.scheduler,
                               self.trainer_state(), self.args.output_dir, self.args.checkpoints_total_limit,
                               self.args.fsdp_checkpoint,
                               data_state=None if self.stream() is None else self.stream().state_dict())

    # -- the loop -------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        if self.eval_fn is None:
            return {}
        result: dict[str, float] = {}
        objective = self.trained_objective()
        if self.accelerator.is_main_process:
            was_training = objective.training
            objective.eval()
            with torch.no_grad(), self.accelerator.autocast():
                result = self.eval_fn(objective)
            objective.train(was_training)
            images = {k: result.pop(k) for k in [k for k, v in result.items() if not isinstance(v, (int, float))]}
            self.accelerator.log(result, step=self.step)
            self.evaluations = [(s, f) for s, f in self.evaluations if s != self.step] + [(self.step, dict(result))]
            log_images(self.accelerator, images, self.step)
        self.accelerator.wait_for_everyone()
        return result

    def train(self) -> dict[str, Any]:
        """Train to ``max_steps``; returns the figures for ``metrics.json``."""
        args, acc = self.args, self.accelerator
        self.maybe_resume()
        if acc.is_main_process and args.report_to not in (None, "none"):
            acc.init_trackers("selfsup", config=flat_config({**asdict(args), **self.run_config}))
        data = self.batches()
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not acc.is_main_process, desc="train",
                   dynamic_ncols=True)
        self.model.train()
        samples, train_time, nonfinite, evals = 0, 0.0, 0, {}
        recent: deque[dict[str, float]] = deque(maxlen=max(1, args.logging_steps))   # the objective's own figures
        gb = args.per_device_train_batch_size * acc.num_processes * args.gradient_accumulation_steps
        while self.step < args.max_steps:
            t0 = time.perf_counter()
            micro = [next(data) for _ in range(args.gradient_accumulation_steps)]
            loss, metrics, _ = self.accumulate(micro)
            if not math.isfinite(loss):
                nonfinite += 1
                self.optimizer.zero_grad(set_to_none=True)
                acc.print(f"warning: non-finite loss at step {self.step + 1}; update skipped")
                if nonfinite >= MAX_NONFINITE_STEPS:
                    raise SelfsupError(f"loss was not finite for {nonfinite} steps in a row; lower "
                                       "--learning_rate or use --mixed_precision bf16 instead of fp16")
                continue
            nonfinite = 0
            recent.append(metrics)
            grad_norm = self.optimizer_step()
            self.step += 1
            self.objective.on_step_end(self.step)
            train_time += time.perf_counter() - t0
            samples += gb
            self.history.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples / max(train_time, 1e-9):.1f}")
            if self.step % args.logging_steps == 0 or self.step == args.max_steps:
                logs = {"train/loss": loss, "train/lr": self.scheduler.get_last_lr()[0],
                        "train/samples_per_second": samples / max(train_time, 1e-9), "train/epoch": self.epoch}
                if grad_norm is not None:
                    logs["train/grad_norm"] = grad_norm
                logs.update({f"train/{k}": v for k, v in metrics.items()})
                acc.log(logs, step=self.step)
            if args.eval_steps and self.step % args.eval_steps == 0 and self.step < args.max_steps:
                evals = self.evaluate()
                bar.write(f"step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in evals.items()))
            if args.checkpointing_steps and self.step % args.checkpointing_steps == 0:
                self.save()
        bar.close()
        evals = self.evaluate()
        window = self.history[-max(1, args.logging_steps):]
        result = {"num_processes": acc.num_processes, "steps": self.step,
                  "train_loss": sum(window) / len(window) if window else float("nan"),
                  "samples_per_second": samples / train_time if train_time else 0.0,
                  "global_batch_size": gb, **window_means(recent), **evals}
        if acc.is_main_process:
            result["training_curves"] = write_training_curves(
                args.output_dir, curves(self.history, self.evaluations), self.run_config.get("recipe", ""))
        return result


def window_means(window: Sequence[dict[str, float]]) -> dict[str, float]:
    """``{"train/<name>": mean}`` of the objective's figures (``ObjectiveOutput.metrics``: a pretext task's accuracy,
    the collapse monitors) over the steps of ``window`` that report each, on this process."""
    names = sorted({k for step in window for k in step})
    return {f"train/{k}": sum(v) / len(v) for k in names if (v := [step[k] for step in window if k in step])}


def log_images(accelerator: Accelerator, images: dict[str, Any], step: int) -> None:
    """Pictures an ``eval_fn`` returned (HWC uint8 arrays) to the trackers that take images (tensorboard)."""
    if not images:
        return
    for tracker in accelerator.trackers:
        if hasattr(tracker, "log_images"):
            tracker.log_images(images, step=step, dataformats="HWC")


def flat_config(d: dict[str, Any]) -> dict[str, Any]:
    """Tracker-friendly copy of a config: scalars kept, everything else as a string."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in d.items()}


def write_metrics(output_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``OUTPUT_DIR/metrics.json`` (a flat JSON object) atomically."""
    path = Path(output_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    os.replace(tmp, path)
    return path


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch identically on every process (masks come from the objective's RNG)."""
    set_seed(seed)
