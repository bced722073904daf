"""The benchmarks' shared timing: every side runs its warmup and its steps, the order flips every round."""
from selfsup.benchmarking import interleaved, interleaved_medians


def test_sides_alternate_and_every_step_runs(capsys):
    calls: list[str] = []
    sides = {name: (lambda name=name: calls.append(name)) for name in ("ours", "reference", "third")}
    medians = interleaved_medians(sides, steps=2, rounds=3, warmup=1, per_step=4, tag="t", unit="items/s")
    assert set(medians) == set(sides) and all(v > 0 for v in medians.values())
    timed = calls[3:]   # after one warmup call per side
    assert calls[:3] == ["ours", "reference", "third"]
    assert timed == (["ours"] * 2 + ["reference"] * 2 + ["third"] * 2 + ["third"] * 2 + ["reference"] * 2
                     + ["ours"] * 2 + ["ours"] * 2 + ["reference"] * 2 + ["third"] * 2)
    assert capsys.readouterr().out.count("items/s") == 3
    ours, ref = interleaved({k: sides[k] for k in ("ours", "reference")}, 1, 2, 0, 8, "t")
    assert ours > 0 and ref > 0
