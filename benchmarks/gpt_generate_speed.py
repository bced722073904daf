"""GPT sampling speed: ``selfsup.objectives.autoregressive.clm.generate`` vs ``GPT2LMHeadModel.generate``, both with a key/value cache.

Both models hold the same weights (ours converted with ``selfsup.objectives.autoregressive.hf_gpt2.to_transformers``), in eval
mode, and continue the same prompts greedily (``do_sample=False``: the two must give the same tokens, checked
before timing, or the run fails). Throughput is new tokens per second over the batch (batch x new tokens per
call), the sides timed in alternating rounds (``selfsup.benchmarking.interleaved_medians``), the median round
reported. Our ``generate(use_cache=False)``, which recomputes the context for every token, is timed in the same
rounds as a third side, so the cache's own gain is measured too.

Configs (``--config``): those of ``benchmarks/gpt_speed.py`` (``small``: 256 wide, 4 layers, context 128,
vocabulary 8,000; ``nanogpt``: 128 wide, context 64, 66 characters), with ``--batch`` prompts of
``--prompt_tokens`` ids continued to the full context.

    python benchmarks/gpt_generate_speed.py --quick
    OMP_NUM_THREADS=1 python benchmarks/gpt_generate_speed.py --threads 1

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (new tokens/s, ours/reference, higher
is better), ``ours_no_cache`` and ``cache_gain`` (cached over recomputed, ours).
"""
from __future__ import annotations

import argparse
import json

import torch

from selfsup.benchmarking import interleaved_medians
from selfsup.objectives.autoregressive.clm import generate
from selfsup.objectives.autoregressive.hf_gpt2 import gpt_and_gpt2
from selfsup.objectives.autoregressive.sizes import SPEED_CONFIGS as CONFIGS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt_tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, --quick 2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    context = config["context"]
    new = context - args.prompt_tokens if not args.quick else min(32, context - args.prompt_tokens)
    ours, ref = gpt_and_gpt2(config)
    ours.eval(), ref.eval()
    prompt = torch.randint(0, config["vocab_size"], (args.batch, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(prompt)
    sides = {
        "ours": lambda: generate(ours, prompt, new, greedy=True),
        "reference": lambda: ref.generate(prompt, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                          do_sample=False, use_cache=True, pad_token_id=0),
        "ours_no_cache": lambda: generate(ours, prompt, new, greedy=True, use_cache=False),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, config {args.config}, batch {args.batch}, "
          f"prompt {args.prompt_tokens} + {new} new tokens, {args.rounds} rounds", flush=True)
    with torch.no_grad():
        outputs = {name: side() for name, side in sides.items()}   # also the warmup
    if not (torch.equal(outputs["ours"], outputs["reference"]) and torch.equal(outputs["ours"], outputs["ours_no_cache"])):
        raise SystemExit("the greedy continuations differ: not timing")
    print("greedy continuations: identical on all three sides", flush=True)
    with torch.no_grad():
        med = interleaved_medians(sides, 1, args.rounds, 0, args.batch * new, args.config, "new tokens/s")
    result = {"name": f"gpt_generate_speed_{args.config}", "unit": "new tokens/s", "ours": round(med["ours"], 1),
              "reference": round(med["reference"], 1), "ratio": round(med["ours"] / med["reference"], 3),
              "ours_no_cache": round(med["ours_no_cache"], 1),
              "cache_gain": round(med["ours"] / med["ours_no_cache"], 3),
              "config": dict(config=args.config, batch=args.batch,
                             prompt_tokens=args.prompt_tokens, new_tokens=new, rounds=args.rounds,
                             threads=torch.get_num_threads())}
    print(f"median: ours {med['ours']:.0f}, reference {med['reference']:.0f}, ours without cache "
          f"{med['ours_no_cache']:.0f} new tokens/s; ratio {result['ratio']:.2f}x, cache gain {result['cache_gain']:.2f}x")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
