"""Schema inference from bounded reads, a declared schema checked against the file, and the
trainability check, on real CSV, Parquet and .npz files."""

from __future__ import annotations

import re
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from quality import sampling, schema
from quality.sampling import DatasetProblem
from quality.schema import Untrainable, assess, read_shape

CSV = (
    "turbine_id,site,temperature,rpm,running,measured,label\n"
    "T-001,north,61.5,1400,true,2026-01-01,ok\n"
    "T-002,south,62.0,1420,false,2026-01-02,fault\n"
    "T-003,north,,1390,true,2026-01-03,ok\n"
    "T-004,south,64.25,,false,2026-01-04,ok\n"
    "T-005,north,60.0,1410,true,2026-01-05,fault\n"
    "T-006,north,59.5,1405,true,2026-01-06,ok\n"
)
REJECT = {"schema": None, "on_untrainable": "reject"}
FLAGGED = {"schema": None, "on_untrainable": "register-flagged"}


def write(tmp_path: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def columns(doc: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    assert doc is not None
    return {c["name"]: (c["type"], c["role"]) for c in doc["columns"]}


def test_a_csv_is_inferred_from_its_header_and_first_rows(tmp_path: Path) -> None:
    found = assess(write(tmp_path, CSV), "text/csv", REJECT, ["compute"])
    assert found.schema is not None and found.schema["source"] == "inferred"
    assert columns(found.schema) == {
        "turbine_id": ("string", "id"),
        "site": ("category", "feature"),
        "temperature": ("float", "feature"),
        "rpm": ("integer", "feature"),  # whole numbers with a gap: pandas reads floats
        "running": ("boolean", "feature"),
        "measured": ("datetime", "feature"),
        "label": ("category", "label"),
    }
    assert "categories" not in str(found.schema)  # no value of the file is kept
    assert found.trainable == {
        "ok": True,
        "reason": "label label; 4 feature columns, 1 of them encoded",
        "label": "label",
        "features": ["site", "temperature", "rpm", "running"],
        "encoded": [{"name": "site", "encoding": "onehot"}],
        "dropped": [{"name": "turbine_id", "reason": "id"}, {"name": "measured", "reason": "datetime"}],
    }


def test_roles_by_name_and_by_values(tmp_path: Path) -> None:
    text = "ID,code,Target,y,free\n" + "".join(
        f"{i},c{i},{i % 2},{i % 3},word{i % 7}x{i}\n" for i in range(40)
    )
    found = read_shape(write(tmp_path, text), "text/csv")
    got = {c.name: (c.type, c.role) for c in found.columns}
    # the first label name in the order label, target, class, y; a text column of distinct values is an id
    assert got == {
        "ID": ("integer", "id"),
        "code": ("string", "id"),
        "Target": ("integer", "label"),
        "y": ("integer", "feature"),
        "free": ("string", "id"),
    }


def test_a_download_only_offering_gets_no_trainability(tmp_path: Path) -> None:
    found = assess(write(tmp_path, CSV), "text/csv", REJECT, ["download"])
    assert found.schema is not None and found.trainable is None


def test_parquet_types_come_from_the_footer(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "sample_id": pa.array(["a", "b"]),
            "zone": pa.array(["x", "y"]).dictionary_encode(),
            "value": pa.array([1.5, 2.5]),
            "count": pa.array([1, 2], pa.int32()),
            "flag": pa.array([True, False]),
            "at": pa.array([0, 1], pa.timestamp("s")),
            "tags": pa.array([[1], [2]]),
            "class": pa.array([0, 1]),
        }
    )
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    found = assess(path, "application/octet-stream", REJECT, ["federate"])  # recognised by its magic
    assert columns(found.schema) == {
        "sample_id": ("string", "id"),
        "zone": ("category", "feature"),
        "value": ("float", "feature"),
        "count": ("integer", "feature"),
        "flag": ("boolean", "feature"),
        "at": ("datetime", "feature"),
        "tags": ("string", "ignored"),
        "class": ("integer", "label"),
    }
    assert found.trainable is not None and found.trainable["ok"], found.trainable


def test_npz_arrays_from_their_headers_without_loading_them(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    names = np.array(["a", "b", "c"], dtype=object)  # needs pickle: named, never loaded
    np.savez_compressed(path, X=np.zeros((3, 1, 8, 8), np.float32), y=np.arange(3), names=names)
    found = assess(path, "application/x-npz", REJECT, ["compute"])
    assert found.schema == {
        "source": "inferred",
        "arrays": [
            {"name": "X", "dtype": "float32", "shape": [3, 1, 8, 8], "role": "feature"},
            {"name": "y", "dtype": "int64", "shape": [3], "role": "label"},
            {"name": "names", "dtype": "object", "shape": [3], "role": "ignored"},
        ],
    }
    assert found.trainable is not None and found.trainable["ok"]
    assert found.trainable["dropped"] == [{"name": "names", "reason": "ignored"}]


@pytest.mark.parametrize(
    ("arrays", "reason"),
    [
        ({"X": np.zeros((4, 2))}, "no label array"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(4)}, "the label array y is float64"),
        ({"X": np.zeros((4, 2)), "y": np.zeros((4, 2), np.int64)}, "it must be one value per row"),
        ({"X": np.zeros((5, 2)), "y": np.zeros(4, np.int64)}, "different numbers of rows (4, 5)"),
        ({"X": np.array(["a"] * 4), "y": np.zeros(4, np.int64)}, "no usable feature array"),
    ],
)
def test_npz_trainability(tmp_path: Path, arrays: dict[str, np.ndarray], reason: str) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(Untrainable) as refused:
        assess(path, "application/x-npz", REJECT, ["compute"])
    assert refused.value.status == 422 and reason in refused.value.detail


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a,b\n1,2\n3,4\n", "no label column"),
        ("row_id,note,label\nr1,some words,1\nr2,other words,0\n", "no usable feature"),
        ("a,label\n1,0.5\n2,1.5\n", "the label label is float"),
        ("a,label\n1,2026-01-01\n2,2026-01-02\n", "the label label is datetime"),
    ],
)
def test_untrainable_tables_are_refused_or_flagged(tmp_path: Path, text: str, reason: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(Untrainable) as refused:
        assess(path, "text/csv", REJECT, ["compute"])
    problem = refused.value.problem()
    assert problem["status"] == 422 and problem["type"].endswith("/untrainable-dataset")
    assert reason in problem["detail"] and problem["trainable"]["ok"] is False
    flagged = assess(path, "text/csv", FLAGGED, ["compute"])
    assert flagged.schema is not None and flagged.trainable is not None
    assert flagged.trainable["ok"] is False and reason in flagged.trainable["reason"]


def test_a_text_label_is_trainable(tmp_path: Path) -> None:
    text = "x,label\n" + "".join(f"{i},{'cat' if i % 2 else 'dog'}\n" for i in range(10))
    found = assess(write(tmp_path, text), "text/csv", REJECT, ["compute"])
    assert found.trainable is not None and found.trainable["ok"] and found.trainable["label"] == "label"


def test_a_declared_schema_is_checked_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CSV)
    declared = {
        "columns": [
            {"name": "turbine_id", "type": "string", "role": "id"},
            {"name": "site", "type": "category", "categories": ["south", "north"], "encoding": "ordinal"},
            {"name": "temperature", "type": "float", "unit": "degC"},
            {"name": "running", "type": "boolean"},
            {"name": "label", "type": "category", "role": "label"},
        ]
    }
    found = assess(path, "text/csv", {**REJECT, "schema": declared}, ["compute"])
    assert found.schema is not None and found.schema["source"] == "declared"
    assert found.schema["columns"][1] == {
        "name": "site",
        "type": "category",
        "categories": ["south", "north"],
        "encoding": "ordinal",
        "role": "feature",
    }
    assert found.trainable is not None and found.trainable["ok"]
    assert {"name": "rpm", "reason": "not in the declared schema"} in found.trainable["dropped"]
    assert found.trainable["encoded"] == [{"name": "site", "encoding": "ordinal"}]


@pytest.mark.parametrize(
    ("column", "says"),
    [
        (
            {"name": "turbine", "type": "string"},
            "declares column turbine, which the file's header does not have",
        ),
        (
            {"name": "site", "type": "float"},
            "column site is declared float but the file's first rows hold category",
        ),
        ({"name": "temperature", "type": "integer"}, "column temperature is declared integer"),
        ({"name": "running", "type": "integer"}, "column running is declared integer"),
        ({"name": "measured", "type": "boolean"}, "column measured is declared boolean"),
    ],
)
def test_a_mismatch_names_the_column(tmp_path: Path, column: dict[str, Any], says: str) -> None:
    declared = {"schema": {"columns": [column]}, "on_untrainable": "register-flagged"}
    with pytest.raises(DatasetProblem) as refused:
        assess(write(tmp_path, CSV), "text/csv", declared, ["download"])
    assert refused.value.status == 422 and says in refused.value.detail, refused.value.detail
    assert refused.value.errors[0].path.startswith("schema.columns.0")


def test_declared_integer_zero_one_may_be_boolean(tmp_path: Path) -> None:
    path = write(tmp_path, "flag,label\n0,1\n1,0\n1,1\n")
    found = assess(
        path, "text/csv", {**REJECT, "schema": {"columns": [{"name": "flag", "type": "boolean"}]}}, []
    )
    assert found.schema is not None
    with pytest.raises(DatasetProblem, match="label is declared boolean"):
        assess(
            write(tmp_path, "label\n0\n2\n"),
            "text/csv",
            {"schema": {"columns": [{"name": "label", "type": "boolean"}]}},
            [],
        )


@pytest.mark.parametrize(
    ("arrays", "says"),
    [
        ([{"name": "Z", "dtype": "float32"}], "declares array Z, which the .npz does not hold"),
        ([{"name": "X", "dtype": "int64"}], "array X is declared int64 but the .npz holds float32"),
        ([{"name": "X", "dtype": "float32", "shape": [None, 64]}], "declared of shape [None, 64]"),
        ([{"name": "X", "dtype": "float64", "shape": [None, 1, 8, 8]}], None),  # the same kind: plausible
    ],
)
def test_declared_arrays_are_checked(tmp_path: Path, arrays: list[dict[str, Any]], says: str | None) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((3, 1, 8, 8), np.float32), y=np.arange(3))
    declared = {"schema": {"arrays": arrays}, "on_untrainable": "register-flagged"}
    if says is None:
        assert assess(path, "application/x-npz", declared, ["download"]).schema is not None
        return
    with pytest.raises(DatasetProblem) as refused:
        assess(path, "application/x-npz", declared, ["download"])
    assert says in refused.value.detail


def test_columns_declared_for_an_npz_and_arrays_for_a_csv(tmp_path: Path) -> None:
    npz = tmp_path / "d.npz"
    np.savez(npz, X=np.zeros((3, 2)), y=np.arange(3))
    with pytest.raises(DatasetProblem, match="declare arrays"):
        assess(npz, "application/x-npz", {"schema": {"columns": [{"name": "X", "type": "float"}]}}, [])
    with pytest.raises(DatasetProblem, match="declares arrays"):
        assess(
            write(tmp_path, CSV), "text/csv", {"schema": {"arrays": [{"name": "X", "dtype": "float32"}]}}, []
        )


# Hostile and malformed files ----------------------------------------------------------------


def test_a_large_file_is_not_read_whole(tmp_path: Path) -> None:
    """A 1 GiB CSV (sparse on disk): registration reads its first 8 MiB only."""
    path = write(tmp_path, CSV)
    with path.open("r+b") as f:
        f.truncate(1024**3)
    tracemalloc.start()
    started = time.perf_counter()
    found = assess(path, "text/csv", REJECT, ["compute"])
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found.trainable is not None and found.trainable["ok"]
    print(f"inferred a 1 GiB CSV in {seconds:.2f} s, peak {peak / 2**20:.0f} MiB traced")
    assert peak < 64 * 2**20


def test_a_sample_is_cut_at_a_record_outside_quotes() -> None:
    chunk = b'a,b\n1,"two\nlines"\n2,"open\nquote'
    assert chunk[: sampling.record_end(chunk)] == b'a,b\n1,"two\nlines"\n'


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"a," * 2001 + b"label\n1\n", "at most 2000 are read"),
        (b"a,a,label\n1,2,3\n", "repeats a"),
        (b"a,,label\n1,2,3\n", "column 2 of the CSV's header has no usable name"),
        (b"\xff\xfe,label\n1,2\n", "not UTF-8"),
        (b"x" * (1024 * 1024 + 10) + b"\n1\n", "header line is longer than 1024 KiB"),
        (b"a,label\n1,2\n3,4,secret-value\n", "the CSV cannot be parsed"),
        (b"", "the CSV has no header"),
        (b"PK\x03\x04not really a zip", "not a readable .npz"),
        (b"PAR1 not a parquet file", "not a readable Parquet file"),
    ],
)
def test_a_malformed_file_is_a_clear_422(tmp_path: Path, data: bytes, says: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(DatasetProblem) as refused:
        read_shape(path, "text/csv")
    assert refused.value.status == 422 and says in refused.value.detail, refused.value.detail
    assert "secret-value" not in refused.value.detail  # a parser's message may quote the row
    # the same file for a training offering: its reason, refused or flagged; for download: no schema
    with pytest.raises(Untrainable, match=re.escape(says.split(" (")[0][:20])):
        assess(path, "text/csv", REJECT, ["compute"])
    assert assess(path, "text/csv", REJECT, ["download"]).schema is None
    declared = {"schema": {"columns": [{"name": "a", "type": "integer"}]}}
    with pytest.raises(DatasetProblem):  # a declared schema needs a readable file
        assess(path, "text/csv", declared, ["download"])


def test_an_npz_member_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", b"\x93NUMPY\x01\x00" + b"\x10\x00" + b"{'descr': os.system('x')}")
    with pytest.raises(DatasetProblem, match=r"not a readable \.npz"):
        read_shape(path, "application/x-npz")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../evil.txt", b"x")
    with pytest.raises(DatasetProblem, match=r"is not a named \.npy array"):
        read_shape(path, "application/x-npz")


def test_an_unknown_format(tmp_path: Path) -> None:
    path = write(tmp_path, b'{"a": 1}', "d.json")
    assert assess(path, "application/json", REJECT, ["download"]).schema is None
    with pytest.raises(Untrainable, match=r"CSV, Parquet and \.npz"):
        assess(path, "application/json", REJECT, ["compute"])


def test_a_stored_schema_reads_back() -> None:
    doc = {"source": "inferred", "columns": [{"name": "a", "type": "integer", "role": "label"}]}
    assert schema.stored_schema(doc).columns[0].role == "label"
