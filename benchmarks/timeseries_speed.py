"""PatchTST pretraining step: selfsup's MAE objective on series patches against transformers'
``PatchTSTForPretraining`` with the same config and the same weights, on the same batches, in one run.

Before timing, the two losses are checked equal on one batch with the same mask (PatchTST's own masking fed our
noise), or the run stops. Both sides then train with AdamW (fused unless ``--no-fused``) on the same fixed batches
(PatchTST's ETTh1 setting by default: 7 channels, context 512, patches of 12 every 12 steps, 3 layers x 128, 16
heads, MLP 512, batch norm, mask 0.4, batch 64), timed in alternating rounds, the median round reported; dropout
is off on both sides.

    python -m benchmarks.timeseries_speed --quick            (from the repository root)
    python -m benchmarks.timeseries_speed --threads 1

The last line printed is one JSON object: ``ours`` / ``reference`` series per second and their ``ratio``, and the
model FLOPs utilisation of each (the reference's forward + backward FLOPs per series times series/s, over a measured
fp32 matmul peak at the same thread count).
"""
from __future__ import annotations

import argparse
import json
from unittest import mock

import torch

from selfsup.backbones.transformer import transformer_config
from selfsup.benchmarking import (StepPair, check_agreement, count_flops, cycling_step, first_call_timed, interleaved,
                                  machine, matmul_peak, mfu)
from selfsup.compiling import compile_backbones
from selfsup.modalities.timeseries import SeriesConfig
from selfsup.objectives.masked.hf_patchtst import compose_patchtst, to_patchtst
from selfsup.types import NOISE

SETTINGS = {"full": dict(channels=7, context=512, patch=12, layers=3, width=128, heads=16, ffn=512, batch=64),
            "quick": dict(channels=7, context=128, patch=8, layers=2, width=64, heads=8, ffn=128, batch=16)}


def build(setting: str = "quick", batch_size: int | None = None):
    """(ours, reference with our weights, 4 fixed batches, a mask noise, the series config) in train mode."""
    s = SETTINGS[setting]
    batch = batch_size or s["batch"]
    torch.manual_seed(0)
    series = SeriesConfig(num_channels=s["channels"], context_length=s["context"], patch_length=s["patch"],
                          stride=s["patch"])
    backbone = transformer_config(dict(hidden_size=s["width"], num_layers=s["layers"], num_heads=s["heads"],
                                       intermediate_size=s["ffn"]), "bert", norm="batchnorm", norm_first=True,
                                  final_norm=False, layer_norm_eps=1e-5, dropout=0.0, attention_dropout=0.0)
    ours = compose_patchtst(series, backbone, 0.4).train()
    ref = to_patchtst(ours).train()
    g = torch.Generator().manual_seed(1)
    t = torch.arange(s["context"], dtype=torch.float32)[None, :, None]
    batches = [torch.sin(t / 7 + torch.rand(batch, 1, s["channels"], generator=g) * 6)
               + 0.3 * torch.randn(batch, s["context"], s["channels"], generator=g) for _ in range(4)]
    noise = torch.rand(batch, s["channels"], series.num_patches, generator=g)
    return ours, ref, batches, noise, series


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int | None = None,
              compile_backend: str | None = None, setting: str = "quick") -> StepPair:
    """Both sides' AdamW steps on ``device`` over 4 fixed batches in turn (ours again with its backbone compiled,
    when asked)."""
    ours, ref, batches, _, _ = build(setting, batch_size)
    ours, ref = ours.to(device), ref.to(device)
    batches = [b.to(device) for b in batches]

    def ours_step(model):
        def loss(batch):
            out = model({"past_values": batch})
            return out.loss / out.num_targets
        return cycling_step(loss, batches, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused), bf16, device)

    def reference_pass() -> None:
        ref(past_values=batches[0]).loss.backward()
        ref.zero_grad(set_to_none=True)

    def ours_pass() -> None:
        ours({"past_values": batches[0]}).loss.backward()
        ours.zero_grad(set_to_none=True)

    compiled, seconds = None, []
    if compile_backend:
        twin = build(setting, batch_size)[0].to(device)
        compile_backbones(twin, compile_backend)
        compiled = first_call_timed(ours_step(twin), seconds)
    ref_step = cycling_step(lambda batch: ref(past_values=batch).loss, batches,
                            torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=fused), bf16, device)
    return StepPair(ours_step(ours), ref_step, len(batches[0]), reference_pass, "series/s", compiled, seconds,
                    ours_pass)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="fused AdamW for both sides (selfsup's engine and transformers' Trainer, adamw_torch_fused, "
                        "both run it); --no-fused for the per-tensor loop")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = "quick" if args.quick else "full"
    steps, rounds = (3, 3) if args.quick else (5, 7)
    ours, ref, batches, noise, series = build(setting)
    n = series.num_patches
    with torch.no_grad():
        mine = ours.predict({"past_values": batches[0], NOISE: noise.reshape(-1, n)})["loss"]
        with mock.patch("transformers.models.patchtst.modeling_patchtst.torch.rand", lambda *a, **k: noise.clone()):
            theirs = ref(past_values=batches[0]).loss
    check_agreement([("one batch, same mask", float(mine), float(theirs), 1e-5)])
    pair = step_pair("cpu", False, args.fused, setting=setting)
    o, r = interleaved(pair.sides(), steps, rounds, 2, pair.per_step, "patchtst")
    # model FLOPs: the reference's forward + backward (ours executes fewer: the last MLP on masked patches only)
    model_flops = pair.flops_per_sample() * pair.per_step
    executed = count_flops(lambda: ours({"past_values": batches[0]}).loss.backward())
    ours.zero_grad(set_to_none=True)
    peak = matmul_peak()
    per_step = pair.per_step
    result = {"name": "patchtst_step" + ("_quick" if args.quick else "_etth1"), "unit": "series/s",
              "ours": round(o, 2), "reference": round(r, 2), "ratio": round(o / r, 3), "machine": machine(),
              "threads": torch.get_num_threads(), "fused_adamw": args.fused, "model_gflop_per_step":
              round(model_flops / 1e9, 3), "ours_executed_gflop_per_step": round(executed / 1e9, 3),
              "matmul_peak_gflops": round(peak / 1e9, 1), "mfu_ours": round(mfu(model_flops, o / per_step, peak), 4),
              "mfu_reference": round(mfu(model_flops, r / per_step, peak), 4)}
    print(f"median: ours {o:.2f}  reference {r:.2f} series/s  ratio {o / r:.2f}x  MFU {result['mfu_ours']:.1%} vs "
          f"{result['mfu_reference']:.1%} of a measured {peak / 1e9:.0f} GFLOP/s fp32 matmul", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
