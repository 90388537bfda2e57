"""Expectation suites: the committed GX names against the installed registry, unknown types
refused at declaration without importing GX, results kept without a row of the data, and the
CLI's help paths free of the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kernel.errors import InvalidInput
from kernel.validation import validate
from marketplace.schemas import OfferingMetadata
from quality import expectations
from quality.run import main as run_main
from tests.services import REPO

HEAVY = ("great_expectations", "pandas", "pyarrow", "dvc")
SECRETS = [f"SECRET-{i:03d}-kestrel" for i in range(40)]


def test_committed_names_are_the_installed_registry() -> None:
    import great_expectations
    from great_expectations.expectations.registry import list_registered_expectation_implementations

    installed = {n for n in list_registered_expectation_implementations() if n.startswith("expect_")}
    names = expectations.gx_names()
    assert set(names["pandas"]) | set(names["sql_only"]) == installed, (
        f"gx_expectations.json was written for another GX than {great_expectations.__version__}"
    )
    assert not set(names["pandas"]) & set(names["sql_only"])


def _metadata(kind: str) -> dict:  # type: ignore[type-arg]
    return {
        "title": "t",
        "media_type": "text/csv",
        "expectations": [{"type": kind, "kwargs": {"column": "a"}}],
    }


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("expect_column_values_to_be_purple", "not a Great Expectations expectation type"),
        ("expect_query_results_to_match_comparison", "needs a SQL data source"),
        ("unexpected_rows_expectation", "not an expectation name"),
    ],
)
def test_unknown_types_are_refused_with_the_field(kind: str, said: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate(OfferingMetadata, _metadata(kind), prefix="metadata", what="metadata")
    on_type = [e for e in caught.value.errors if e.path.endswith(".0.type")]
    assert on_type and all(said in e.message for e in on_type), caught.value.errors


def test_declaring_a_suite_imports_neither_gx_nor_pandas() -> None:
    code = f"""
import json, sys
from kernel.errors import InvalidInput
from kernel.validation import validate
from marketplace.schemas import OfferingMetadata
ok = validate(OfferingMetadata, {json.dumps(_metadata("expect_column_values_to_not_be_null"))})
try:
    validate(OfferingMetadata, {json.dumps(_metadata("expect_column_values_to_be_purple"))})
except InvalidInput:
    refused = True
print(json.dumps({{"refused": refused, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout) == {"refused": True, "loaded": []}


@pytest.mark.parametrize("args", [["--help"], ["verify", "--help"], ["offerings", "show", "--help"]])
def test_cli_help_loads_no_heavy_library(args: list[str]) -> None:
    code = f"""
import json, sys
from node.cli import main
sys.argv = ["agora", *{args!r}]
try:
    main()
except SystemExit:
    pass
print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr


def test_kept_results_are_an_allow_list() -> None:
    gx_result = {
        "element_count": 40,
        "unexpected_count": 40,
        "unexpected_percent": 100.0,
        "missing_count": 0,
        "partial_unexpected_list": SECRETS[:20],
        "partial_unexpected_index_list": list(range(20)),
        "partial_unexpected_counts": [{"value": s, "count": 1} for s in SECRETS[:20]],
        "unexpected_list": SECRETS,
        "unexpected_index_list": list(range(40)),
        "unexpected_index_query": f"df.filter(items={list(range(40))}, axis=0)",
        "unexpected_rows": SECRETS,
        "details": {"value_counts": [{"value": s, "count": 1} for s in SECRETS]},
        "observed_value": SECRETS[0],
    }
    declared = {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "name", "value_set": ["ok"]},
    }
    row = expectations.kept_result(declared, success=False, result=gx_result, raised=False, id_columns=set())
    assert row == {
        "type": "expect_column_values_to_be_in_set",
        "kwargs": {"column": "name", "value_set": ["ok"]},
        "success": False,
        "element_count": 40,
        "unexpected_count": 40,
        "unexpected_percent": 100.0,
        "missing_count": 0,
    }
    number = expectations.kept_result(
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "n"}},
        success=True,
        result={"observed_value": 41},
        raised=False,
        id_columns=set(),
    )
    assert number["observed_value"] == 41
    of_an_id = expectations.kept_result(
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "n"}},
        success=True,
        result={"observed_value": 41},
        raised=False,
        id_columns={"n"},
    )
    assert "observed_value" not in of_an_id


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": SECRETS,
            "colour": ["red", "blue"] * 20,
            "x": [float(i) for i in range(40)],
            "uid": list(range(1000, 1040)),
        }
    )


SUITE = {
    "name": "people",
    "expectations": [
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "name", "value_set": ["ok"]}},
        {"type": "expect_column_values_to_not_match_regex", "kwargs": {"column": "name", "regex": "SECRET"}},
        {
            "type": "expect_column_most_common_value_to_be_in_set",
            "kwargs": {"column": "name", "value_set": ["x"]},
        },
        {
            "type": "expect_column_distinct_values_to_be_in_set",
            "kwargs": {"column": "name", "value_set": ["y"]},
        },
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "colour"}},
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "uid", "max_value": 10}},
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "x", "min_value": 0, "max_value": 100},
        },
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nowhere"}},
    ],
}


def test_a_failing_suite_on_secret_strings_keeps_none_of_them() -> None:
    rows = expectations.validate(_frame(), SUITE, id_columns={"uid"})
    assert [r["type"] for r in rows] == [e["type"] for e in SUITE["expectations"]]
    assert [r["success"] for r in rows] == [False, False, False, False, False, False, True, False]
    assert rows[0]["unexpected_count"] == 40 and rows[0]["element_count"] == 40
    assert rows[6]["observed_value"] == pytest.approx(19.5)
    assert "observed_value" not in rows[5]  # the max of an id column is one record's id
    assert "error" in rows[7]
    doc = expectations.document(rows, suite=SUITE, offering_id="o", version=2, dataset_sha256="ab" * 32)
    summary = expectations.summary(doc)
    assert summary["failing_columns"] == ["name", "colour", "uid", "nowhere"]
    assert (summary["evaluated"], summary["passed"], summary["failed"]) == (8, 1, 7)
    text = json.dumps([doc, summary])
    assert [s for s in SECRETS if s in text] == []
    assert "1039" not in text and "SECRET-" not in text.replace('"regex": "SECRET"', "")


def test_kwargs_that_do_not_fit_name_the_field_not_the_value() -> None:
    suite = {
        "name": "s",
        "expectations": [
            {"type": "expect_column_max_to_be_between", "kwargs": {"column": "x", "min_value": SECRETS[0]}}
        ],
    }
    with pytest.raises(expectations.SuiteError) as caught:
        expectations.validate(_frame(), suite, id_columns=set())
    assert "expectation 1 (expect_column_max_to_be_between): min_value" in str(caught.value)
    assert SECRETS[0] not in str(caught.value)


def test_the_run_process_writes_nothing_of_the_rows(tmp_path: Path) -> None:
    data = tmp_path / "people.csv"
    _frame().to_csv(data, index=False)
    job = {
        "media_type": "text/csv",
        "schema": {
            "columns": [
                {"name": "uid", "type": "integer", "role": "id"},
                {"name": "colour", "type": "category"},
            ]
        },
        "suite": SUITE,
        "min_count": 10,
        "offering": "o",
        "version": 1,
        "dataset_sha256": "cd" * 32,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert run_main([str(tmp_path / "job.json"), str(data), str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ok"] is True
    assert out["summary"]["failed"] == 7
    colour = next(c for c in out["profile"]["columns"] if c["name"] == "colour")
    assert colour["top"] == [{"value": "blue", "count": 20}, {"value": "red", "count": 20}]
    name = next(c for c in out["profile"]["columns"] if c["name"] == "name")
    assert name["distinct"] == 40 and name["top"] == []
    assert [s for s in SECRETS if s in (tmp_path / "out.json").read_text()] == []


def test_an_unreadable_file_is_a_reason_without_its_content(tmp_path: Path) -> None:
    data = tmp_path / "broken.csv"
    data.write_text("a,b\n1,2\n" + f"{SECRETS[0]},2,3,4\n")
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "media_type": "text/csv",
                "schema": None,
                "suite": SUITE,
                "min_count": 10,
                "offering": "o",
                "version": 1,
                "dataset_sha256": "00" * 32,
            }
        )
    )
    assert run_main([str(tmp_path / "job.json"), str(data), str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["ok"] is False
    assert out["reason"].startswith("reading the file failed (")
    assert SECRETS[0] not in out["reason"]


def test_a_run_past_its_memory_limit_says_so(tmp_path: Path) -> None:
    import numpy as np

    data = tmp_path / "big.csv"
    with data.open("w") as f:
        f.write("x,y\n")
        np.savetxt(f, np.random.default_rng(0).normal(size=(2_000_000, 2)), fmt="%.6f", delimiter=",")
    job = {
        "media_type": "text/csv",
        "schema": None,
        "suite": None,
        "min_count": 10,
        "offering": "o",
        "version": 1,
        "dataset_sha256": "00" * 32,
    }
    for limit, ok in ((400_000_000, False), (0, True)):
        (tmp_path / "job.json").write_text(json.dumps({**job, "max_memory": limit}))
        out = tmp_path / "out.json"
        run = subprocess.run(
            [sys.executable, "-I", "-m", "quality.run", str(tmp_path / "job.json"), str(data), str(out)],
            cwd=tmp_path,
            capture_output=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        answer = json.loads(out.read_text())
        assert answer["ok"] is ok, answer.get("reason")
        if not ok:
            assert (
                answer["reason"]
                == "reading the file ran out of memory (AGORA_QUALITY_MAX_MEMORY: 400000000 bytes)"
            )


CONDITIONED_KEYS = ("row_condition", "condition_parser")
CONDITIONED = {
    "type": "expect_column_max_to_be_between",
    "kwargs": {
        "column": "x",
        "max_value": 5,
        "row_condition": 'name=="SECRET-007-kestrel"',
        "condition_parser": "pandas",
    },
}


@pytest.mark.parametrize(
    "keys", [("row_condition", "condition_parser"), ("row_condition",), ("condition_parser",)]
)
def test_a_condition_on_the_rows_is_refused_at_declaration(keys: tuple[str, ...]) -> None:
    kwargs = {k: v for k, v in CONDITIONED["kwargs"].items() if k not in CONDITIONED_KEYS or k in keys}
    body = {
        **_metadata("expect_column_max_to_be_between"),
        "expectations": [{**CONDITIONED, "kwargs": kwargs}],
    }
    with pytest.raises(InvalidInput) as caught:
        validate(OfferingMetadata, body, prefix="metadata", what="metadata")
    on_kwargs = [e for e in caught.value.errors if e.path.endswith(".0.kwargs")]
    assert on_kwargs and all("can single out records" in e.message for e in on_kwargs), caught.value.errors
    assert all(k in on_kwargs[0].message for k in keys)


def test_a_stored_condition_keeps_no_figure_of_the_records_it_picks() -> None:
    suite = {
        "name": "old",
        "expectations": [CONDITIONED, {**CONDITIONED, "kwargs": {"column": "x", "max_value": 5}}],
    }
    conditioned, plain = expectations.validate(_frame(), suite, id_columns=set())
    assert plain["observed_value"] == 39.0  # the control: without a condition the max is kept
    assert conditioned == {"type": CONDITIONED["type"], "kwargs": CONDITIONED["kwargs"], "success": False}


def test_an_npz_that_would_balloon_is_refused_from_its_header(tmp_path: Path) -> None:
    import numpy as np

    from quality.run import analyse

    data = tmp_path / "zeros.npz"
    np.savez_compressed(data, x=np.zeros((2**21, 8), dtype=np.float64))  # 128 MiB, about 130 KiB stored
    assert data.stat().st_size < 2**20
    job = {"media_type": "application/x-npz", "schema": None, "suite": None, "min_count": 10}
    # analyse, not main: main would set the memory limit on this test process
    assert analyse(data, {**job, "max_memory": 64 * 2**20}) == {
        "ok": False,
        "reason": "the .npz array x takes 134217728 bytes once loaded; "
        "the run may use 67108864 (AGORA_QUALITY_MAX_MEMORY)",
    }
    unbounded = analyse(data, {**job, "max_memory": 0})  # no limit set: the 8 GiB bound
    assert unbounded["ok"] is True and unbounded["profile"]["arrays"][0]["max"] == 0.0
