"""Learning on real data (slow: about 6 minutes on 2 CPU cores; run with `python -m pytest -m slow`).

The MLM test compares the all-layers probe with the mean of three random-init encoders (docs/benchmarks.md)."""
import pytest


@pytest.mark.slow
def test_mlm_pretraining_beats_random_init_on_the_sst2_probe(shared_data, tmp_path):
    from benchmarks.mlm_learning import main

    result = main(["--data_dir", str(shared_data / "text" / "sst2"), "--output_dir", str(tmp_path)])
    assert result["ours"] > result["reference"] + 0.01, result
