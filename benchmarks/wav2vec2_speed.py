"""wav2vec 2.0 pre-training speed: ``selfsup`` Wav2Vec2Objective vs ``transformers`` Wav2Vec2ForPreTraining.

Both models are built from the same weights (ours, ``selfsup.recipes.builders.speech_quantised.wav2vec2("small")``, converted with
``selfsup.objectives.speech_quantised.hf_wav2vec2.to_transformers``), get the same batch, the same span mask and the same negatives (drawn
once with ``objective.draw_masks`` and passed to both as ``mask_time_indices`` / ``sampled_negative_indices``),
and the same ``torch.optim.AdamW``. A step = forward + backward (of the summed loss both return: contrastive +
alpha * diversity, summed over the masked frames) + optimizer step, in train mode: dropout 0.1 everywhere,
feature dropout 0.1 before the quantizer and hard Gumbel-softmax sampling (tau 2.0) on both sides, so the two
losses differ from step to step (different noise), as expected. Throughput (samples/s, a sample = one
utterance) is measured in fp32 by default; ``--precision bf16`` or ``both`` add a bf16 CPU-autocast run (on a
CPU without native bf16, oneDNN emulates it, 30-60x slower). Warmup steps are excluded and the
two sides are timed in alternating rounds (order flipped every round) so machine noise hits both; the median
round per side is reported. Before timing, the summed loss of both in eval mode (dropout off, argmax
quantization, so the two are deterministic) must agree to 1e-4 relative on the first step and again after one
AdamW step, or the run fails.

Config: conv feature encoder 7 layers x 256 channels (wav2vec2-base kernels 10,3,3,3,3,2,2 / strides
5,2,2,2,2,2,2, GroupNorm on the first), Transformer hidden 256, 4 layers, 4 heads, intermediate 1024 (post-LN),
quantizer G=2 x V=160, codevector 128, projection 128, K=50 negatives, mask_prob 0.65 x span 10. Batch: 8
synthetic utterances of 2 s at 16 kHz (99 frames), the last two shorter (1.5 s and 1.2 s, zero-padded, with an
``attention_mask``), each normalised to zero mean / unit variance over its real samples.

    python benchmarks/wav2vec2_speed.py --quick          # one to two minutes
    python benchmarks/wav2vec2_speed.py                  # full run, about four minutes
    python benchmarks/wav2vec2_speed.py --threads 1      # cleaner numbers on a busy, shared machine
    python benchmarks/wav2vec2_speed.py --steps 5 --rounds 3 --precision both

On a machine shared with other jobs (load average above the core count, reported as ``load_avg``), every
multi-threaded op waits for descheduled OpenMP threads (milliseconds per op), so the step time then mostly
counts ops rather than FLOPs; ``--threads 1`` measures compute.

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (fp32, samples/s, ours/reference,
higher is better) plus ``*_bf16``, ``loss_ours``, ``loss_reference`` (eval-mode summed losses of the check),
``masked_frames``, ``frames``, ``load_avg`` and ``config``, and each side's MFU (``mfu_ours``, ``mfu_reference``: the
reference's forward + backward FLOPs per utterance, ``model_gflop_per_sample``, times samples/s over a square matmul
measured in the same run, ``matmul_peak_gflops``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
from typing import Callable

import torch
from torch import Tensor, nn

from selfsup.benchmarking import Step, StepPair, interleaved, native_bf16, record, speed_args, step_pair_of
from selfsup.data import to_device
from selfsup.recipes.builders.speech_quantised import wav2vec2 as build
from selfsup.objectives.speech_quantised.hf_wav2vec2 import to_transformers
from selfsup.objectives.speech_quantised.sizes import size_of
from selfsup.objectives.speech_quantised.wav2vec2 import Wav2Vec2Objective, Wav2Vec2ObjectiveConfig

SIZE, SAMPLE_RATE, SECONDS, BATCH = "small", 16_000, 2.0, 8
SHORT_SECONDS = (1.5, 1.2)  # the last two utterances
# Pinned explicitly (equal to the "small" presets today) so the benchmark does not drift with them.
AUDIO = dict(conv_dim=(256,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
             feat_extract_norm="group", num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
             feat_proj_dropout=0.1)
MODEL = dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024, dropout=0.1, attention_dropout=0.1)
OPTIM = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
LOSS_RTOL = 1e-4
Batch = dict



def build_models(seed: int = 0) -> tuple[Wav2Vec2Objective, nn.Module]:
    """Ours and the reference with identical weights, both in train mode."""
    torch.manual_seed(seed)
    ours = build(SIZE, audio=AUDIO, backbone=MODEL)
    ref = to_transformers(ours)
    if ref.config._attn_implementation != "sdpa":
        print(f"note: reference attention is {ref.config._attn_implementation!r}, not sdpa", flush=True)
    return ours.train(), ref.train()


def synth_waveforms(gen: torch.Generator, batch_size: int = BATCH) -> tuple[Tensor, Tensor]:
    """(B, T) zero-padded, per-utterance normalised waveforms and their (B, T) long attention mask.

    Speech-like enough for the feature encoder: a few harmonics of a gliding pitch (90-250 Hz) under a syllabic
    (3-6 Hz) envelope, plus noise; then, as ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does, zero mean and
    unit variance over each utterance's real samples, and zeros in the padding.
    """
    total = int(SECONDS * SAMPLE_RATE)
    short = [int(s * SAMPLE_RATE) for s in SHORT_SECONDS][:batch_size]
    lengths = [total] * (batch_size - len(short)) + short
    t = torch.arange(total) / SAMPLE_RATE
    wav = torch.zeros(batch_size, total)
    attention = torch.zeros(batch_size, total, dtype=torch.long)
    for i, n in enumerate(lengths):
        r = torch.rand(5, generator=gen)
        f0 = 90 + 160 * r[0] + 30 * torch.sin(2 * math.pi * (0.3 + r[1]) * t)          # gliding pitch
        phase = 2 * math.pi * torch.cumsum(f0, 0) / SAMPLE_RATE
        voiced = sum(torch.sin(h * phase) / h for h in range(1, 6))
        envelope = 0.5 * (1 + torch.sin(2 * math.pi * (3 + 3 * r[2]) * t + 2 * math.pi * r[3])).pow(2)
        x = envelope * voiced + (0.05 + 0.1 * r[4]) * torch.randn(total, generator=gen)
        x = x[:n]
        wav[i, :n] = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        attention[i, :n] = 1
    return wav, attention


def make_batch(objective: Wav2Vec2Objective, seed: int = 0, batch_size: int = BATCH) -> Batch:
    """Waveforms, attention mask, span mask and negatives, shared by both sides (HF keyword names)."""
    gen = torch.Generator().manual_seed(seed)
    wav, attention = synth_waveforms(gen, batch_size)
    frames = objective.adapter.feature_lengths(wav.shape[1])
    padding = objective.adapter.frame_padding_mask(attention, frames)
    mask, negatives, _ = objective.draw_masks(padding, (batch_size, frames), wav.device, generator=gen)
    return {"input_values": wav, "attention_mask": attention, "mask_time_indices": mask,
            "sampled_negative_indices": negatives}


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), **OPTIM, fused=fused or None)


def ours_loss(model: Wav2Vec2Objective, batch: Batch) -> Tensor:
    return model(batch).loss                      # summed over the masked frames


def reference_loss(model: nn.Module, batch: Batch) -> Tensor:
    return model(**batch).loss                    # summed over the masked frames


def make_step(loss_fn: Callable, model: nn.Module, opt: torch.optim.Optimizer, batch: Batch, bf16: bool) -> Step:
    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def check_losses(fused: bool) -> tuple[float, float, Batch]:
    """Eval-mode (dropout off, argmax quantization) fp32 summed loss of both, first step and after one AdamW step."""
    ours, ref = build_models()
    batch = make_batch(ours)
    ours.eval(), ref.eval()
    first: list[float] = []
    for loss_fn, model in ((ours_loss, ours), (reference_loss, ref)):
        opt = make_optimizer(model, fused)
        with torch.no_grad():
            first.append(loss_fn(model, batch).item())
        make_step(loss_fn, model, opt, batch, bf16=False)()
    with torch.no_grad():
        second = [ours_loss(ours, batch).item(), reference_loss(ref, batch).item()]
    for what, (a, b) in (("first step", first), ("after one AdamW step", second)):
        rel = abs(a - b) / max(abs(b), 1e-12)
        print(f"loss {what} (eval, summed): ours {a:.5f}  reference {b:.5f}  rel diff {rel:.2e}")
        if not (math.isfinite(a) and math.isfinite(b)) or rel > LOSS_RTOL:
            raise SystemExit(f"FAIL: summed losses differ by {rel:.3e} relative > {LOSS_RTOL} ({what}); "
                             "the two models are not equivalent")
    return first[0], first[1], batch



def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int = BATCH,
              compile_backend: str | None = None) -> StepPair:
    """Both sides' training steps on ``device`` (and ours again with its backbone compiled, when asked)."""
    ours, ref = build_models()
    batch = to_device(make_batch(ours, batch_size=batch_size), torch.device(device))
    ours, ref = ours.to(device), ref.to(device)
    twin = build_models()[0].to(device) if compile_backend else None
    return step_pair_of(ours, ref, ours_loss, reference_loss, lambda m: make_optimizer(m, fused), batch, batch_size,
                        bf16, twin, compile_backend)


def measure(bf16: bool, steps: int, rounds: int, warmup: int, fused: bool) -> tuple[float, float]:
    """Median samples/s of (ours, reference) over interleaved rounds."""
    return interleaved(step_pair("cpu", bf16, fused).sides(), steps, rounds, warmup, BATCH, "bf16" if bf16 else "fp32")


def parse_args() -> argparse.Namespace:
    return speed_args(__doc__.splitlines()[0], "fp32", dict(steps=1, rounds=2, warmup=1), dict(steps=2, rounds=5, warmup=1))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}, native bf16 {native_bf16()}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load is not None and load > cores:
        print(f"warning: load average {load:.1f} > {cores} cores: timings are noisy and multi-threaded "
              "ops pay for descheduled threads (try --threads 1)", flush=True)
    loss_ours, loss_ref, batch = check_losses(args.fused)
    result: dict = {"name": "wav2vec2_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None,
                    "ours_bf16": None, "reference_bf16": None, "ratio_bf16": None}
    tags = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    if args.precision == "both" and not native_bf16():
        print("warning: CPU has no native bf16; the bf16 run is emulated and very slow", flush=True)
    pair = step_pair()
    flops, executed = pair.flops_per_sample(), pair.executed_flops_per_sample()
    del pair              # the model's FLOPs: the reference's forward + backward
    for tag in tags:
        record(result, tag, *measure(tag == "bf16", args.steps, args.rounds, args.warmup, args.fused), flops,
               executed_flops_per_sample=executed)
    c = Wav2Vec2ObjectiveConfig(**size_of(SIZE)["objective"])    # what build(SIZE) uses
    result.update(
        model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 4), loss_reference=round(loss_ref, 4),
        masked_frames=int(batch["mask_time_indices"].sum()), frames=list(batch["mask_time_indices"].shape),
        load_avg=None if load is None else round(load, 2),
        config=dict(**AUDIO, **MODEL, num_codevector_groups=c.num_codevector_groups,
                    num_codevectors_per_group=c.num_codevectors_per_group, codevector_dim=c.codevector_dim,
                    proj_codevector_dim=c.proj_codevector_dim, num_negatives=c.num_negatives,
                    mask_prob=c.mask_prob, mask_length=c.mask_length, dropout_features=c.dropout_features,
                    batch_size=BATCH, seconds=SECONDS, short_seconds=SHORT_SECONDS, sampling_rate=SAMPLE_RATE,
                    optimizer=dict(OPTIM, fused=args.fused), precision=args.precision, steps=args.steps,
                    rounds=args.rounds, warmup=args.warmup, threads=torch.get_num_threads()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
