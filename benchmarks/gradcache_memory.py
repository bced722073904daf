"""Peak memory of one CLIP training step: one batch of k * b, GradCache over k micro-batches of b
(``--contrastive_accumulation``, ``selfsup/gradcache.py``), and one batch of b, on CPU.

Each configuration runs in its own fresh process: build the objective and its Trainer (AdamW), run one step on
2 examples (one-time set-up and AdamW's moments stay out of the figure), make the synthetic micro-batches (the
same k * b pairs for the two full-batch configurations, whose losses must agree), read the resident set size
(``VmRSS``), run one optimizer step through ``Trainer.accumulate`` + ``Trainer.optimizer_step``, then read the
process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``). The figure is the growth, peak minus the RSS before
the step: the step's activations and gradients. RSS counts what the allocator took from the system, so it is
an upper bound of the tensors alive at the peak, measured the same way for all three. The time of a step (the
faster of two more steps, after the peak is read) is printed beside it: GradCache runs every forward twice.

Config: the recipe's ``small`` CLIP (ViT 4 x 128 on 64 x 64 images in 8 x 8 patches: 65 tokens; causal text
Transformer 4 x 128 over captions padded to 77 tokens; fp32), k = 4 micro-batches of b = 64 (a batch of 256), so
the activations dominate the step's memory (the model has about 2.6 M parameters).

    python benchmarks/gradcache_memory.py            # k = 4, b = 64; about two minutes on 2 cores
    python benchmarks/gradcache_memory.py --quick    # k = 2, b = 16, under a minute
    python benchmarks/gradcache_memory.py --json out.json

The last line printed is one JSON object: ``ours`` (GradCache, MB), ``reference`` (one batch of k * b, MB),
``ratio`` (reference over ours: how many times less memory GradCache needs for the same gradients, higher is
better) and every configuration's figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = {  # name -> (examples per micro-batch as a multiple of b, micro-batches as a multiple of k, GradCache)
    "one batch of k*b": ("kb", 1, False),
    "GradCache k x b": ("b", "k", True),
    "one batch of b": ("b", 1, False),
}
IMAGE, CONTEXT, VOCAB = 64, 77, 4096
TIMED_STEPS = 2


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def pairs(n: int, seed: int) -> dict[str, torch.Tensor]:
    """n noise images and captions of 77 tokens (bos, random ids, end-of-text at a random place, eos padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (n, CONTEXT), generator=g)
    ends = torch.randint(CONTEXT // 2, CONTEXT, (n,), generator=g)
    ids[:, 0] = 0
    for row, end in enumerate(ends.tolist()):
        ids[row, end:] = 1
    mask = (ids != 1).long()
    mask[torch.arange(n), ends] = 1
    return {"pixel_values": torch.randn(n, 3, IMAGE, IMAGE, generator=g), "input_ids": ids, "attention_mask": mask}


def child(examples: int, micro: int, cached: bool) -> dict:
    from selfsup.recipes.builders.image_text import clip
    from selfsup.train import Trainer, TrainingSettings, make_accelerator

    with tempfile.TemporaryDirectory() as tmp:
        settings = TrainingSettings(output_dir=tmp, report_to="none", mixed_precision="no", max_steps=1,
                                    per_device_train_batch_size=examples, gradient_accumulation_steps=micro,
                                    contrastive_accumulation=cached, warmup_steps=0)
        accelerator = make_accelerator(settings)
        torch.manual_seed(0)
        objective = clip("small", "clip", "vit", IMAGE, vocab_size=VOCAB, context_length=CONTEXT).train()
        trainer = Trainer(objective, [], settings, accelerator)
        # one small step first, so one-time costs (kernel set-up, AdamW's moments) are outside the figures
        trainer.accumulate([{k: v[:2] for k, v in pairs(2, seed=1).items()} for _ in range(micro)])
        trainer.optimizer_step()
        whole = pairs(examples * micro, seed=0)   # the same k * b pairs in every configuration that has them
        batches = [{k: v[i * examples:(i + 1) * examples] for k, v in whole.items()} for i in range(micro)]
        before = rss_mb()
        loss, _, _ = trainer.accumulate(batches)
        trainer.optimizer_step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # KB on Linux
        times = []
        for _ in range(TIMED_STEPS):   # after the peak is read; the fastest, as the machine is shared
            start = time.perf_counter()
            trainer.accumulate(batches)
            trainer.optimizer_step()
            times.append(time.perf_counter() - start)
        seconds = min(times)
    params = sum(p.numel() for p in objective.parameters())
    return {"rss_before_mb": before, "peak_rss_mb": peak, "growth_mb": peak - before, "seconds": seconds,
            "loss": loss, "parameters": params}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="k = 2, b = 16")
    p.add_argument("--micro_batch", type=int, default=None, help="b (default 64; 16 with --quick)")
    p.add_argument("--accumulation", type=int, default=None, help="k (default 4; 2 with --quick)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        examples, micro, cached = int(args.child[0]), int(args.child[1]), args.child[2] == "1"
        print(json.dumps(child(examples, micro, cached)))
        return {}
    b = args.micro_batch or (16 if args.quick else 64)
    k = args.accumulation or (2 if args.quick else 4)
    rows = {}
    t0 = time.perf_counter()
    for name, (size, micro, cached) in CONFIGS.items():
        examples = k * b if size == "kb" else b
        micros = k if micro == "k" else 1
        cmd = [sys.executable, __file__, "--child", str(examples), str(micros), "1" if cached else "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{name}: the measuring process failed:\n{out.stderr[-2000:]}")
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
    minutes = (time.perf_counter() - t0) / 60
    print(f"CLIP small, fp32, k = {k} micro-batches of b = {b}; peak RSS growth over one training step")
    print(f"{'configuration':<20} {'examples/step':>13} {'growth MB':>10} {'seconds':>8} {'loss':>8}")
    for name, row in rows.items():
        n = k * b if name != "one batch of b" else b
        print(f"{name:<20} {n:>13} {row['growth_mb']:>10.0f} {row['seconds']:>8.2f} {row['loss']:>8.4f}")
    full, cached, small = (rows[n]["growth_mb"] for n in CONFIGS)
    gap = abs(rows["one batch of k*b"]["loss"] - rows["GradCache k x b"]["loss"])
    if gap > 1e-4:   # the same pairs: the two must be the same step
        raise SystemExit(f"GradCache's loss differs from the whole batch's by {gap:.2e}")
    result = {"name": "gradcache_memory", "unit": "MB peak RSS growth of one step", "ours": cached,
              "reference": full, "ratio": full / cached, "micro_batch": small, "k": k, "b": b,
              "minutes": minutes, "torch_threads": torch.get_num_threads(), "configs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
