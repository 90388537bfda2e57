"""Training sets built from a version's bytes by its schema's roles: ids dropped, categories
one-hot or ordinal in the declared (or sorted) order, labels numbered, gaps filled and noted."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quality.schema import assess
from quality.table import MAX_CATEGORIES, UnusableDataset, training_set
from training_jobs import holdout

CSV = (
    "row_id,site,speed,running,label\n"
    "a1,north,1.0,true,ok\n"
    "a2,south,2.0,false,fault\n"
    "a3,east,,yes,ok\n"
    "a4,south,4.0,0,\n"
    "a5,,5.0,1,fault\n"
)


def declared(**site: Any) -> dict[str, Any]:
    return {
        "source": "declared",
        "columns": [
            {"name": "row_id", "type": "string", "role": "id"},
            {"name": "site", "type": "category", **site},
            {"name": "speed", "type": "float"},
            {"name": "running", "type": "boolean"},
            {"name": "label", "type": "category", "role": "label"},
        ],
    }


def test_one_hot_by_default_in_sorted_order() -> None:
    built = training_set(CSV.encode(), declared())
    # a4 has no label: dropped. site sorted: east, north, south; a5's site is missing: all zeros
    assert built.features.dtype == np.float32 and built.labels.dtype == np.int64
    np.testing.assert_array_equal(
        built.features,
        [
            [0, 1, 0, 1.0, 1],
            [0, 0, 1, 2.0, 0],
            [1, 0, 0, 2.0, 1],  # speed missing: the median of 1, 2, 5 over the labelled rows
            [0, 0, 0, 5.0, 1],
        ],
    )
    np.testing.assert_array_equal(built.labels, [1, 0, 1, 0])  # fault, ok sorted
    assert built.notes == [
        "1 rows without a label (label) dropped",
        "column speed: 1 missing values filled with its median",
    ]


def test_ordinal_in_the_declared_order() -> None:
    built = training_set(CSV.encode(), declared(categories=["south", "north", "east"], encoding="ordinal"))
    np.testing.assert_array_equal(built.features[:, 0], [1, 0, 2, -1])  # missing: -1
    assert built.features.shape == (4, 3)


def test_a_category_unknown_to_the_declared_list_in_a_later_version() -> None:
    schema = declared(categories=["north", "south"])
    first = training_set(CSV.replace("east", "north").encode(), schema)
    later = training_set(CSV.encode(), schema)  # version 2 brings a site "east"
    assert first.features.shape == later.features.shape == (4, 4)  # the same columns
    np.testing.assert_array_equal(later.features[2, :2], [0, 0])
    assert "column site: 1 values outside its declared categories" in later.notes
    assert not any("east" in note for note in later.notes)  # counts and names only


def test_declared_label_categories_and_a_label_outside_them() -> None:
    schema = declared()
    schema["columns"][4]["categories"] = ["ok", "fault"]
    text = CSV.replace("a5,,5.0,1,fault", "a5,,5.0,1,broken")
    built = training_set(text.encode(), schema)
    np.testing.assert_array_equal(built.labels, [0, 1, 0])  # ok=0, fault=1, "broken" dropped
    assert "1 rows whose label (label) is outside its declared categories dropped" in built.notes


def test_an_integer_label_is_kept_and_must_be_whole() -> None:
    schema = {
        "columns": [{"name": "x", "type": "integer"}, {"name": "y", "type": "integer", "role": "label"}],
    }
    built = training_set(b"x,y\n1,7\n2,3\n3,\n", schema)
    np.testing.assert_array_equal(built.labels, [7, 3])
    with pytest.raises(UnusableDataset, match="1 values that are not whole numbers"):
        training_set(b"x,y\n1,7\n2,3.5\n", schema)


def test_undeclared_and_ignored_columns_are_left_out() -> None:
    schema = {
        "columns": [
            {"name": "a", "type": "float"},
            {"name": "b", "type": "float", "role": "ignored"},
            {"name": "label", "type": "integer", "role": "label"},
        ]
    }
    built = training_set(b"secret,a,b,label\nx,1,2,0\ny,3,4,1\n", schema)
    np.testing.assert_array_equal(built.features, [[1], [3]])


def test_values_that_are_not_numbers_are_missing() -> None:
    schema = {
        "columns": [{"name": "a", "type": "float"}, {"name": "label", "type": "integer", "role": "label"}]
    }
    built = training_set(b"a,label\n1,0\nsecret,1\n3,0\n", schema)
    np.testing.assert_array_equal(built.features[:, 0], [1, 2, 3])
    assert built.notes == [
        "column a: 1 values that are not float taken as missing",
        "column a: 1 missing values filled with its median",
    ]


def test_the_inferred_schema_builds_the_same_set_every_time(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    sites = ("north", "south", "east")
    path.write_text(
        "row_id,site,speed,running,label\n"
        + "".join(
            f"r{i},{sites[i % 3]},{i / 2},{i % 4 == 0},{'ok' if i % 3 else 'fault'}\n" for i in range(30)
        )
    )
    found = assess(path, "text/csv", {"schema": None, "on_untrainable": "reject"}, ["compute"])
    assert found.schema is not None
    first, second = (
        training_set(path.read_bytes(), found.schema),
        training_set(path.read_bytes(), found.schema),
    )
    np.testing.assert_array_equal(first.features, second.features)
    assert first.features.shape == (30, 5)  # row_id dropped (an id), site one-hot (3), speed, running


def test_an_untrainable_schema_is_refused() -> None:
    with pytest.raises(UnusableDataset, match="no label column"):
        training_set(b"a\n1\n", {"columns": [{"name": "a", "type": "float"}]})


def test_too_many_categories() -> None:
    rows = "".join(f"v{i},{i % 2}\n" for i in range(MAX_CATEGORIES + 1))
    schema = {
        "columns": [{"name": "c", "type": "category"}, {"name": "label", "type": "integer", "role": "label"}]
    }
    with pytest.raises(UnusableDataset, match="over 1000 distinct values"):
        training_set(("c,label\n" + rows).encode(), schema)


def test_parquet_by_roles() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    table = {
        "id": ["x", "y", "z"],
        "zone": pa.array(["b", "a", "b"]).dictionary_encode(),
        "v": [0.5, None, 1.5],
        "class": ["up", "down", "up"],
    }
    pq.write_table(pa.table(table), buffer)
    schema = {
        "columns": [
            {"name": "id", "type": "string", "role": "id"},
            {"name": "zone", "type": "category"},
            {"name": "v", "type": "float"},
            {"name": "class", "type": "string", "role": "label"},
        ]
    }
    built = training_set(buffer.getvalue(), schema)
    np.testing.assert_array_equal(built.features, [[0, 1, 0.5], [1, 0, 1.0], [0, 1, 1.5]])
    np.testing.assert_array_equal(built.labels, [1, 0, 1])


def test_npz_arrays_by_role() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, img=np.ones((4, 2, 2)), extra=np.arange(4.0), target=np.array(["b", "a", "b", "c"]))
    schema = {
        "arrays": [
            {"name": "img", "dtype": "float64"},
            {"name": "extra", "dtype": "float64"},
            {"name": "target", "dtype": "str4", "role": "label"},
        ]
    }
    built = training_set(buffer.getvalue(), schema)
    assert built.features.shape == (4, 5)  # several feature arrays: flattened side by side
    np.testing.assert_array_equal(built.labels, [1, 0, 1, 2])
    one = {
        "arrays": [{"name": "img", "dtype": "float64"}, {"name": "extra", "dtype": "int64", "role": "label"}]
    }
    assert training_set(buffer.getvalue(), one).features.shape == (4, 2, 2)  # one keeps its shape


def test_holdout_reads_by_schema_and_as_before_without_one() -> None:
    rows = "".join(f"r{i},{'n' if i % 2 else 's'},{i},{i % 2}\n" for i in range(20))
    text = ("row_id,site,x,label\n" + rows).encode()
    schema = {
        "columns": [
            {"name": "row_id", "type": "string", "role": "id"},
            {"name": "site", "type": "category", "encoding": "ordinal"},
            {"name": "x", "type": "integer"},
            {"name": "label", "type": "integer", "role": "label"},
        ]
    }
    features, labels = holdout.read_dataset(text, "text/csv", schema)
    assert features.shape == (20, 2) and labels.tolist() == [i % 2 for i in range(20)]
    with pytest.raises(holdout.UnusableDataset, match="numbers only"):
        holdout.read_dataset(text, "text/csv")  # without a schema: numbers only, as before
    few = {"columns": schema["columns"][2:]}
    with pytest.raises(holdout.UnusableDataset, match="at least 10"):
        holdout.read_dataset(b"x,label\n1,0\n2,1\n", "text/csv", few)
