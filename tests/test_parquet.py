"""Parquet inputs written by pyarrow: interaction / item tables (read_table) and item vectors keyed
by item id (load_item_vectors), with the bad-input cases."""

import datetime
import os

import numpy as np
import pytest

from sidjax.data.embed import load_item_vectors
from sidjax.data.sources import load_dataset, read_table


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pyarrow is missing under CI: install the [parquet] extra")
        pytest.skip("pyarrow not installed (pip install -e '.[parquet]')")
    return pa, pq


def _write(path, columns: dict, schema=None):
    pa, pq = _pyarrow()
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def test_read_table_from_parquet_with_typed_columns(tmp_path):
    pa, _ = _pyarrow()
    t0 = datetime.datetime(2024, 5, 1, 12, 0)
    inter = _write(tmp_path / "log.parquet", {
        "uid": pa.array([7, 7, 8, 7, 8], pa.int64()),
        "iid": ["b", "a", "a", "c", "b"],
        "ts": pa.array([t0 + datetime.timedelta(hours=h) for h in (2, 1, 5, 3, 4)],
                       pa.timestamp("s")),
        "rating": [5.0, 4.0, 3.0, 2.0, 1.0],
    })
    items = _write(tmp_path / "items.parquet", {
        "iid": ["a", "b", "c"], "title": ["Apple", None, "Cherry"], "brand": ["Acme", "", None]})
    data = load_dataset(inter, user_col="uid", item_col="iid", time_col="ts", items_path=items,
                        text_cols=("title", "brand"))
    seqs = {data.user_ids[u]: [data.item_ids[i] for i in s] for u, s in enumerate(data.sequences)}
    assert seqs == {"7": ["a", "b", "c"], "8": ["b", "a"]}
    assert data.item_ids == ["b", "a", "c"]
    assert data.item_fields == {"title": ["", "Apple", "Cherry"], "brand": ["", "Acme", ""]}
    assert data.item_text == ["", "Apple. Acme.", "Cherry."]
    assert data.provenance["format"] == "table" and data.provenance["files"]["log.parquet"]["sha256"]


@pytest.mark.parametrize("columns, kwargs, message", [
    ({"uid": [1, None], "iid": ["a", "b"], "ts": [1, 2]}, {},
     r"log.parquet: row 2: expected a value in column 'uid'"),
    ({"uid": [1, 2], "iid": ["a", "b"], "ts": [1.0, None]}, {},
     r"log.parquet: row 2: expected a number or ISO-8601 time in column 'ts', got None"),
    ({"user": [1, 2], "iid": ["a", "b"], "ts": [1, 2]}, {},
     r"log.parquet: missing column\(s\) \['uid'\] \(has: user, iid, ts\)"),
])
def test_read_table_parquet_bad_input(tmp_path, columns, kwargs, message):
    path = _write(tmp_path / "log.parquet", columns)
    with pytest.raises(ValueError, match=message):
        read_table(path, user_col="uid", item_col="iid", time_col="ts", **kwargs)


def test_read_table_refuses_a_file_that_is_not_parquet(tmp_path):
    _pyarrow()
    (tmp_path / "log.parquet").write_text("uid,iid\n1,a\n")
    with pytest.raises(ValueError, match="log.parquet: not a readable Parquet file"):
        read_table(tmp_path / "log.parquet", user_col="uid", item_col="iid", time_col=None)


@pytest.mark.parametrize("layout", ["list", "fixed_list", "columns"])
def test_load_parquet_vectors_by_item_id(tmp_path, layout):
    pa, _ = _pyarrow()
    vecs = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    ids = ["30", "10", "20", "99"]
    if layout == "columns":
        columns = {"item_id": ids, **{f"f{j}": vecs[:, j] for j in range(3)}}
    else:
        kind = pa.list_(pa.float32(), 3) if layout == "fixed_list" else pa.list_(pa.float32())
        columns = {"item_id": ids, "vector": pa.array(vecs.tolist(), kind)}
    path = _write(tmp_path / "v.parquet", columns)
    out = load_item_vectors(path, [10, 20, 30])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vecs[[1, 2, 0]])


@pytest.mark.parametrize("columns, message", [
    ({"id": ["a", "b"], "vector": [[1.0, 2.0], [3.0]]},
     r"the vector of item id 'b' \(row 1\) has 1 values, row 0 has 2"),
    ({"id": ["a", "b"], "vector": [[1.0, 2.0], [np.nan, 1.0]]},
     r"item id 'b' \(row 1 of the file\) contains NaN or inf"),
    ({"id": ["a", "b"], "x": [1.0, None], "y": [1.0, 2.0]},
     r"item id 'b' \(row 1 of the file\) contains NaN or inf \(1 bad rows in all; nulls count"),
    ({"id": ["a", "b"], "vector": [[1.0], None]}, r"item id 'b' \(row 1\) has no vector"),
    ({"id": ["a", "a"], "vector": [[1.0], [2.0]]},
     r"item id 'a' appears twice in column 'id' \(rows 0 and 1\)"),
    ({"id": ["a", "c"], "vector": [[1.0], [2.0]]},
     r"1 of 2 catalog items have no vector \(first: 'b'\)"),
    ({"key": ["a", "b"], "vector": [[1.0], [2.0]]}, r"no item id column .*columns: key, vector"),
    ({"id": ["a", "b"], "name": ["x", "y"]}, r"columns \['name'\] are not numeric"),
    ({"id": ["a", None], "vector": [[1.0], [2.0]]}, r"row 1 has no item id in column 'id'"),
])
def test_load_parquet_vectors_bad_input(tmp_path, columns, message):
    path = _write(tmp_path / "v.parquet", columns)
    with pytest.raises(ValueError, match=message):
        load_item_vectors(path, ["a", "b"])
