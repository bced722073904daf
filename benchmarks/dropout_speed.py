"""CPU dropout: ``selfsup.dropout`` vs ``torch.nn.functional.dropout`` and SDPA's attention dropout.

Forward + backward of dropout (p = 0.1) on the activations of a GPT-2-small-like layer, and of causal attention
with dropout 0.1 on its probabilities (``selfsup.dropout.attention_with_dropout`` against
``F.scaled_dot_product_attention(dropout_p=0.1, is_causal=True)`` on the same q, k, v, views of one fused QKV
projection as in the backbone). Before timing, the statistics are checked: the kept fraction within 5 standard
deviations of 0.9 and the mean of the output within 5 of the input's, or the run fails. Calls per second, the
sides timed in alternating rounds, the median round reported.

    python benchmarks/dropout_speed.py --quick
    python benchmarks/dropout_speed.py --threads 1

The last line printed is one JSON object: ``ours``/``reference``/``ratio`` for the (16, 128, 1024) activations
(calls/s, higher is better), and the same as ``*_hidden`` for (16, 128, 256) and ``*_attention``.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from selfsup.benchmarking import interleaved_medians
from selfsup.dropout import attention_with_dropout, dropout

P = 0.1


def check_statistics(n: int = 2_000_000) -> None:
    x = torch.ones(n)
    y = dropout(x, P)
    kept = float((y != 0).float().mean())
    sd = (P * (1 - P) / n) ** 0.5
    if abs(kept - (1 - P)) > 5 * sd or abs(float(y.mean()) - 1) > 5 * sd / (1 - P):
        raise SystemExit(f"dropout statistics off: kept {kept:.5f}, mean {float(y.mean()):.5f}")
    print(f"statistics: kept {kept:.5f} (expected {1 - P}), mean {float(y.mean()):.5f} (expected 1)", flush=True)


def elementwise_sides(shape: tuple[int, ...]) -> dict:
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)

    def side(fn):
        def step():
            fn(x).backward(g)
            x.grad = None
        return step
    return {"ours": side(lambda t: dropout(t, P)), "reference": side(lambda t: F.dropout(t, P, True))}


def attention_sides(batch: int = 16, n: int = 128, heads: int = 4, head_dim: int = 64) -> dict:
    qkv = torch.randn(batch, n, 3 * heads * head_dim, requires_grad=True)
    go = torch.randn(batch, heads, n, head_dim)

    def side(fn):
        def step():
            q, k, v = (t.transpose(1, 2) for t in qkv.view(batch, n, 3, heads, head_dim).unbind(2))
            fn(q, k, v).backward(go)
            qkv.grad = None
        return step
    return {"ours": side(lambda q, k, v: attention_with_dropout(q, k, v, None, True, P)),
            "reference": side(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=P, is_causal=True))}


def measure(sides: dict, calls: int, rounds: int, tag: str) -> tuple[float, float]:
    medians = interleaved_medians(sides, calls, rounds, 2, 1, tag, "calls/s")
    ours, ref = medians["ours"], medians["reference"]
    print(f"[{tag}] ours {ours:.1f}  reference {ref:.1f} calls/s  ratio {ours / ref:.2f}x", flush=True)
    return ours, ref


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    calls, rounds = (5, 3) if args.quick else (20, 9)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, p {P}, {calls} calls x {rounds} rounds",
          flush=True)
    check_statistics()
    result: dict = {"name": "dropout_speed", "unit": "calls/s (forward + backward)"}
    for suffix, sides in (("", elementwise_sides((16, 128, 1024))), ("_hidden", elementwise_sides((16, 128, 256))),
                          ("_attention", attention_sides())):
        ours, ref = measure(sides, calls, rounds, suffix.strip("_") or "mlp")
        result.update({f"ours{suffix}": round(ours, 1), f"reference{suffix}": round(ref, 1),
                       f"ratio{suffix}": round(ours / ref, 3)})
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
