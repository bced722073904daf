"""benchmarks/image_learning.py on a tiny labelled parquet set: a run, then ``--rescore`` of its export repeats the
run's kNN figures exactly (the export is the trained encoder) and probes both encoders again; a missing export or
a method without a single-encoder export stops with a message."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def write_images(path, n: int, seed: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    rows = []
    for label in labels:        # each class its own dominant channel, plus noise
        a = rng.integers(0, 200, (16, 16, 3)).astype(np.uint8)
        a[..., label] += 6
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        rows.append({"bytes": buf.getvalue(), "path": None})
    pq.write_table(pa.table({"image": pa.array(rows), "label": pa.array(labels.tolist())}), path)


@pytest.mark.long
def test_rescore_repeats_the_runs_knn_and_probes_its_export(tmp_path):
    from benchmarks import image_learning

    data = tmp_path / "data"
    data.mkdir()
    write_images(data / "train.parquet", 96, 0)
    write_images(data / "test.parquet", 40, 1)
    argv = ["--data_dir", str(data), "--methods", "simclr", "--max_steps", "3", "--mixed_precision", "no",
            "--output_dir", str(tmp_path / "runs"), "--model_size", "tiny", "--image_size", "16",
            "--per_device_train_batch_size", "16", "--report_to", "none", "--knn_k", "5"]
    [trained] = image_learning.main(argv)
    [again] = image_learning.main([*argv, "--rescore"])
    assert again["ours"] == trained["ours"] and again["reference"] == trained["reference"]
    assert again["probe"] == trained["probe"] and again["probe_reference"] == trained["probe_reference"]
    assert again["steps"] == trained["steps"] == 3
    # with a fixed C the probes are scored again under it (the kNN does not depend on it)
    [fixed] = image_learning.main([*argv, "--rescore", "--probe_c", "1e-4"])
    assert fixed["ours"] == trained["ours"] and 0.0 <= fixed["probe"] <= 1.0
    assert trained["knn_gain_ci95"] is not None and trained["probe_gain_ci95"] is not None
    assert again["knn_gain_ci95"] == trained["knn_gain_ci95"]
    # the scoring images are the evaluation's: fewer of them is a rescore of the same run, with a wider interval
    [fewer] = image_learning.main([*argv, "--rescore", "--eval_test_samples", "20"])
    assert fewer["steps"] == 3 and fewer["knn_gain_ci95"] != trained["knn_gain_ci95"]
    # --probe_layers all: the same run's last-layer figures, and the kNN / probe on every stage's output besides
    [deep] = image_learning.main([*argv, "--rescore", "--probe_layers", "all"])
    assert deep["ours"] == trained["ours"] and trained["knn_all_layers"] is None
    assert all(0.0 <= deep[f"{k}_all_layers{w}"] <= 1.0 for k in ("knn", "probe") for w in ("", "_reference"))
    assert deep["knn_all_layers"] != deep["ours"] and deep["knn_all_layers_gain_ci95"] is not None
    with pytest.raises(SystemExit, match="trained with other flags"):      # another budget: not that run's export
        image_learning.main([*argv, "--rescore", "--max_steps", "4"])
    with pytest.raises(SystemExit, match="no single-encoder two-view export"):
        image_learning.main([*argv, "--rescore", "--methods", "byol"])
    with pytest.raises(SystemExit, match="--rescore reads the runs of --output_dir"):
        image_learning.main([a for a in argv if a not in ("--output_dir", str(tmp_path / "runs"))] + ["--rescore"])
