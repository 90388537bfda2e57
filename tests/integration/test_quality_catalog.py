"""A dataset's quality evidence through a real node in process: declared schema and suite,
validated by the node's quality worker (Great Expectations in its child process), shown in the
DSP catalog with DQV (validated against the vendored DSP 2025-1 schemas), in the web UI's
offering page with its version history, and in a peer's copy, bounded and escaped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from connector.models import Participant
from kernel.db import transaction
from marketplace.catalog import DSP_CONTEXT, CatalogFilters
from node.ui import csrf
from quality import dqv, dqv_read
from tests import dsp
from tests.integration.test_notarization import in_process_node

PEER = Account.create().address
HOSTILE = Account.create().address
SUITE = {
    "name": "turbines",
    "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "rpm"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "rpm", "min_value": 0, "max_value": 40},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "site", "value_set": ["north", "south"]},
        },
    ],
}
SCHEMA = {
    "columns": [
        {"name": "turbine_id", "type": "string", "role": "id"},
        {"name": "rpm", "type": "float", "unit": "1/min"},
        {"name": "site", "type": "category"},
        {"name": "fault", "type": "integer", "role": "label"},
    ]
}
SOURCE = {
    "kind": "dvc",
    "repo": "/srv/acme/sensors",
    "path": "data/turbines.csv",
    "rev": "release",
    "commit": "abc1234def567890abc1234def567890abc12345",
    "md5": "0f343b0931126a20f133d67c2b018a3b",
}


def _csv(rows: int, *, broken: bool = False) -> bytes:
    lines = ["turbine_id,rpm,site,fault"]
    for i in range(rows):
        rpm = "" if broken and i % 7 == 0 else f"{10 + (i % 13) * 0.5}"
        site = "north" if i % 3 else "south"
        lines.append(f"SECRET-T{i:04d},{rpm},{site},{i % 2}")
    lines.append(f"SECRET-T9999,12.5,{'west' if broken else 'north'},1")  # a site seen once
    return ("\n".join(lines) + "\n").encode()


def _register(client: Any, auth: Any) -> str:
    meta = {
        "title": "Turbine faults",
        "name": "turbines",
        "kind": "dataset",
        "media_type": "text/csv",
        "access_modes": ["compute"],
        "policy": {"template": "provide-access"},
        "schema": SCHEMA,
        "expectations": SUITE,
        "on_failure": "reject",
    }
    files = {"metadata": (None, json.dumps(meta)), "file": ("t.csv", _csv(60))}
    r = client.post("/api/v1/offerings", files=files, headers=auth())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _add_version(
    runtime: Any, tmp_path: Path, offering_id: str, body: bytes, source: dict[str, Any] | None
) -> None:
    path = tmp_path / f"v{len(body)}.csv"
    path.write_bytes(body)
    with runtime.store.stage_file(path) as staged:
        runtime.offerings.add_version(offering_id, staged, "test", source=source)


def _peers(runtime: Any) -> None:
    """Both peers trusted (the crawler keeps only peers' copies), at a port nothing listens on."""
    with transaction(runtime.engine) as session:
        for n, address in enumerate((PEER, HOSTILE)):
            session.add(
                Participant(address=address, name=f"Peer {n}", endpoint="http://127.0.0.1:9", trusted=True)
            )


def _validate_all(runtime: Any) -> None:
    while runtime.validations.run_once():
        pass


def _sign_in(client: Any, runtime: Any) -> None:
    client.cookies.set(csrf.SESSION_COOKIE, runtime.issuer.issue(["catalog:read"], 600))


def _dataset(runtime: Any, offering_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    catalog, _ = runtime.catalog.dcat_catalog(PEER)
    (dataset,) = [d for d in catalog["dataset"] if d["@id"] == f"urn:uuid:{offering_id}"]
    return catalog, dataset


def test_the_catalog_carries_dqv_evidence_and_validates(
    client: Any, auth: Any, runtime: Any, tmp_path: Path
) -> None:
    offering_id = _register(client, auth)
    assert runtime.catalog.dcat_catalog(PEER)[0]["dataset"] == []  # validating under reject: not offered
    _validate_all(runtime)
    _add_version(runtime, tmp_path, offering_id, _csv(60, broken=True), None)  # v2 fails: stays unpublished
    _add_version(runtime, tmp_path, offering_id, _csv(80), SOURCE)  # v3 passes, from a DVC commit
    _validate_all(runtime)
    runtime.notary.run_once()

    catalog, dataset = _dataset(runtime, offering_id)
    assert dsp.errors("catalog/catalog-schema.json", catalog) == []
    assert dsp.errors("catalog/dataset-schema.json", {"@context": catalog["@context"], **dataset}) == []
    assert catalog["@context"] == [DSP_CONTEXT, runtime.catalog.context_url]
    served = client.get("/ui/context.jsonld")  # public, like the vocabulary it names
    assert served.status_code == 200 and served.json()["@context"]["dqv"] == dqv.DQV

    assert dataset["agora:version"] == 3 and dataset["agora:qualityStatus"] == "passed"
    columns = dataset["csvw:tableSchema"]["csvw:column"]
    assert [(c["csvw:name"], c["csvw:datatype"], c["agora:role"]) for c in columns] == [
        ("turbine_id", "string", "id"),
        ("rpm", "double", "feature"),
        ("site", "string", "feature"),
        ("fault", "integer", "label"),
    ]
    measured = {
        (m["dqv:isMeasurementOf"]["@id"], m["dqv:computedOn"]["@id"]): m["dqv:value"]
        for m in dataset["dqv:hasQualityMeasurement"]
    }
    dataset_id = dataset["@id"]
    assert measured[("agora:rowCount", dataset_id)] == 81
    assert measured[("agora:completeness", dqv.column_id(dataset_id, "rpm"))] == 1.0
    assert measured[("agora:max", dqv.column_id(dataset_id, "rpm"))] == 16.0
    frequent = measured[("agora:frequentValues", dqv.column_id(dataset_id, "site"))]["@value"]
    assert {f["value"] for f in frequent} == {"north", "south"}
    (annotation,) = dataset["dqv:hasQualityAnnotation"]
    assert annotation["oa:motivatedBy"] == {"@id": "dqv:qualityAssessment"}
    body = annotation["oa:hasBody"]
    assert (body["agora:success"], body["agora:expectationsPassed"], body["agora:expectationsEvaluated"]) == (
        True,
        3,
        3,
    )
    assert body["agora:suite"] == "turbines" and len(body["agora:sha256"]) == 64
    assert body["agora:assetId"].startswith("0x") and body["agora:anchorStatus"] == "ANCHORED"
    assert dataset["agora:source"]["agora:commit"] == SOURCE["commit"]
    assert dataset["agora:source"]["agora:md5"] == SOURCE["md5"]
    text = json.dumps(catalog)
    assert "SECRET-T" not in text and "/srv/acme" not in text  # no row, no repository location


def test_the_offering_page_shows_evidence_and_version_history(
    client: Any, auth: Any, runtime: Any, tmp_path: Path
) -> None:
    offering_id = _register(client, auth)
    _validate_all(runtime)
    _add_version(runtime, tmp_path, offering_id, _csv(60, broken=True), None)
    _add_version(runtime, tmp_path, offering_id, _csv(80), SOURCE)
    _validate_all(runtime)
    _sign_in(client, runtime)

    page = client.get(f"/ui/offerings/{runtime.address}/{offering_id}")
    assert page.status_code == 200, page.text
    html = page.text
    history = html.split('id="version-history"', 1)[1].split("</table>", 1)[0]
    rows = {n: history.split(f'id="version-{n}"', 1)[1].split("</tr>", 1)[0] for n in (1, 2, 3)}
    assert "quality passed" in rows[1] and "3/3" in rows[1] and ">published<" in rows[1]
    assert "quality failed" in rows[2] and "not published" in rows[2] and "failing: rpm, site" in rows[2]
    assert "quality passed" in rows[3] and "(current)" in rows[3] and "abc1234" in rows[3]
    assert "data/turbines.csv" in rows[3]
    assert history.index('id="version-3"') < history.index('id="version-1"')  # newest first
    assert "3 of 3 expectations passed, 0 failed (suite turbines)" in html
    schema = html.split('id="schema-columns"', 1)[1].split("</table>", 1)[0]
    assert "<td>rpm</td><td>float</td><td>feature</td><td>1/min</td>" in schema
    assert '<span id="row-count">81</span>' in html
    assert "SECRET-T" not in html and "west" not in html

    listing = client.get("/ui/catalog")
    assert "quality passed" in listing.text
    (item,) = client.get("/api/v1/catalog", headers=auth("catalog:read")).json()["items"]
    assert item["quality_status"] == "passed"


def test_a_peers_evidence_is_kept_bounded_and_shown_escaped(
    client: Any, auth: Any, runtime: Any, tmp_path: Path
) -> None:
    offering_id = _register(client, auth)
    _validate_all(runtime)
    catalog, dataset = _dataset(runtime, offering_id)
    _peers(runtime)
    runtime.catalog.store_peer_page(PEER, catalog)  # a peer serving what this node serves
    mine = runtime.catalog.entry(runtime.address, offering_id)
    theirs = runtime.catalog.entry(PEER, offering_id)
    # as the page this node served said (the notary may have anchored the result since)
    served = {"validation": dqv_read.read_dataset(dataset)["validation"]}  # type: ignore[index]
    assert theirs["evidence"]["validation"] == served["validation"]
    assert {**served["validation"], "anchor_status": ""} == {
        **mine["evidence"]["validation"],
        "anchor_status": "",
    }
    assert theirs["evidence"]["schema"] == mine["evidence"]["schema"]
    assert theirs["quality_status"] == "passed"

    hostile = {
        **dataset,
        "@id": "urn:uuid:6d0e6c1e-0000-4000-8000-000000000001",
        "agora:qualityStatus": "failed",
        "csvw:tableSchema": {
            "csvw:column": [{"csvw:name": "<script>alert(1)</script>", "agora:role": "id"}] * 10_000
        },
        "dqv:hasQualityAnnotation": [
            {
                "oa:hasBody": {
                    "agora:failingColumns": ["<img src=x onerror=alert(2)>"] * 10_000,
                    "agora:expectationsPassed": 1,
                    "agora:expectationsFailed": 2,
                    "agora:expectationsEvaluated": 3,
                }
            }
        ],
        "agora:unknown": ["x" * 1000] * 1000,
    }
    runtime.catalog.store_peer_page(HOSTILE, {"dataset": [hostile]})
    stored = runtime.catalog.entry(HOSTILE, "6d0e6c1e-0000-4000-8000-000000000001")
    assert len(json.dumps(stored["evidence"])) <= dqv.MAX_STORED
    assert len(stored["evidence"]["schema"]["columns"]) == dqv.MAX_COLUMNS
    items = client.get("/api/v1/catalog", params={"provider": HOSTILE}, headers=auth("catalog:read")).json()[
        "items"
    ]
    assert [i["quality_status"] for i in items] == ["failed"]

    _sign_in(client, runtime)
    page = client.get(f"/ui/offerings/{HOSTILE}/6d0e6c1e-0000-4000-8000-000000000001").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "1 of 3 expectations passed, 2 failed" in page
    assert "quality failed" in page


@pytest.mark.postgres
def test_on_postgresql_the_status_is_searched_and_the_validation_anchor_followed(
    postgres: Any, settings_factory: Any
) -> None:
    """The catalog reads the status and finds the entry of an anchored validation by JSON paths
    into the entry's document: the same on PostgreSQL as on SQLite."""
    with in_process_node(settings_factory, database_url=postgres.new_database(), anchor_max_delay=0) as (
        rt,
        client,
        headers,
    ):
        offering_id = _register(client, lambda *_: headers)
        _validate_all(rt)
        pending = rt.catalog.entry(rt.address, offering_id)
        assert pending["evidence"]["validation"]["anchor_status"] == "PENDING"
        rt.notary.run_once(force=True)
        anchored = rt.catalog.entry(rt.address, offering_id)
        assert anchored["evidence"]["validation"]["anchor_status"] == "ANCHORED"
        (item,) = rt.catalog.search(CatalogFilters())["items"]
        assert item["quality_status"] == "passed"
        _, dataset = _dataset(rt, offering_id)
        assert dataset["dqv:hasQualityAnnotation"][0]["oa:hasBody"]["agora:anchorStatus"] == "ANCHORED"
