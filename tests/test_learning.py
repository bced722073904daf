"""Learning on real data (slow: about 27 minutes in all on 2 CPU cores; run with `python -m pytest -m slow`).

The MLM test compares the all-layers probe with the mean of three random-init encoders (docs/benchmarks.md)."""
import pytest


@pytest.mark.slow
def test_mlm_pretraining_beats_random_init_on_the_sst2_probe(shared_data, tmp_path):
    from benchmarks.mlm_learning import main

    result = main(["--data_dir", str(shared_data / "text" / "sst2"), "--output_dir", str(tmp_path)])
    assert result["ours"] > result["reference"] + 0.01, result


@pytest.mark.slow
def test_data2vec_text_pretraining_beats_random_init_on_the_sst2_probe(shared_data, tmp_path):
    """About 3 minutes: 3,000 steps of the tiny data2vec text model on SST-2's sentences, then the probes."""
    from benchmarks.mlm_learning import main

    result = main(["--objective", "data2vec", "--data_dir", str(shared_data / "text" / "sst2"),
                   "--output_dir", str(tmp_path)])
    assert result["ours"] > result["reference"] + 0.01, result
    assert result["last_layer"] > result["last_layer_random_init"] + 0.01, result


# official-split margin (last layer) each objective must clear; docs/benchmarks.md has the figures
FSDD_MARGINS = {"wav2vec2": 0.05, "hubert": 0.05, "data2vec": 0.02}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(FSDD_MARGINS))
def test_speech_pretraining_beats_random_init_on_fsdd(recipe, shared_data, tmp_path):
    """About 4 minutes each: 2,000 steps of the tiny model on FSDD's training takes, then the probe on both
    protocols (official split, leave-one-speaker-out) and both views (last layer, all layers)."""
    from benchmarks.speech_learning import main

    fsdd = shared_data / "speech" / "fsdd"
    (result,) = main(["--recipe", recipe, "--model_size", "tiny", "--fsdd", str(fsdd), "--output_dir", str(tmp_path)])
    assert result["ours"] > result["reference"] + FSDD_MARGINS[recipe], result
    assert result["all_layers"] > result["all_layers_random_init"] + 0.05, result
    assert result["loso"] > result["loso_random_init"], result
    assert result["loso_all_layers"] > result["loso_all_layers_random_init"], result


@pytest.mark.slow
def test_gpt_reaches_nanogpts_shakespeare_loss(shared_data, tmp_path):
    """About 2 minutes: nanoGPT's CPU configuration of character-level Shakespeare (peak lr 4e-3)."""
    from benchmarks.gpt_learning import main

    text = shared_data / "text" / "tinyshakespeare.txt"
    result = main(["--data", str(text), "--output_dir", str(tmp_path)])
    assert result["steps"] == 2000 and result["ours"] <= result["reference"] == 1.88, result


def test_gpt_tuning_split_never_holds_validation_text(tmp_path):
    from benchmarks.gpt_learning import split_corpus

    src = tmp_path / "corpus.txt"
    import random

    rng = random.Random(0)
    src.write_text("".join(rng.choice("abcdefghijklmnopqrstuvwxyz \n") for _ in range(1000)), encoding="utf-8")
    train, val, n_train, n_val = split_corpus(src, tmp_path, 0.1)
    assert (n_train, n_val) == (900, 100) and train.read_text() + val.read_text() == src.read_text()
    held_out = val.read_text()
    tune_dir = tmp_path / "tune"
    tune_dir.mkdir()
    train, val, n_train, n_val = split_corpus(src, tune_dir, 0.1, tune=True)
    assert (n_train, n_val) == (810, 90) and train.read_text() + val.read_text() == src.read_text()[:900]
    assert held_out not in train.read_text() + val.read_text()
