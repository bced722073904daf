"""Speed benchmarks' shared parts: interleaved timing of ours against a reference in one run, and the common flags
(used by ``benchmarks/*_speed.py``)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

Step = Callable[[], None]


def native_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (else bf16 autocast is emulated, 30-60x slower)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def machine() -> str:
    """The CPU's model name (``/proc/cpuinfo``), the name every figure in ``docs/`` carries."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return names[0] if names else (platform.processor() or platform.machine())


def time_steps(step: Step, steps: int, batch_size: int) -> float:
    """Samples per second over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def interleaved(sides: dict[str, Step], steps: int, rounds: int, warmup: int, batch_size: int,
                tag: str) -> tuple[float, float]:
    """Median samples/s of ``sides["ours"]`` and ``sides["reference"]``: untimed warmup, then rounds in which the
    two are timed one after the other, the order flipped every round, so machine noise hits both."""
    medians = interleaved_medians(sides, steps, rounds, warmup, batch_size, tag, "samples/s")
    return medians["ours"], medians["reference"]


def interleaved_medians(sides: dict[str, Step], steps: int, rounds: int, warmup: int, per_step: int, tag: str,
                        unit: str) -> dict[str, float]:
    """:func:`interleaved` for any number of sides: the median over rounds of ``per_step`` items per step per
    second, per side; the order of the sides is reversed every other round."""
    for step in sides.values():
        time_steps(step, warmup, per_step)
    results: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            results[name].append(time_steps(sides[name], steps, per_step))
        print(f"[{tag}] round {r + 1}/{rounds}: " + "  ".join(f"{k} {v[-1]:.2f}" for k, v in results.items())
              + f" {unit}", flush=True)
    return {name: statistics.median(v) for name, v in results.items()}


def speed_args(description: str, precision: str, quick: dict, full: dict, compile: bool = False) -> argparse.Namespace:
    """``--quick --steps --rounds --warmup --precision --threads --[no-]fused`` (and ``--compile [BACKEND]`` when
    ``compile``); unset counts come from quick/full."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="few steps and rounds; a short run")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved measurement rounds")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side before measuring")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default=precision,
                   help="bf16 autocast is emulated (very slow) on CPUs without native bf16")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="fused AdamW for both sides (the default: selfsup's engine and transformers' Trainer, "
                        "adamw_torch_fused, both run it); --no-fused for the per-tensor loop")
    if compile:
        p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                       choices=("inductor", "aot_eager", "eager"),
                       help="also time ours with its backbone compiled (torch.compile, default backend inductor) as a "
                            "third side in the same rounds; compilation happens in the untimed warmup")
    args = p.parse_args()
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def autocast(device: str | torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s type (CPU or CUDA) when ``bf16``, else nothing."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def training_step(loss_fn: Callable, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch,
                  bf16: bool) -> Step:
    """One timed step: ``loss_fn(model, batch)`` (under bf16 autocast on the model's device if asked), backward,
    optimizer step, gradients cleared."""
    device = next(model.parameters()).device

    def step() -> None:
        with autocast(device, bf16):
            loss = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def cycling_step(loss_fn: Callable, batches: Sequence, optimizer: torch.optim.Optimizer, bf16: bool = False,
                 device: str | torch.device = "cpu") -> Step:
    """One timed step over ``batches`` in turn: ``loss_fn(batch)`` (under bf16 autocast on ``device`` if asked)
    backward, optimizer step, gradients cleared (the step benchmarks whose two sides read different batch
    objects)."""
    position = [0]

    def step() -> None:
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        with autocast(device, bf16):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


@dataclasses.dataclass
class StepPair:
    """One family's step benchmark built on one device in one precision (each ``benchmarks/*_speed.py`` has a
    ``step_pair``): the timed steps of ours and of the reference, ``per_step`` samples per step, and
    ``reference_pass``, one forward + backward of the reference on one batch (the FLOPs MFU counts). With a
    compile backend asked for, ``ours_compiled`` is ours again, a fresh copy with its backbone(s) compiled."""

    ours: Step
    reference: Step
    per_step: int
    reference_pass: Callable[[], object]
    unit: str = "samples/s"
    ours_compiled: Step | None = None
    compile_seconds: list[float] = dataclasses.field(default_factory=list)   # the compiled side's first call
    ours_pass: Callable[[], object] | None = None     # one forward + backward of ours: the FLOPs it executes

    def sides(self) -> dict[str, Step]:
        """``ours``, ``ours_compiled`` (when built) and ``reference``: what :func:`interleaved_medians` times."""
        sides = {"ours": self.ours}
        if self.ours_compiled is not None:
            sides["ours_compiled"] = self.ours_compiled
        return {**sides, "reference": self.reference}

    def flops_per_sample(self) -> float:
        """The reference's forward + backward FLOPs per sample (:func:`count_flops` of ``reference_pass``)."""
        return count_flops(self.reference_pass) / self.per_step

    def executed_flops_per_sample(self) -> float | None:
        """The FLOPs per sample ours executes (fewer where it skips work the reference does), when it has a pass."""
        return None if self.ours_pass is None else count_flops(self.ours_pass) / self.per_step


def step_pair_of(ours: torch.nn.Module, reference: torch.nn.Module, ours_loss: Callable, reference_loss: Callable,
                 make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer], batch, per_step: int, bf16: bool,
                 twin: torch.nn.Module | None = None, compile_backend: str | None = None) -> StepPair:
    """The :class:`StepPair` of two models on one device that read the same ``batch`` through ``loss(model,
    batch)``: :func:`training_step` for each, and with ``compile_backend`` a third, ``twin`` (a fresh copy of ours
    with the same weights) with its backbones compiled in place (``selfsup.compiling``)."""
    from selfsup.compiling import compile_backbones

    def reference_pass() -> None:
        reference_loss(reference, batch).backward()
        reference.zero_grad(set_to_none=True)

    def ours_pass() -> None:
        ours_loss(ours, batch).backward()
        ours.zero_grad(set_to_none=True)

    compiled, seconds = None, []
    if compile_backend:
        if twin is None:
            raise ValueError("a compiled side needs a twin of ours to compile")
        compile_backbones(twin, compile_backend)
        compiled = first_call_timed(training_step(ours_loss, twin, make_optimizer(twin), batch, bf16), seconds)
    return StepPair(training_step(ours_loss, ours, make_optimizer(ours), batch, bf16),
                    training_step(reference_loss, reference, make_optimizer(reference), batch, bf16),
                    per_step, reference_pass, ours_compiled=compiled, compile_seconds=seconds, ours_pass=ours_pass)


def first_call_timed(step: Step, seconds: list[float]) -> Step:
    """``step``, with the wall time of its first call (a compiled step's compilation) appended to ``seconds``."""
    def timed() -> None:
        if seconds:
            return step()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return timed


def check_agreement(checks: Sequence[tuple[str, float, float, float]]) -> None:
    """``(what, ours, reference, tolerance)`` per check: print each and stop the run (``SystemExit``) when the two
    sides differ by more than the tolerance: timing models that are not equivalent measures nothing."""
    for what, a, b, tol in checks:
        print(f"loss {what}: ours {a:.7f}  reference {b:.7f}  |diff| {abs(a - b):.2e}")
        if abs(a - b) > tol:
            raise SystemExit(f"FAIL: losses differ by {abs(a - b):.3e} > {tol} ({what}); "
                             "the two models are not equivalent")


def precision_tags(precision: str, result: dict) -> tuple[str, ...]:
    """The precisions to time for ``--precision``; "both" leaves bf16 out on a CPU without native bf16 (and says
    so in ``result["bf16_skipped"]``)."""
    if precision != "both":
        return (precision,)
    if not native_bf16():
        result["bf16_skipped"] = "CPU has no native bf16 (emulated; use --precision bf16 to force)"
        print(f"bf16 skipped: {result['bf16_skipped']}", flush=True)
        return ("fp32",)
    return ("fp32", "bf16")


def record(result: dict, tag: str, ours: float, reference: float, flops_per_sample: float | None = None,
           compiled: float | None = None, device: str | torch.device = "cpu",
           executed_flops_per_sample: float | None = None) -> None:
    """Put one precision's medians and their ratio in ``result`` (``*_bf16`` keys for bf16) and print them; with
    ``flops_per_sample`` (the model's forward + backward FLOPs per sample, :func:`count_flops` on the reference)
    also each side's MFU against :func:`matmul_peak` on ``device`` in that precision (``mfu_ours``,
    ``mfu_reference``, ``matmul_peak_gflops``); with ``compiled`` (ours with its backbones compiled, same rounds)
    ``ours_compiled``, ``ratio_compiled`` (over the reference), ``compile_gain`` (over ours eager) and its MFU; with
    ``executed_flops_per_sample`` (the FLOPs ours runs, fewer where it skips the reference's work) also
    ``mfu_ours_executed``, how close ours' own kernels come to the peak."""
    suffix = "" if tag == "fp32" else f"_{tag}"
    result.update({f"ours{suffix}": round(ours, 2), f"reference{suffix}": round(reference, 2),
                   f"ratio{suffix}": round(ours / reference, 3)})
    line = f"[{tag}] median: ours {ours:.1f}  reference {reference:.1f} samples/s  ratio {ours / reference:.2f}x"
    if compiled is not None:
        result.update({f"ours_compiled{suffix}": round(compiled, 2),
                       f"ratio_compiled{suffix}": round(compiled / reference, 3),
                       f"compile_gain{suffix}": round(compiled / ours, 3)})
        line += (f"  ours compiled {compiled:.1f} ({compiled / reference:.2f}x the reference, "
                 f"{compiled / ours:.2f}x eager)")
    if flops_per_sample is not None:
        peak = matmul_peak(device, dtype=torch.bfloat16 if tag == "bf16" else torch.float32)
        result.update({f"mfu_ours{suffix}": round(mfu(flops_per_sample, ours, peak), 4),
                       f"mfu_reference{suffix}": round(mfu(flops_per_sample, reference, peak), 4),
                       f"matmul_peak_gflops{suffix}": round(peak / 1e9, 1)})
        line += (f"  MFU {mfu(flops_per_sample, ours, peak):.1%} vs {mfu(flops_per_sample, reference, peak):.1%} "
                 f"of a measured {peak / 1e9:.0f} GFLOP/s {tag} matmul")
        if compiled is not None:
            result[f"mfu_ours_compiled{suffix}"] = round(mfu(flops_per_sample, compiled, peak), 4)
            line += f" (compiled {mfu(flops_per_sample, compiled, peak):.1%})"
        if executed_flops_per_sample is not None:
            result[f"mfu_ours_executed{suffix}"] = round(mfu(executed_flops_per_sample, ours, peak), 4)
            result["ours_executed_gflop_per_sample"] = round(executed_flops_per_sample / 1e9, 4)
            line += f"; ours on the FLOPs it runs ({executed_flops_per_sample / flops_per_sample:.0%} of them) " \
                    f"{mfu(executed_flops_per_sample, ours, peak):.1%}"
    print(line, flush=True)


# -- model FLOPs utilisation --------------------------------------------------------------------------------------
def _cpu_flash_flops() -> dict:
    """FLOP formulas for SDPA's CPU flash kernels, which ``torch.utils.flop_counter`` counts only on CUDA: the same
    counts as its formulas for the CUDA kernels (two matmuls forward; five backward, the scores recomputed)."""
    from torch.utils import flop_counter as fc

    def forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query.shape, key.shape, value.shape)

    def backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)

    forward._get_raw = backward._get_raw = True     # called with the tensors, not wrapped again
    aten = torch.ops.aten
    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(fn: Callable[[], object]) -> int:
    """The floating-point operations of one call of ``fn`` (matmuls, convolutions and attention, forward and
    backward: what MFU counts), by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    mode = FlopCounterMode(display=False, custom_mapping=_cpu_flash_flops())
    with mode:
        fn()
    return int(mode.get_total_flops())


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, size: int | None = None,
                repeats: int = 5) -> float:
    """The measured FLOP/s of a square matmul (``size`` 1024 on a CPU, 8192 on a GPU): the best of ``repeats``
    after a warm-up, at torch's current thread count -- the peak MFU is taken against."""
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def mfu(flops_per_step: float, steps_per_second: float, peak: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (``flops_per_step`` x ``steps_per_second``) over ``peak``."""
    if peak <= 0:
        raise ValueError("the peak FLOP/s must be positive")
    return flops_per_step * steps_per_second / peak
