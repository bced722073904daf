"""CLIP training speed: ``selfsup`` CLIPObjective vs ``transformers`` CLIPModel (ViT image tower).

Both models hold the same weights (ours, converted with ``selfsup.objectives.image_text.hf_clip.clip_to_transformers``),
get the same images and the same right-padded captions every step, and the same ``torch.optim.AdamW``. A step =
forward + backward (the symmetric InfoNCE over the batch, ``CLIPModel(return_loss=True)`` on the reference side)
+ optimizer step, in train mode (no dropout in either). Throughput (samples/s) is measured in fp32 (and under
bf16 CPU autocast with ``--precision bf16`` / ``both``); warmup steps are excluded and the two sides are timed in
alternating rounds (order flipped every round) so machine noise hits both; the median round per side is reported.
Before timing, the loss of both on the first step (fp32) must agree to 1e-5, and again after one AdamW step, or
the run fails.

Config: the recipe's ``small`` size, as benchmarks/clip_learning.py trains it: a ViT of 4 layers x 128 (4 heads,
intermediate 512, 8 x 8 patches on 32 x 32 images: 16 patches + the class token), a causal text Transformer of
4 x 128 over captions of 6-16 tokens padded to the longest (a vocabulary of 4096), joint width 128, batch 128.

    python benchmarks/clip_speed.py --quick          # under a minute
    python benchmarks/clip_speed.py                  # full run, a few minutes
    python benchmarks/clip_speed.py --precision both --threads 2

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` (fp32, samples/s, ours/reference,
higher is better) plus ``*_bf16`` when measured, ``loss_ours``, ``loss_reference`` (fp32, checked) and ``config``.

Where ours saves time: the last layer of each tower computes only the token that is pooled (the class token of
each image, the end-of-text token of each caption: ``TransformerEncoder(outputs_at=...)``; every token is still a
key and a value), where ``CLIPModel`` runs it, and the text tower's final norm, on every token; one fused QKV
matmul instead of three per layer; the text tower runs SDPA's causal kernel without a padding mask (the tokens up
to the end-of-text token never attend to padding under the causal mask), where ``CLIPTextModel`` builds a 4-D
causal-and-padding mask and runs attention with it; quick_gelu is one fused SiLU with its 1.702 folded into the
MLP's two GEMMs, where ``transformers`` runs ``x * sigmoid(1.702 x)`` as separate multiplies.
"""
from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from selfsup.benchmarking import (StepPair, check_agreement, interleaved, precision_tags, record, speed_args,
                                  step_pair_of, training_step)
from selfsup.data import to_device
from selfsup.recipes.builders.image_text import clip
from selfsup.objectives.image_text.clip import CLIPObjective
from selfsup.objectives.image_text.hf_clip import clip_to_transformers

BATCH, IMAGE, VOCAB, SIZE = 128, 32, 4096, "small"
OPTIM = dict(lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
LOSS_TOL = 1e-5
# after one AdamW step: Adam's first update is about lr * sign(grad), so a gradient within rounding of zero can flip
# a weight by 2 * lr on one side only; 1e-5 was met by 8.6e-6, too close to gate on
STEP_TOL = 1e-4


def build_models(seed: int = 0) -> tuple[CLIPObjective, nn.Module]:
    """Ours and the reference with identical weights, both in train mode."""
    torch.manual_seed(seed)
    ours = clip(SIZE, "clip", "vit", IMAGE, vocab_size=VOCAB)
    return ours.train(), clip_to_transformers(ours).train()


def make_batch(seed: int = 0, batch_size: int = BATCH) -> dict[str, Tensor]:
    """Images and right-padded captions (bos, 4-14 random tokens, eos, then eos as padding), shared by both."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, 17, (batch_size,), generator=g)
    ids = torch.ones(batch_size, int(lengths.max()), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, 1:n - 1] = 0, torch.randint(2, VOCAB, (n - 2,), generator=g)
        mask[row, :n] = 1
    return {"pixel_values": torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g), "input_ids": ids,
            "attention_mask": mask}


def make_optimizer(model: nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **OPTIM, fused=fused or None)


def ours_loss(model: CLIPObjective, batch: dict[str, Tensor]) -> Tensor:
    return model(batch).loss


def reference_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(**batch, return_loss=True).loss


def check_losses(fused: bool) -> tuple[float, float]:
    """First-step fp32 loss of both, and agreement again after one AdamW step."""
    ours, ref = build_models()
    batch = make_batch()
    first: list[float] = []
    for loss_fn, model in ((ours_loss, ours), (reference_loss, ref)):
        opt = make_optimizer(model, fused)
        first.append(loss_fn(model, batch).item())
        training_step(loss_fn, model, opt, batch, bf16=False)()
    with torch.no_grad():
        second = [ours_loss(ours, batch).item(), reference_loss(ref, batch).item()]
    check_agreement([("first step", *first, LOSS_TOL), ("after one AdamW step", *second, STEP_TOL)])
    return first[0], first[1]


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int = BATCH,
              compile_backend: str | None = None) -> StepPair:
    """Both sides' training steps on ``device`` (and ours again with its towers compiled, when asked)."""
    ours, ref = (m.to(device) for m in build_models())
    twin = build_models()[0].to(device) if compile_backend else None
    batch = to_device(make_batch(batch_size=batch_size), torch.device(device))
    return step_pair_of(ours, ref, ours_loss, reference_loss, lambda m: make_optimizer(m, fused), batch, batch_size,
                        bf16, twin, compile_backend)


def measure(bf16: bool, steps: int, rounds: int, warmup: int, fused: bool) -> tuple[float, float]:
    return interleaved(step_pair("cpu", bf16, fused).sides(), steps, rounds, warmup, BATCH, "bf16" if bf16 else "fp32")


def main() -> None:
    args = speed_args(__doc__.splitlines()[0], "fp32", dict(steps=3, rounds=3, warmup=2),
                      dict(steps=8, rounds=6, warmup=3))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup}), fused AdamW {args.fused}", flush=True)
    loss_ours, loss_ref = check_losses(args.fused)
    result: dict = {"name": "clip_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None}
    pair = step_pair()
    flops, executed = pair.flops_per_sample(), pair.executed_flops_per_sample()
    del pair              # the model's FLOPs: the reference's forward + backward
    for tag in precision_tags(args.precision, result):
        record(result, tag, *measure(tag == "bf16", args.steps, args.rounds, args.warmup, args.fused), flops,
               executed_flops_per_sample=executed)
    result.update(model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 6),
                  loss_reference=round(loss_ref, 6), config=dict(
        size=SIZE, image_size=IMAGE, vocab_size=VOCAB, batch_size=BATCH, caption_tokens="6-16, padded to the longest",
        optimizer=dict(OPTIM, fused=args.fused), steps=args.steps, rounds=args.rounds, warmup=args.warmup,
        threads=torch.get_num_threads()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
