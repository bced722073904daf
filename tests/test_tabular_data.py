"""Tables in: CSV with and without a header, parquet, datasets folders, scikit-learn's bundled tables; the
inferred schema and its overrides; the scalers (quantile as scikit-learn's); and bad input, each stopping with one
line naming the file and the row (a missing value and an unseen category are not errors)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from selfsup.errors import SelfsupError
from selfsup.modalities.tabular import (MISSING, RESERVED, UNSEEN, builtin_table, encode, infer_schema, read_csv,
                                        read_table)
from selfsup.modalities.tabular.schema import quantile_normal

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tabular" / "adult"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


ROWS = "age,city,score,label\n30,Paris,1.5,yes\n41,Rome,?,no\n25,Paris,3.0,yes\n,Oslo,2.5,no\n"


def test_csv_with_a_header_infers_kinds_categories_and_labels(tmp_path):
    table = read_csv(write(tmp_path / "t.csv", ROWS))
    assert table.names == ["age", "city", "score", "label"]
    schema = infer_schema([table], label="label", scaling="standard")
    assert [(c.name, c.kind) for c in schema.columns] == [("age", "numeric"), ("score", "numeric"),
                                                          ("city", "categorical")]
    assert schema.categorical[0].categories == ["Oslo", "Paris", "Rome"] and schema.label_classes == ["no", "yes"]
    arrays = encode(table, schema)
    assert np.isnan(arrays.numeric[3, 0]) and np.isnan(arrays.numeric[1, 1]), "empty and ? are missing"
    ages = np.array([30, 41, 25])
    np.testing.assert_allclose(arrays.numeric[:3, 0], (ages - ages.mean()) / ages.std(), rtol=1e-6)
    assert arrays.categorical[:, 0].tolist() == [RESERVED + 1, RESERVED + 2, RESERVED + 1, RESERVED + 0]
    assert arrays.labels.tolist() == [1, 0, 1, 0]


def test_csv_without_a_header_numbers_its_columns_and_takes_names(tmp_path):
    path = write(tmp_path / "t.csv", "1, a, 2\n3, b, 4\n")
    assert read_csv(path).names == ["0", "1", "2"]
    assert read_csv(path, column_names=["x", "c", "y"]).names == ["x", "c", "y"]
    assert read_csv(path).cells["1"].tolist() == ["a", "b"], "spaces after the commas are not part of a cell"
    with_header = write(tmp_path / "h.csv", "x,c,y\n1,a,2\n")
    assert read_csv(with_header, header="no").names == ["0", "1", "2"]


def test_overrides_win_over_inference(tmp_path):
    table = read_csv(write(tmp_path / "t.csv", ROWS))
    schema = infer_schema([table], label="label", categorical=["age"], drop=["score"])
    assert [(c.name, c.kind) for c in schema.columns] == [("age", "categorical"), ("city", "categorical")]
    assert schema.categorical[0].categories == ["25", "30", "41"]
    with pytest.raises(SelfsupError, match="no column 'nope'"):
        infer_schema([table], label="nope")


def test_parquet_and_datasets_folders_read_like_csv(tmp_path):
    import datasets

    frame = pd.DataFrame({"x": [1.0, np.nan, 3.0], "c": ["a", None, "b"], "y": [0, 1, 0]})
    frame.to_parquet(tmp_path / "t.parquet")
    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "ds"))
    for table in (read_table(tmp_path / "t.parquet"), read_table(tmp_path / "ds")):
        schema = infer_schema([table], label="y")
        arrays = encode(table, schema)
        assert [c.kind for c in schema.columns] == ["numeric", "categorical"]
        assert np.isnan(arrays.numeric[1, 0]) and arrays.categorical[1, 0] == MISSING
        assert arrays.labels.tolist() == [0, 1, 0]


def test_builtin_tables_need_no_network():
    cancer, wine = builtin_table("breast_cancer"), builtin_table("wine")
    assert len(cancer) == 569 and len(wine) == 178
    schema = infer_schema([wine], label="target")
    assert len(schema.numeric) == 13 and schema.label_classes == ["0", "1", "2"]
    assert "scikit-learn" in cancer.source


def test_quantile_scaling_is_scikit_learns():
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.default_rng(0)
    train = np.concatenate([rng.exponential(size=700), np.zeros(300)])   # ties, as Adult's capital gain
    test = np.concatenate([rng.exponential(size=50) * 2, [-1.0, 0.0, 100.0]])
    ref = QuantileTransformer(n_quantiles=1000, output_distribution="normal", subsample=None).fit(train[:, None])
    quantiles = ref.quantiles_[:, 0]
    np.testing.assert_allclose(quantile_normal(test, quantiles), ref.transform(test[:, None])[:, 0], atol=1e-6)


def test_an_unseen_category_is_the_unseen_token_and_counted(tmp_path):
    schema = infer_schema([read_csv(write(tmp_path / "a.csv", ROWS))], label="label")
    test = read_csv(write(tmp_path / "b.csv", "age,city,score,label\n33,Lima,1.0,yes\n"))
    arrays = encode(test, schema)
    assert arrays.categorical[0, 0] == UNSEEN and arrays.unseen == {"city": 1}


# -- bad input: one line naming the file and the row ----------------------------------------------------------------
def test_inf_in_a_numeric_column_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "t.csv", "x,c\n1,a\n2,b\ninf,c\n")
    table = read_csv(path)
    with pytest.raises(SelfsupError, match=r"t\.csv line 4, column x: 'inf' is infinite"):
        infer_schema([table])


def test_nan_in_a_numeric_column_is_a_missing_value(tmp_path):
    table = read_csv(write(tmp_path / "t.csv", "x,c\n1,a\nNaN,b\n2,a\n"))
    schema = infer_schema([table])
    assert schema.numeric[0].name == "x" and np.isnan(encode(table, schema).numeric[1, 0])


def test_a_ragged_row_names_the_file_and_line(tmp_path):
    path = write(tmp_path / "t.csv", "x,c\n1,a\n2\n3,c\n")
    with pytest.raises(SelfsupError, match=r"t\.csv line 3: 1 fields, expected 2"):
        read_csv(path)


def test_a_column_numeric_in_one_file_and_text_in_another(tmp_path):
    a = read_csv(write(tmp_path / "a.csv", "x,c\n1,a\n2,b\n"))
    b = read_csv(write(tmp_path / "b.csv", "x,c\n3,a\nlots,b\n"))
    with pytest.raises(SelfsupError, match=r"b\.csv line 3, column x: 'lots' is text, but the column is numeric in "
                                           r".*a\.csv"):
        infer_schema([a, b])
    schema = infer_schema([a])
    with pytest.raises(SelfsupError, match=r"b\.csv line 3, column x: 'lots' is text, but the column is numeric in "
                                           r"the schema of .*a\.csv"):
        encode(b, schema)


def test_an_empty_file_and_a_header_alone(tmp_path):
    with pytest.raises(SelfsupError, match=r"e\.csv: empty file"):
        read_csv(write(tmp_path / "e.csv", ""))
    with pytest.raises(SelfsupError, match=r"h\.csv: a header and no rows"):
        read_csv(write(tmp_path / "h.csv", "x,c\n"), header="yes")
    with pytest.raises(SelfsupError, match=r"b\.csv: empty file"):
        read_csv(write(tmp_path / "b.csv", "\n\n"))


def test_a_label_not_seen_in_training_names_the_row(tmp_path):
    schema = infer_schema([read_csv(write(tmp_path / "a.csv", ROWS))], label="label")
    test = read_csv(write(tmp_path / "b.csv", "age,city,score,label\n33,Rome,1.0,yes\n34,Rome,1.0,maybe\n"))
    with pytest.raises(SelfsupError, match=r"b\.csv line 3, column label: label 'maybe'"):
        encode(test, schema)


@pytest.mark.skipif(not ADULT.is_dir(), reason="shared data folder absent")
def test_adult_reads_with_its_test_labels():
    names = [f"c{i}" for i in range(14)] + ["income"]
    train = read_csv(ADULT / "train.csv", column_names=names)
    test = read_csv(ADULT / "test.csv", column_names=names)
    schema = infer_schema([train], label="income")
    assert len(schema.numeric) == 6 and len(schema.categorical) == 8
    arrays = encode(test, schema, strip_label_suffix=".")
    assert len(arrays) == 16281 and set(np.unique(arrays.labels)) == {0, 1}
    assert (encode(train, schema).categorical == MISSING).any(), "Adult's ? cells are missing values"


def test_rows_keep_their_file_lines_through_blank_lines_splits_and_joins(tmp_path):
    a = read_csv(write(tmp_path / "a.csv", "x,c\n1,a\n\n2,b\n3,c\n"))
    assert [a.where(i) for i in range(3)] == [f"{tmp_path / 'a.csv'} line {n}" for n in (2, 4, 5)]
    assert a.take(np.array([2, 0])).where(0).endswith("a.csv line 5")
    b = read_csv(write(tmp_path / "b.csv", "x,c\n4,d\n"))
    from selfsup.modalities.tabular import concat_tables

    assert concat_tables([a, b]).where(3).endswith("b.csv line 2")
    pd.DataFrame({"x": [1.0, float("inf")]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(SelfsupError, match=r"p\.parquet row 2, column x: inf is infinite"):
        infer_schema([read_table(tmp_path / "p.parquet")])
