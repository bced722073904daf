"""Two-view training speed: ``selfsup`` SimCLR vs lightly's (``NTXentLoss`` + ``SimCLRProjectionHead``).

Both sides train the same torchvision ResNet-18 with the CIFAR stem (3x3 convolution, no max-pool) and the same
projection head (512 -> 512 -> 128, batch norm after each linear layer), from the same weights, on the same two
views of 64 images of 32 x 32 each step, with the same SGD (lr 0.06, momentum 0.9, weight decay 5e-4). Each side
runs as its library is used: lightly's benchmark scripts pass the two views through the model one after the
other; ours passes them together (``objectives.two_view.encode``: one forward per resolution, as DINO and SwAV
do). A step = forward + backward + optimizer step. Throughput (pairs of views per second) in fp32 and, where the
CPU runs bf16 natively, under bf16 autocast; interleaved rounds, median per side. Before timing, lightly's
``NTXentLoss`` on our projections must equal our loss (1e-5).

    python benchmarks/two_view_speed.py --quick      # about a minute
    python benchmarks/two_view_speed.py              # full run

The last line printed is one JSON object: ``ours`` / ``reference`` / ``ratio`` (fp32, samples/s, ours /
reference, higher is better) and the same with ``_bf16``, and each side's MFU (``mfu_ours``, ``mfu_reference``:
lightly's forward + backward FLOPs per pair of views, ``model_gflop_per_sample``, times pairs/s over a square matmul
measured in the same run, ``matmul_peak_gflops``).
"""
from __future__ import annotations

import json

import torch
import torchvision
from torch import nn

from selfsup.benchmarking import StepPair, interleaved, precision_tags, record, speed_args, step_pair_of
from selfsup.recipes.builders.two_view import two_view

BATCH, IMAGE = 64, 32
OPTIM = dict(lr=0.06, momentum=0.9, weight_decay=5e-4)


class LightlySimCLR(nn.Module):
    """lightly's CIFAR-10 SimCLR: torchvision ResNet-18 (CIFAR stem, no fc) + SimCLRProjectionHead."""

    def __init__(self) -> None:
        super().__init__()
        from lightly.models.modules import SimCLRProjectionHead

        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool, net.fc = nn.Identity(), nn.Identity()
        self.backbone, self.head = net, SimCLRProjectionHead(512, 512, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(1))


def build(seed: int = 0):
    """(ours, lightly's) with the same weights."""
    from lightly.loss import NTXentLoss

    torch.manual_seed(seed)
    ours = two_view("simclr", "resnet18", size="small", image_size=IMAGE, temperature=0.5)
    theirs = LightlySimCLR()
    backbone = {k: v for k, v in ours.backbone.state_dict().items()}
    missing, unexpected = theirs.backbone.load_state_dict(backbone, strict=False)
    assert not unexpected and all(k.startswith("fc.") for k in missing), (missing, unexpected)
    head = {f"layers.{k.split('.', 1)[1]}": v for k, v in ours.state_dict().items() if k.startswith("projector.")}
    theirs.head.load_state_dict(head)
    return ours, theirs, NTXentLoss(temperature=0.5)


def views(step: int, batch_size: int = BATCH) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return [torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g) for _ in range(2)]


@torch.no_grad()
def check_loss() -> tuple[float, float]:
    """Our loss and lightly's NTXentLoss on our own projections (same numbers, or the run fails)."""
    ours, _, criterion = build()
    ours.train()
    x = views(0)
    z1, z2 = ours.project([{"pixel_values": v} for v in x])
    a, b = float(ours({"views": [{"pixel_values": v} for v in x]}).loss), float(criterion(z1, z2))
    if abs(a - b) > 1e-5:
        raise SystemExit(f"losses differ: ours {a} lightly {b}")
    return a, b


def ours_loss(model: nn.Module, data: list[torch.Tensor]) -> torch.Tensor:
    return model({"views": [{"pixel_values": v} for v in data]}).loss       # both views in one forward


def step_pair(device: str | torch.device = "cpu", bf16: bool = False, fused: bool = True, batch_size: int = BATCH,
              compile_backend: str | None = None) -> StepPair:
    """Both sides' training steps on ``device`` (SGD on both: ``fused`` is not used; ours again with its backbone
    compiled, when asked). lightly's side passes the two views through its model one after the other."""
    ours, theirs, criterion = build()
    ours, theirs = ours.to(device).train(), theirs.to(device).train()
    twin = build()[0].to(device).train() if compile_backend else None
    data = [v.to(device) for v in views(1, batch_size)]
    return step_pair_of(ours, theirs, ours_loss, lambda m, d: criterion(m(d[0]), m(d[1])),
                        lambda m: torch.optim.SGD(m.parameters(), **OPTIM), data, batch_size, bf16, twin,
                        compile_backend)


def measure(bf16: bool, steps: int, rounds: int, warmup: int) -> tuple[float, float]:
    return interleaved(step_pair("cpu", bf16).sides(), steps, rounds, warmup, BATCH, "bf16" if bf16 else "fp32")


def main() -> None:
    args = speed_args(__doc__.splitlines()[0], "both", dict(steps=2, rounds=3, warmup=1),
                      dict(steps=4, rounds=5, warmup=2))
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps} x rounds "
          f"{args.rounds} (warmup {args.warmup})", flush=True)
    loss_ours, loss_lightly = check_loss()
    result: dict = {"name": "two_view_speed", "unit": "samples/s", "ours": None, "reference": None, "ratio": None}
    pair = step_pair()
    flops, executed = pair.flops_per_sample(), pair.executed_flops_per_sample()
    del pair    # the model's FLOPs: the reference's forward + backward, per pair of views
    for tag in precision_tags(args.precision, result):
        record(result, tag, *measure(tag == "bf16", args.steps, args.rounds, args.warmup), flops,
               executed_flops_per_sample=executed)
    result.update(model_gflop_per_sample=round(flops / 1e9, 4), loss_ours=round(loss_ours, 6),
                  loss_lightly=round(loss_lightly, 6),
                  config=dict(backbone="resnet18 (CIFAR stem)", head="512-512-128", batch_size=BATCH,
                              image_size=IMAGE, optimizer=dict(OPTIM, name="sgd"), steps=args.steps,
                              rounds=args.rounds, warmup=args.warmup, threads=torch.get_num_threads()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
