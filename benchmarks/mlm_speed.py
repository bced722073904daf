"""Masked-LM training speed: ``selfsup`` MaskedLanguageModeling vs ``transformers`` BertForMaskedLM.

Both models are built from the same weights (ours, converted with ``selfsup.objectives.masked.hf_bert.to_transformers``), get the
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
higher is better) plus ``*_bf16``, ``loss_ours``, ``loss_reference`` and ``config``, and each side's MFU
(``mfu_ours``, ``mfu_reference``: the reference's forward + backward FLOPs per sample, ``model_gflop_per_sample``,
times samples/s over a square matmul measured in the same run, ``matmul_peak_gflops``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
from typing import Callable

import torch
from torch import Tensor, nn

from selfsup.backbones.transformer import TransformerConfig
from selfsup.benchmarking import Step, StepPair, interleaved, precision_tags, record, speed_args, step_pair_of
from selfsup.objectives.masked.hf_bert import compose_bert
from selfsup.objectives.masked.hf_bert import to_transformers
from selfsup.objectives.masked.mlm import MaskedLanguageModeling
from selfsup.objectives.masking import TokenMasker

VOCAB, SEQ, BATCH, MASK_ID, PAD_ID, SPECIAL = 30_522, 128, 32, 4, 0, (0, 1, 2, 3, 4)
MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, dropout=0.1, attention_dropout=0.1)
OPTIM = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
LOSS_TOL = 1e-5



def build_models(seed: int = 0) -> tuple[MaskedLanguageModeling, nn.Module]:
    """Ours and the reference with identical weights, both in train mode."""
    torch.manual_seed(seed)
    masker = TokenMasker(MASK_ID, VOCAB, 0.15, special_ids=tuple({*SPECIAL, PAD_ID}))
    ours = compose_bert(TransformerConfig(**MODEL), masker, PAD_ID, max_positions=512)
    return ours.train(), to_transformers(ours).train()


def make_batch(objective: MaskedLanguageModeling, seed: int = 0, batch_size: int = BATCH) -> tuple[Tensor, Tensor]:
    """(corrupted input_ids, labels with -100 on unmasked), shared by both sides."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), VOCAB, (batch_size, SEQ), generator=gen)
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



def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int = BATCH,
              compile_backend: str | None = None) -> StepPair:
    """Both sides' training steps on ``device`` (and ours again with its backbone compiled, when asked)."""
    ours, ref = build_models()
    batch = tuple(t.to(device) for t in make_batch(ours, batch_size=batch_size))
    ours, ref = ours.to(device), ref.to(device)
    twin = build_models()[0].to(device) if compile_backend else None
    return step_pair_of(ours, ref, lambda m, b: ours_loss(m, *b), lambda m, b: reference_loss(m, *b),
                        lambda m: make_optimizer(m, fused), batch, batch_size, bf16, twin, compile_backend)


def measure(bf16: bool, steps: int, rounds: int, warmup: int, fused: bool) -> tuple[float, float]:
    """Median samples/s of (ours, reference) over interleaved rounds."""
    return interleaved(step_pair("cpu", bf16, fused).sides(), steps, rounds, warmup, BATCH, "bf16" if bf16 else "fp32")


def parse_args() -> argparse.Namespace:
    return speed_args(__doc__.splitlines()[0], "both", dict(steps=1, rounds=2, warmup=1), dict(steps=3, rounds=5, warmup=2))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}", flush=True)
    loss_ours, loss_ref = check_losses(args.fused)
    result: dict = {"name": "mlm_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None,
                    "ours_bf16": None, "reference_bf16": None, "ratio_bf16": None}
    pair = step_pair()
    flops, executed = pair.flops_per_sample(), pair.executed_flops_per_sample()
    del pair              # the model's FLOPs: the reference's forward + backward
    for tag in precision_tags(args.precision, result):
        record(result, tag, *measure(tag == "bf16", args.steps, args.rounds, args.warmup, args.fused), flops,
               executed_flops_per_sample=executed)
    result.update(model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 6),
                  loss_reference=round(loss_ref, 6), config=dict(
        **MODEL, vocab_size=VOCAB, seq_len=SEQ, batch_size=BATCH, optimizer=dict(OPTIM, fused=args.fused),
        steps=args.steps, rounds=args.rounds, warmup=args.warmup, threads=torch.get_num_threads()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
