"""GPT training speed: ``selfsup`` CausalLanguageModeling vs ``transformers`` GPT2LMHeadModel.

Both models hold the same weights (ours, converted with ``selfsup.objectives.autoregressive.hf_gpt2.to_transformers``), get the
same packed blocks of token ids (``labels = input_ids``, as ``run_clm`` trains GPT-2) and the same
``torch.optim.AdamW``. A step = forward + backward + optimizer step, in train mode (dropout 0.1 on both, as
GPT-2). Throughput (samples/s) is measured in fp32 and under bf16 CPU autocast; warmup steps are excluded and the
two sides are timed in alternating rounds (order flipped every round) so machine noise hits both; the median
round per side is reported. bf16 is skipped under ``--precision both`` when the CPU has no native bf16; ask for it
with ``--precision bf16``. Before timing, the mean loss of both on the first step (fp32, dropout off so both are
deterministic) must agree to 1e-5, and again after one AdamW step, or the run fails.

Configs (``--config``): ``small`` (default; the recipe's ``--model_size small``): 256 wide, 4 layers, 4 heads,
intermediate 1024, context 128, vocabulary 8,000 (a byte-level BPE of that size), batch 16. ``nanogpt``: nanoGPT's
CPU Shakespeare shape: 128 wide, 4 layers, 4 heads, context 64, vocabulary 66 (characters), batch 12, no dropout.

    python benchmarks/gpt_speed.py --quick          # under a minute
    python benchmarks/gpt_speed.py                  # full run, a few minutes
    python benchmarks/gpt_speed.py --config nanogpt --precision fp32
    python -m benchmarks.gpt_speed --quick --precision fp32 --threads 1 --compile    # + ours compiled (inductor)

``--compile [BACKEND]`` times ours a third time in the same rounds, a fresh copy with the same weights whose backbone
is compiled in place (``selfsup.compiling.compile_backbones``, as the recipes' ``--torch_compile``); compilation
happens in the untimed warmup and is reported apart (``compile_seconds``).

Where ours saves time: the backbone runs on the N - 1 positions that have a target (GPT-2 runs all N and drops
the last logits); the tied head and the cross-entropy run fused in chunks of rows (no (tokens x vocabulary)
logits or gradient in memory); GELU is one fused kernel (transformers' ``gelu_new`` is seven elementwise
operations each way); no attention mask is built (SDPA's causal kernel).

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (fp32, samples/s, ours/reference,
higher is better) plus ``*_bf16``, ``loss_ours``, ``loss_reference``, ``model_gflop_per_sample`` with each side's
MFU (``mfu_ours``, ``mfu_reference``, and ``mfu_ours_executed`` on the FLOPs ours runs itself), and ``config``; with
``--compile`` also ``ours_compiled``, ``ratio_compiled``, ``compile_gain`` and ``mfu_ours_compiled``.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import Tensor, nn

from selfsup.benchmarking import (StepPair, check_agreement, interleaved_medians, precision_tags, record, speed_args,
                                  step_pair_of, training_step)
from selfsup.objectives.autoregressive.clm import CausalLanguageModeling
from selfsup.objectives.autoregressive.hf_gpt2 import gpt_and_gpt2
from selfsup.objectives.autoregressive.sizes import SPEED_CONFIGS as CONFIGS

OPTIM = dict(lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
LOSS_TOL = 1e-5


def make_batch(config: dict, seed: int = 0, batch_size: int | None = None) -> Tensor:
    """(B, N) token ids, shared by both sides (B: the config's batch size unless given)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["vocab_size"], (batch_size or config["batch_size"], config["context"]),
                         generator=gen)


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), **OPTIM, fused=fused or None)


def ours_loss(model: CausalLanguageModeling, ids: Tensor) -> Tensor:
    out = model({"input_ids": ids})
    return out.loss / out.num_targets


def reference_loss(model: nn.Module, ids: Tensor) -> Tensor:
    return model(input_ids=ids, labels=ids).loss


def check_losses(config: dict, fused: bool) -> tuple[float, float]:
    """First-step fp32 mean loss of both (dropout off), and agreement again after one AdamW step."""
    ours, ref = gpt_and_gpt2(config)
    ids = make_batch(config)
    ours.eval(), ref.eval()
    first: list[float] = []
    for loss_fn, model in ((ours_loss, ours), (reference_loss, ref)):
        opt = make_optimizer(model, fused)
        first.append(loss_fn(model, ids).item())
        training_step(loss_fn, model, opt, ids, bf16=False)()
    with torch.no_grad():
        second = [ours_loss(ours, ids).item(), reference_loss(ref, ids).item()]
    check_agreement([("first step", *first, LOSS_TOL), ("after one AdamW step", *second, LOSS_TOL)])
    return first[0], first[1]


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True,
              batch_size: int | None = None, compile_backend: str | None = None, config: str = "small") -> StepPair:
    """Both sides' training steps on ``device`` (and ours again with its backbone compiled, when asked)."""
    c = CONFIGS[config]
    ours, ref = (m.to(device) for m in gpt_and_gpt2(c))
    twin = gpt_and_gpt2(c)[0].to(device) if compile_backend else None
    ids = make_batch(c, batch_size=batch_size).to(device)
    return step_pair_of(ours, ref, ours_loss, reference_loss, lambda m: make_optimizer(m, fused), ids, len(ids), bf16,
                        twin, compile_backend)


def parse_args() -> argparse.Namespace:
    config = "small"
    if "--config" in sys.argv:  # our own flag, taken out before the shared speed flags are parsed
        i = sys.argv.index("--config")
        config = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    if config not in CONFIGS:
        raise SystemExit(f"error: --config must be one of {', '.join(CONFIGS)}")
    args = speed_args(__doc__.splitlines()[0], "both", dict(steps=3, rounds=3, warmup=2),
                      dict(steps=10, rounds=7, warmup=3), compile=True)
    args.config = config
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {args.config}, steps {args.steps} "
          f"x rounds {args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}", flush=True)
    loss_ours, loss_ref = check_losses(config, args.fused)
    result: dict = {"name": f"gpt_speed_{args.config}", "unit": "samples/s", "ours": None, "reference": None,
                    "ratio": None, "ours_bf16": None, "reference_bf16": None, "ratio_bf16": None}
    flops = executed = None
    for tag in precision_tags(args.precision, result):
        pair = step_pair("cpu", tag == "bf16", args.fused, compile_backend=args.compile, config=args.config)
        flops = pair.flops_per_sample() if flops is None else flops   # the model's: the reference's forward + backward
        medians = interleaved_medians(pair.sides(), args.steps, args.rounds, args.warmup, pair.per_step, tag,
                                      "samples/s")
        executed = pair.executed_flops_per_sample() if executed is None else executed
        record(result, tag, medians["ours"], medians["reference"], flops, medians.get("ours_compiled"),
               executed_flops_per_sample=executed)
        if pair.compile_seconds:
            result[f"compile_seconds{'' if tag == 'fp32' else '_' + tag}"] = round(pair.compile_seconds[0], 1)
            print(f"[{tag}] first compiled step (compilation): {pair.compile_seconds[0]:.1f} s", flush=True)
    result.update(model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 6),
                  loss_reference=round(loss_ref, 6), config=dict(
        **config["backbone"], vocab_size=config["vocab_size"], context=config["context"],
        batch_size=config["batch_size"], optimizer=dict(OPTIM, fused=args.fused), steps=args.steps,
        rounds=args.rounds, warmup=args.warmup, threads=torch.get_num_threads(), compile=args.compile))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
