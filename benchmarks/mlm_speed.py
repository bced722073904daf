"""Masked-LM training speed: ``selfsup`` MaskedLanguageModeling vs ``transformers`` BertForMaskedLM.

Both models are built from the same weights (ours, converted with ``selfsup.hf_bert.to_transformers``), get the
same batch and the same masks (corrupted once with ``objective.corrupt``, then passed as ``labels``), and the same
``torch.optim.AdamW``. A step = forward + backward + optimizer step, in train mode (dropout 0.1 on both).
Throughput (samples/s) is measured in fp32 and under bf16 CPU autocast; warmup steps are excluded and the two
sides are timed in alternating rounds (order flipped every round) so machine noise hits both; the median round
per side is reported. bf16 is skipped under ``--precision both`` when the CPU has no native bf16 (oneDNN
reports none, e.g. AVX2-only CPUs, where bf16 matmuls run emulated, 30-60x slower than fp32); ask for it
explicitly with ``--precision bf16``. Before timing, the mean loss of both on the first step (fp32, dropout off
so the two are deterministic) must agree to 1e-5, and again after one optimizer step, or the run fails.

Config: hidden 256, 4 layers, 4 heads, intermediate 1024, seq 128, batch 32, vocab 30,522, no padding.

    python benchmarks/mlm_speed.py --quick          # under a minute
    python benchmarks/mlm_speed.py                  # full run, a few minutes
    python benchmarks/mlm_speed.py --precision fp32 --steps 5 --threads 2

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (fp32, samples/s, ours/reference,
higher is better) plus ``*_bf16``, ``loss_ours``, ``loss_reference`` and ``config``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from typing import Callable

import torch
from torch import Tensor, nn

from selfsup.backbones.transformer import TransformerConfig
from selfsup.hf_bert import to_transformers
from selfsup.objectives.mlm import MaskedLanguageModeling

VOCAB, SEQ, BATCH, MASK_ID, PAD_ID, SPECIAL = 30_522, 128, 32, 4, 0, (0, 1, 2, 3, 4)
MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, dropout=0.1, attention_dropout=0.1)
OPTIM = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
LOSS_TOL = 1e-5
Step = Callable[[], None]


def native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def build_models(seed: int = 0) -> tuple[MaskedLanguageModeling, nn.Module]:
    """Ours and the reference with identical weights, both in train mode."""
    torch.manual_seed(seed)
    ours = MaskedLanguageModeling(TransformerConfig(**MODEL), VOCAB, mask_token_id=MASK_ID, pad_token_id=PAD_ID,
                                  special_token_ids=SPECIAL, max_positions=512, mlm_probability=0.15)
    return ours.train(), to_transformers(ours).train()


def make_batch(objective: MaskedLanguageModeling, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(corrupted input_ids, labels with -100 on unmasked), shared by both sides."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), VOCAB, (BATCH, SEQ), generator=gen)
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return objective.corrupt(ids, generator=gen)


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), **OPTIM, fused=fused or None)


def ours_loss(model: MaskedLanguageModeling, inputs: Tensor, labels: Tensor) -> Tensor:
    out = model({"input_ids": inputs, "labels": labels})
    return out.loss / out.num_targets


def reference_loss(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
    return model(input_ids=inputs, labels=labels).loss


def make_step(loss_fn: Callable, model: nn.Module, opt: torch.optim.Optimizer, inputs: Tensor, labels: Tensor,
              bf16: bool) -> Step:
    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model, inputs, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def check_losses(fused: bool) -> tuple[float, float]:
    """First-step fp32 mean loss of both (dropout off), and agreement again after one AdamW step."""
    ours, ref = build_models()
    inputs, labels = make_batch(ours)
    ours.eval(), ref.eval()
    first: list[float] = []
    for loss_fn, model in ((ours_loss, ours), (reference_loss, ref)):
        opt = make_optimizer(model, fused)
        loss = loss_fn(model, inputs, labels)
        first.append(loss.item())
        make_step(loss_fn, model, opt, inputs, labels, bf16=False)()
    with torch.no_grad():
        second = [ours_loss(ours, inputs, labels).item(), reference_loss(ref, inputs, labels).item()]
    for what, (a, b) in (("first step", first), ("after one AdamW step", second)):
        print(f"loss {what}: ours {a:.7f}  reference {b:.7f}  |diff| {abs(a - b):.2e}")
        if abs(a - b) > LOSS_TOL:
            raise SystemExit(f"FAIL: losses differ by {abs(a - b):.3e} > {LOSS_TOL} ({what}); "
                             "the two models are not equivalent")
    return first[0], first[1]


def time_steps(step: Step, steps: int) -> float:
    """Samples per second over ``steps`` steps."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def measure(bf16: bool, steps: int, rounds: int, warmup: int, fused: bool) -> tuple[float, float]:
    """Median samples/s of (ours, reference) over interleaved rounds."""
    ours, ref = build_models()
    inputs, labels = make_batch(ours)
    sides = {
        "ours": make_step(ours_loss, ours, make_optimizer(ours, fused), inputs, labels, bf16),
        "reference": make_step(reference_loss, ref, make_optimizer(ref, fused), inputs, labels, bf16),
    }
    for step in sides.values():
        time_steps(step, warmup)
    results: dict[str, list[float]] = {name: [] for name in sides}
    tag = "bf16" if bf16 else "fp32"
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            results[name].append(time_steps(sides[name], steps))
        print(f"[{tag}] round {r + 1}/{rounds}: ours {results['ours'][-1]:.1f}  "
              f"reference {results['reference'][-1]:.1f} samples/s", flush=True)
    return statistics.median(results["ours"]), statistics.median(results["reference"])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and rounds; whole run under a minute")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=None, help="interleaved measurement rounds")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side before measuring")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--fused", action="store_true", help="fused AdamW for both sides")
    args = p.parse_args()
    quick_defaults, full_defaults = dict(steps=1, rounds=2, warmup=1), dict(steps=3, rounds=5, warmup=2)
    for key, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}", flush=True)
    loss_ours, loss_ref = check_losses(args.fused)
    result: dict = {"name": "mlm_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None,
                    "ours_bf16": None, "reference_bf16": None, "ratio_bf16": None}
    tags = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    if args.precision == "both" and not native_bf16():
        tags = ("fp32",)
        result["bf16_skipped"] = "CPU has no native bf16 (emulated; use --precision bf16 to force)"
        print(f"bf16 skipped: {result['bf16_skipped']}", flush=True)
    for tag in tags:
        ours, ref = measure(tag == "bf16", args.steps, args.rounds, args.warmup, args.fused)
        suffix = "" if tag == "fp32" else "_bf16"
        result.update({f"ours{suffix}": round(ours, 2), f"reference{suffix}": round(ref, 2),
                       f"ratio{suffix}": round(ours / ref, 3)})
        print(f"[{tag}] median: ours {ours:.1f}  reference {ref:.1f} samples/s  ratio {ours / ref:.2f}x", flush=True)
    result.update(loss_ours=round(loss_ours, 6), loss_reference=round(loss_ref, 6), config=dict(
        **MODEL, vocab_size=VOCAB, seq_len=SEQ, batch_size=BATCH, optimizer=dict(OPTIM, fused=args.fused),
        steps=args.steps, rounds=args.rounds, warmup=args.warmup, threads=torch.get_num_threads()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
