"""The catalog's quality evidence (quality.dqv): DQV measurements and annotation, CSVW schema,
read back from a peer under the same caps, and never a value the profile did not aggregate."""

from __future__ import annotations

import json
from typing import Any

from quality import bounded, dqv, dqv_read

DATASET = "urn:uuid:0b7c6a52-5d3e-4bb8-9a43-0c1f3c1e9d10"
SCHEMA = {
    "origin": "declared",
    "columns": [
        {"name": "turbine_id", "type": "string", "role": "id"},
        {"name": "rpm", "type": "float", "role": "feature", "unit": "1/min"},
        {"name": "site", "type": "category", "role": "feature"},
        {"name": "fault", "type": "integer", "role": "label"},
    ],
}
# the shapes quality.profile and quality.expectations.summary produce
PROFILE = {
    "rows": 120,
    "min_count": 10,
    "columns": [
        {"name": "turbine_id", "type": "string", "role": "id", "null_share": 0.0},
        {
            "name": "rpm",
            "type": "float",
            "role": "feature",
            "null_share": 0.25,
            "min": 2.5,
            "max": 19.0,
            "mean": 11.2,
            "std": 3.1,
        },
        {
            "name": "site",
            "type": "category",
            "role": "feature",
            "null_share": 0.0,
            "distinct": 3,
            "top": [
                {"value": "north", "count": 70},
                {"value": "south", "count": 41},
                {"value": "ROW-7731", "count": 9},
            ],
        },
        {
            "name": "fault",
            "type": "integer",
            "role": "label",
            "null_share": 0.0,
            "min": 0,
            "max": 1,
            "mean": 0.3,
        },
    ],
    "sample": [{"turbine_id": "T-SECRET-1", "rpm": 13.37}],  # not a profile field: never rendered
}
SUMMARY = {
    "success": False,
    "evaluated": 10,
    "passed": 8,
    "failed": 2,
    "failing_columns": ["rpm"],
    "suite": "turbines",
    "results": [
        {
            "type": "expect_column_values_to_not_be_null",
            "columns": ["rpm"],
            "success": False,
            "partial_unexpected_list": ["T-SECRET-2"],
        },
        {"type": "expect_column_values_to_be_between", "columns": ["rpm"], "success": False},
        {"type": "expect_column_to_exist", "columns": ["site"], "success": True},
    ],
}
SOURCE = {
    "kind": "dvc",
    "repo": "https://ci:hunter2@git.acme.example/data.git",
    "path": "data/x.csv",
    "rev": "main",
    "commit": "abc1234def5678",
    "md5": "6f1ed002ab5595859014ebf0951522d9",
}
SHA = "ab" * 32


def _evidence(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "status": "failed",
        "schema": SCHEMA,
        "profile": PROFILE,
        "summary": SUMMARY,
        "source": SOURCE,
        "validation_sha256": SHA,
        "validation_asset_id": "0x" + "cd" * 32,
        "validation_anchor": "ANCHORED",
    }
    return dqv.evidence(**{**values, **overrides})


def _measurements(fields: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {
        (m["dqv:isMeasurementOf"]["@id"], m["dqv:computedOn"]["@id"]): m["dqv:value"]
        for m in fields["dqv:hasQualityMeasurement"]
    }


def test_the_profile_becomes_dqv_measurements_per_column() -> None:
    fields = dqv.dataset_fields(_evidence(), DATASET)
    found = _measurements(fields)
    rpm, site = dqv.column_id(DATASET, "rpm"), dqv.column_id(DATASET, "site")
    assert found[("agora:rowCount", DATASET)] == 120
    assert found[("agora:completeness", rpm)] == 0.75
    assert (found[("agora:min", rpm)], found[("agora:max", rpm)], found[("agora:mean", rpm)]) == (
        2.5,
        19.0,
        11.2,
    )
    assert found[("agora:distinct", site)] == 3
    # frequent values only at the profile's own threshold: the value seen 9 times is dropped
    assert found[("agora:frequentValues", site)] == {
        "@type": "@json",
        "@value": [{"value": "north", "count": 70}, {"value": "south", "count": 41}],
    }
    assert fields["agora:profileThreshold"] == 10
    assert all(m["@type"] == "dqv:QualityMeasurement" for m in fields["dqv:hasQualityMeasurement"])
    # the id column: completeness only, no value of it
    turbine = dqv.column_id(DATASET, "turbine_id")
    assert {metric for metric, on in found if on == turbine} == {"agora:completeness"}


def test_the_schema_is_csvw_and_the_validation_a_quality_annotation() -> None:
    fields = dqv.dataset_fields(_evidence(), DATASET)
    columns = fields["csvw:tableSchema"]["csvw:column"]
    assert [(c["csvw:name"], c["csvw:datatype"], c["agora:role"]) for c in columns] == [
        ("turbine_id", "string", "id"),
        ("rpm", "double", "feature"),
        ("site", "string", "feature"),
        ("fault", "integer", "label"),
    ]
    assert columns[1]["agora:unit"] == "1/min" and "agora:unit" not in columns[0]
    assert fields["agora:schemaOrigin"] == "declared"
    (annotation,) = fields["dqv:hasQualityAnnotation"]
    assert annotation["@type"] == "dqv:QualityAnnotation"
    assert annotation["oa:motivatedBy"] == {"@id": "dqv:qualityAssessment"}
    assert annotation["oa:hasTarget"] == {"@id": DATASET}
    body = annotation["oa:hasBody"]
    assert (body["agora:success"], body["agora:expectationsPassed"], body["agora:expectationsFailed"]) == (
        False,
        8,
        2,
    )
    assert body["agora:expectationsEvaluated"] == 10 and body["agora:suite"] == "turbines"
    assert body["agora:failingColumns"] == ["rpm"]
    assert [f["agora:expectation"] for f in body["agora:failingExpectations"]] == [
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
    ]
    assert (body["agora:sha256"], body["agora:anchorStatus"]) == (SHA, "ANCHORED")
    assert fields["agora:qualityStatus"] == "failed"
    # the DVC commit, path and md5; not where the repository lives (it may hold a credential)
    assert fields["agora:source"] == {
        "agora:kind": "dvc",
        "agora:path": "data/x.csv",
        "agora:rev": "main",
        "agora:commit": "abc1234def5678",
        "agora:md5": "6f1ed002ab5595859014ebf0951522d9",
    }


def test_nothing_but_the_profiles_aggregates_is_rendered() -> None:
    text = json.dumps(dqv.dataset_fields(_evidence(), DATASET))
    for secret in ("T-SECRET-1", "13.37", "T-SECRET-2", "ROW-7731", "hunter2", "git.acme.example"):
        assert secret not in text


def test_npz_arrays_are_described_and_measured() -> None:
    schema = {
        "arrays": [
            {"name": "x", "dtype": "float32", "shape": [None, 64], "role": "feature"},
            {"name": "y", "dtype": "int64", "shape": [None], "role": "label"},
        ]
    }
    profile = {
        "arrays": [
            {"name": "x", "shape": [500, 64], "dtype": "float32", "min": -1.0, "max": 1.0, "mean": 0.01}
        ]
    }
    fields = dqv.dataset_fields(
        _evidence(
            schema=schema, profile=profile, summary=None, validation_sha256=None, status="none", source=None
        ),
        DATASET,
    )
    assert [(a["agora:name"], a["agora:shape"], a["agora:role"]) for a in fields["agora:arrays"]] == [
        ("x", [None, 64], "feature"),
        ("y", [None], "label"),
    ]
    assert _measurements(fields)[("agora:max", dqv.column_id(DATASET, "x"))] == 1.0
    assert "dqv:hasQualityAnnotation" not in fields and "agora:source" not in fields


def test_a_peers_dataset_reads_back_into_the_same_evidence() -> None:
    mine = _evidence()
    dataset = {"@id": DATASET, **dqv.dataset_fields(mine, DATASET)}
    back = dqv_read.read_dataset(json.loads(json.dumps(dataset)))
    assert back is not None
    assert back["status"] == "failed" and back["schema"] == mine["schema"]
    assert back["validation"] == mine["validation"]
    assert back["source"] == mine["source"]
    assert back["profile"]["rows"] == 120 and back["profile"]["k"] == 10
    by_name = {c["name"]: c for c in back["profile"]["columns"]}
    assert by_name["rpm"]["null_share"] == 0.25 and by_name["site"]["frequent"][0] == {
        "value": "north",
        "count": 70,
    }
    assert dqv_read.read_dataset({"@id": DATASET}) is None  # a dataset stating no evidence


def test_a_hostile_peers_evidence_is_bounded() -> None:
    deep: Any = "x"
    for _ in range(200):
        deep = {"a": [deep]}
    column = {
        "@type": "csvw:Column",
        "csvw:name": "n" * 10_000,
        "csvw:datatype": "string",
        "agora:role": deep,
    }
    measurements = [
        {
            "dqv:isMeasurementOf": {"@id": "agora:mean"},
            "dqv:computedOn": {"@id": f"{DATASET}/column/c{i}"},
            "dqv:value": float("inf") if i == 0 else 10**400 if i == 1 else i,
        }
        for i in range(5_000)
    ]
    measurements.insert(
        0, {"dqv:isMeasurementOf": "agora:rowCount", "dqv:computedOn": [DATASET], "dqv:value": 7}
    )
    hostile = {
        "@id": DATASET,
        "agora:qualityStatus": "<script>alert(1)</script>",
        "csvw:tableSchema": {"csvw:column": [column] * 5_000},
        "dqv:hasQualityMeasurement": measurements,
        "dqv:hasQualityAnnotation": [
            {
                "oa:hasBody": {
                    "agora:expectationsPassed": -3,
                    "agora:success": "yes",
                    "agora:failingColumns": ["c"] * 10_000,
                    "agora:sha256": "not hex",
                }
            }
        ],
        "agora:source": {"agora:commit": deep, "agora:path": "p" * 5_000},
    }
    found = dqv_read.read_dataset(hostile)
    assert found is not None
    assert found["status"] == "unknown"
    assert len(json.dumps(found)) <= dqv.MAX_STORED
    # 256 columns of 200-character names do not fit: halved until they do, the rest counted
    kept = len(found["schema"]["columns"])
    assert 0 < kept < dqv.MAX_COLUMNS and found["schema"]["omitted"] == 5_000 - kept
    assert {c["role"] for c in found["schema"]["columns"]} == {""}  # a nested role is no text
    assert found["profile"]["rows"] is None  # a reference that is no {"@id": …} names nothing
    assert found["validation"]["passed"] is None and found["validation"]["success"] is None
    assert len(found["validation"]["failing_columns"]) == dqv.MAX_FAILING
    assert found["validation"]["sha256"] == ""
    assert found["source"] == {"path": "p" * bounded.MAX_TEXT}

    # few columns: the schema and profile stay, cut to their caps
    hostile["dqv:hasQualityAnnotation"] = []
    hostile["csvw:tableSchema"] = {"csvw:column": [{**column, "agora:role": "feature"}] * 5}
    small = dqv_read.read_dataset(hostile)
    assert small is not None and small["schema"]["omitted"] == 0
    assert all(len(c["name"]) == bounded.MAX_TEXT for c in small["schema"]["columns"])
    means = [c["mean"] for c in small["profile"]["columns"]]
    assert len(means) == dqv.MAX_COLUMNS and means[:3] == [None, None, 2]


def test_a_wide_table_fits_what_a_peer_keeps_and_reads_back_whole() -> None:
    """2,000 columns with ten frequent values each: the evidence is cut to the size a peer
    keeps (frequent values first, then columns), so the peer's copy is the provider's."""
    columns = [{"name": f"column_{i:04d}", "type": "category", "role": "feature"} for i in range(2_000)]
    top = [{"value": f"value-{j}", "count": 1_000} for j in range(10)]
    profile = {
        "rows": 10**6,
        "min_count": 10,
        "columns": [
            {"name": c["name"], "type": "category", "null_share": 0.0, "distinct": 50, "top": top}
            for c in columns
        ],
    }
    mine = _evidence(schema={"columns": columns}, profile=profile)
    assert len(json.dumps(mine)) <= dqv.MAX_STORED and mine["frequent_omitted"]
    kept = len(mine["schema"]["columns"])
    assert kept >= 64 and mine["schema"]["omitted"] == 2_000 - kept
    assert mine["profile"]["omitted"] == 2_000 - len(mine["profile"]["columns"])
    fields = dqv.dataset_fields(mine, DATASET)
    assert fields["csvw:tableSchema"]["agora:columnsOmitted"] == 2_000 - kept
    back = dqv_read.read_dataset(json.loads(json.dumps({"@id": DATASET, **fields})))
    assert back == mine


def test_a_profile_that_could_not_be_made_renders_no_measurement() -> None:
    fields = dqv.dataset_fields(_evidence(profile={"error": "the file could not be read"}), DATASET)
    assert "dqv:hasQualityMeasurement" not in fields and "agora:profileThreshold" not in fields
