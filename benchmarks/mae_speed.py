"""MAE training speed: ``selfsup`` MAEObjective vs ``transformers`` ViTMAEForPreTraining.

Both models hold the same weights (ours, converted with ``selfsup.objectives.masked.hf_mae.mae_to_transformers``), get
the same images and the same masking noise every step (``noise=`` on both sides, so both drop the same patches),
and the same ``torch.optim.AdamW``. A step = forward + backward + optimizer step, in train mode (no dropout in
MAE). Throughput (samples/s) is measured in fp32 and under bf16 CPU autocast; warmup steps are excluded and the
two sides are timed in alternating rounds (order flipped every round) so machine noise hits both; the median
round per side is reported. bf16 is skipped under ``--precision both`` when the CPU has no native bf16 (oneDNN
reports none, e.g. AVX2-only CPUs, where bf16 matmuls run emulated); ask for it with ``--precision bf16``.
Before timing, the loss of both on the first step (fp32) must agree to 1e-5, and again after one AdamW step,
or the run fails.

Config: a ViT-tiny for CIFAR: hidden 192, 6 layers, 3 heads, intermediate 768, patch 4 on 32 x 32 images (64
patches, 16 visible), decoder 128 wide x 2 layers (4 heads, intermediate 512), mask ratio 0.75,
norm_pix_loss, batch 64.

    python benchmarks/mae_speed.py --quick          # under a minute
    python benchmarks/mae_speed.py                  # full run, about two minutes
    python benchmarks/mae_speed.py --precision fp32 --steps 5 --threads 2
    python -m benchmarks.mae_speed --quick --precision fp32 --threads 1 --compile    # + ours compiled (inductor)

``--compile [BACKEND]`` times ours a third time in the same rounds, a fresh copy with the same weights whose backbone
is compiled in place (``selfsup.compiling.compile_backbones``, as the recipes' ``--torch_compile``); compilation
happens in the untimed warmup and is reported apart (``compile_seconds``).

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (fp32, samples/s, ours/reference,
higher is better) plus ``*_bf16``, ``loss_ours``, ``loss_reference`` (fp32, checked) and ``loss_*_bf16``
(reported), ``model_gflop_per_sample`` with each side's MFU (``mfu_ours``, ``mfu_reference``, and
``mfu_ours_executed`` on the FLOPs ours runs itself), and ``config``; with ``--compile`` also ``ours_compiled``,
``ratio_compiled``, ``compile_gain`` (compiled over eager) and ``mfu_ours_compiled``.

Where the time goes (torch.profiler, this config, fp32, 2 threads): GEMMs are about 55 % of a step on both
sides and run near the cores' FMA peak; then SDPA's flash kernel (~9 %), GELU (~8 %) and AdamW's per-tensor
loop (~7 %). The encoder (6 layers on 17 tokens, ~60 % of a step) is the same work on both sides. Ours does ~8 %
fewer GEMM FLOPs and ~25 % less decoder work (see ``selfsup.objectives.masked.mae``): only the visible patches are
embedded (a matmul instead of the convolution over every patch); the first decoder layer's norm and QKV of the
mask tokens run once per patch position; the last decoder layer computes only the dropped patches' tokens (HF
runs it, the decoder norm and the prediction on all 65); q, k, v are views of the fused projection, so the
backward makes one copy of their gradient, not two. Measured: ~1.15x in fp32. Tried and not used (at or below
the plain version here): in fp32 SDPA's math kernel or a hand ``matmul``/``softmax`` attention instead of flash
(5-45 % slower at 17 and 65 tokens), in-place residual adds, bias + residual folded into one ``addmm_``, a
oneDNN linear with fused bias, a blocked MLP with an in-place GELU backward, a custom QKV backward without the
gradient stack. In bf16 the CPU flash kernel's backward took about half of a step on both sides;
ours runs attention on SDPA's math kernel there (``selfsup.backbones.transformer.attention_kernels``): ~1.8x.
"""
from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from selfsup.benchmarking import (StepPair, check_agreement, interleaved_medians, precision_tags, record, speed_args,
                                  step_pair_of, training_step)
from selfsup.recipes.builders.masked import mae
from selfsup.objectives.masked.hf_mae import mae_to_transformers
from selfsup.objectives.masked.mae import MAEObjective

BATCH, IMAGE, PATCH = 64, 32, 4
BACKBONE = dict(hidden_size=192, num_layers=6, num_heads=3, intermediate_size=768)
DECODER = dict(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512)
OPTIM = dict(lr=1.5e-4 * BATCH / 256, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
LOSS_TOL = 1e-5


def build_models(seed: int = 0) -> tuple[MAEObjective, nn.Module]:
    """Ours and the reference with identical weights, both in train mode."""
    torch.manual_seed(seed)
    ours = mae("small", image=dict(image_size=IMAGE, patch_size=PATCH), backbone=BACKBONE, decoder=DECODER,
               mask_ratio=0.75, norm_pix_loss=True)
    return ours.train(), mae_to_transformers(ours).train()


def make_batch(seed: int = 0, batch_size: int = BATCH) -> tuple[Tensor, Tensor]:
    """(pixel_values (B, 3, 32, 32), noise (B, 64)), shared by both sides."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch_size, 3, IMAGE, IMAGE, generator=gen),
            torch.rand(batch_size, (IMAGE // PATCH) ** 2, generator=gen))


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **OPTIM, fused=fused or None)


def ours_loss(model: MAEObjective, batch: tuple[Tensor, Tensor]) -> Tensor:
    pixels, noise = batch
    out = model({"pixel_values": pixels, "noise": noise})
    return out.loss / out.num_targets


def reference_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    pixels, noise = batch
    return model(pixel_values=pixels, noise=noise).loss


def check_losses(fused: bool) -> tuple[float, float]:
    """First-step fp32 loss of both, and agreement again after one AdamW step."""
    ours, ref = build_models()
    pixels, noise = make_batch()
    first: list[float] = []
    for loss_fn, model in ((ours_loss, ours), (reference_loss, ref)):
        opt = make_optimizer(model, fused)
        first.append(loss_fn(model, (pixels, noise)).item())
        training_step(loss_fn, model, opt, (pixels, noise), bf16=False)()
    with torch.no_grad():
        second = [ours_loss(ours, (pixels, noise)).item(), reference_loss(ref, (pixels, noise)).item()]
    check_agreement([("first step", *first, LOSS_TOL), ("after one AdamW step", *second, LOSS_TOL)])
    return first[0], first[1]


def bf16_losses() -> tuple[float, float]:
    """First-step loss of both under bf16 autocast (reported, not checked: bf16 rounding differs by kernel)."""
    ours, ref = build_models()
    pixels, noise = make_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return ours_loss(ours, (pixels, noise)).item(), reference_loss(ref, (pixels, noise)).item()


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int = BATCH,
              compile_backend: str | None = None) -> StepPair:
    """Both sides' training steps on ``device`` (and ours again with its backbone compiled, when asked)."""
    ours, ref = (m.to(device) for m in build_models())
    twin = build_models()[0].to(device) if compile_backend else None
    batch = tuple(t.to(device) for t in make_batch(batch_size=batch_size))
    return step_pair_of(ours, ref, ours_loss, reference_loss, lambda m: make_optimizer(m, fused), batch, batch_size,
                        bf16, twin, compile_backend)


def measure(pair: StepPair, steps: int, rounds: int, warmup: int, tag: str) -> dict[str, float]:
    """Median samples/s of each side over interleaved rounds."""
    return interleaved_medians(pair.sides(), steps, rounds, warmup, pair.per_step, tag, "samples/s")


def main() -> None:
    args = speed_args(__doc__.splitlines()[0], "both", dict(steps=3, rounds=3, warmup=2),
                      dict(steps=5, rounds=5, warmup=3), compile=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}", flush=True)
    loss_ours, loss_ref = check_losses(args.fused)
    result: dict = {"name": "mae_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None,
                    "ours_bf16": None, "reference_bf16": None, "ratio_bf16": None}
    flops = executed = None
    for tag in precision_tags(args.precision, result):
        pair = step_pair("cpu", tag == "bf16", args.fused, compile_backend=args.compile)
        flops = pair.flops_per_sample() if flops is None else flops    # the model's, per image: the reference's
        medians = measure(pair, args.steps, args.rounds, args.warmup, tag)
        if tag == "bf16":
            a, b = bf16_losses()
            print(f"loss first step, bf16 autocast: ours {a:.5f}  reference {b:.5f}", flush=True)
            result.update(loss_ours_bf16=round(a, 5), loss_reference_bf16=round(b, 5))
        executed = pair.executed_flops_per_sample() if executed is None else executed
        record(result, tag, medians["ours"], medians["reference"], flops, medians.get("ours_compiled"),
               executed_flops_per_sample=executed)
        if pair.compile_seconds:
            result[f"compile_seconds{'' if tag == 'fp32' else '_' + tag}"] = round(pair.compile_seconds[0], 1)
            print(f"[{tag}] first compiled step (compilation): {pair.compile_seconds[0]:.1f} s", flush=True)
    result.update(model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 6), loss_reference=round(loss_ref, 6), config=dict(
        backbone=BACKBONE, decoder=DECODER, image_size=IMAGE, patch_size=PATCH, batch_size=BATCH, mask_ratio=0.75,
        norm_pix_loss=True, optimizer=dict(OPTIM, fused=args.fused), steps=args.steps, rounds=args.rounds,
        warmup=args.warmup, threads=torch.get_num_threads(), compile=args.compile))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
