"""benchmarks/timeseries_learning.py hands the flags it does not know to the series recipe and records them."""
import pytest

from benchmarks import timeseries_learning as bench


def test_unknown_flags_go_on_to_the_recipe_after_its_own(monkeypatch, capsys):
    seen = []

    def recipe(argv):
        seen.append(argv)
        return {"probe/accuracy": 0.5, "probe/random_init_accuracy": 0.25, "raw_1nn/accuracy": 1.0}

    monkeypatch.setattr(bench.timeseries, "main", recipe)
    (row,) = bench.main(["--sets", "Coffee", "--seeds", "0", "1", "--steps", "3", "--scaling", "none",
                         "--learning_rate", "1e-4"])
    assert len(seen) == 2                                     # one run per seed
    for argv in seen:
        assert argv[-4:] == ["--scaling", "none", "--learning_rate", "1e-4"]      # after the benchmark's own
        assert argv[argv.index("--learning_rate") + 1] == "1e-3"                 # which they override
        assert argv[argv.index("--max_steps") + 1] == "3"
    assert row["recipe_flags"] == ["--scaling", "none", "--learning_rate", "1e-4"]
    assert row["ours_mean"] == 50.0 and row["random_init_mean"] == 25.0 and row["raw_1nn"] == 100.0


def test_a_passed_on_flag_that_would_override_the_benchmarks_own_stops(monkeypatch, capsys):
    monkeypatch.setattr(bench.timeseries, "main", lambda argv: pytest.fail("no run should start"))
    with pytest.raises(SystemExit):
        bench.main(["--sets", "Coffee", "--max_steps=50"])
    assert "--max_steps: set by this benchmark" in capsys.readouterr().err
