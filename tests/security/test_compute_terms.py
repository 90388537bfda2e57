"""An offering's compute terms (job_logs, allow_native_release, allow_stored_examples): declared
through the API and in manifests, shown by the API, the CLI, the DSP catalog and the web UI;
a bad value is refused with its field path and changes nothing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests import services
from tests.integration.test_offerings_api import counts

META = {"title": "Digit scans", "media_type": "text/csv", "access_modes": ["compute"]}
DEFAULTS = {"job_logs": "none", "allow_native_release": False, "allow_stored_examples": False}
MANIFEST = """apiVersion: agora/v1
offerings:
  - name: scans
    title: Digit scans
    source: scans.csv
    access_modes: [compute]
    policy: {{template: provide-access}}
{terms}"""
CSV = b"a,label\n1,0\n"
SOURCES = {"scans": {"sha256": hashlib.sha256(CSV).hexdigest(), "size": len(CSV)}}


def upload(client: Any, auth: Any, meta: dict[str, Any]) -> Any:
    files = {"metadata": (None, json.dumps(meta), "application/json"), "file": ("scans.csv", CSV, "text/csv")}
    return client.post("/api/v1/offerings", files=files, headers=auth("offerings:write"))


def manifest_call(client: Any, auth: Any, action: str, terms: str, *, upload_source: bool = False) -> Any:
    body = {"manifest": MANIFEST.format(terms=terms), "source_name": "manifest.yaml", "sources": SOURCES}
    if not upload_source:
        return client.post(f"/api/v1/manifests/{action}", json=body, headers=auth())
    files = [("source:scans", ("scans.csv", CSV, "text/csv"))]
    return client.post(
        f"/api/v1/manifests/{action}", data={"request": json.dumps(body)}, files=files, headers=auth()
    )


def test_the_api_takes_and_shows_the_terms(client, auth) -> None:  # type: ignore[no-untyped-def]
    plain = upload(client, auth, META)
    assert plain.status_code == 201, plain.text
    assert plain.json()["compute_terms"] == DEFAULTS  # nothing leaves unless the provider says so
    terms = {"job_logs": "tail", "allow_native_release": True, "allow_stored_examples": False}
    declared = upload(client, auth, {**META, "title": "With terms", **terms})
    assert declared.status_code == 201, declared.text
    assert declared.json()["compute_terms"] == terms
    shown = client.get(f"/api/v1/offerings/{declared.json()['id']}", headers=auth("catalog:read")).json()
    assert shown["compute_terms"] == terms
    listed = client.get("/api/v1/offerings", headers=auth("catalog:read")).json()["items"]
    assert {o["title"]: o["compute_terms"] for o in listed} == {"Digit scans": DEFAULTS, "With terms": terms}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_logs", "everything"),
        ("job_logs", None),
        ("allow_native_release", "yes"),
        ("allow_stored_examples", 1),
    ],
)
def test_a_bad_term_is_refused_with_its_path_and_changes_nothing(  # type: ignore[no-untyped-def]
    client, auth, runtime, field: str, value: Any
) -> None:
    before = counts(runtime)
    r = upload(client, auth, {**META, field: value})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["path"] for e in r.json()["errors"]] == [f"metadata.{field}"]
    assert counts(runtime) == before


def test_a_manifest_declares_the_terms_and_a_change_is_planned_and_applied(client, auth) -> None:  # type: ignore[no-untyped-def]
    created = manifest_call(client, auth, "apply", "    job_logs: tail\n", upload_source=True)
    assert created.status_code == 200, created.text
    assert [c["action"] for c in created.json()["changes"]] == ["create"]
    assert manifest_call(client, auth, "plan", "    job_logs: tail\n").json()["changes"] == []

    change = "    job_logs: full\n    allow_stored_examples: true\n"
    planned = manifest_call(client, auth, "plan", change).json()["changes"]
    assert [(c["action"], c["fields"]) for c in planned] == [("update", ["compute_terms"])]
    assert "job_logs tail → full" in planned[0]["detail"]
    assert "allow_stored_examples false → true" in planned[0]["detail"]
    items = client.get("/api/v1/offerings", headers=auth()).json()["items"]
    assert items[0]["compute_terms"]["job_logs"] == "tail", "a plan changes nothing"

    assert manifest_call(client, auth, "apply", change).status_code == 200
    items = client.get("/api/v1/offerings", headers=auth()).json()["items"]
    assert items[0]["compute_terms"] == {
        "job_logs": "full",
        "allow_native_release": False,
        "allow_stored_examples": True,
    }
    assert manifest_call(client, auth, "plan", change).json()["changes"] == []
    # leaving the keys out means the defaults again: an update, not "no changes"
    back = manifest_call(client, auth, "plan", "").json()["changes"]
    assert [c["action"] for c in back] == ["update"]


@pytest.mark.parametrize(
    ("terms", "path"),
    [
        ("    job_logs: everything\n", "offerings.0.job_logs"),
        ("    allow_native_release: maybe\n", "offerings.0.allow_native_release"),
        ("    allow_stored_examples: 1\n", "offerings.0.allow_stored_examples"),
    ],
)
def test_a_bad_term_in_a_manifest_names_its_line_and_field(client, auth, terms: str, path: str) -> None:  # type: ignore[no-untyped-def]
    r = manifest_call(client, auth, "plan", terms)
    assert r.status_code == 400, r.text
    assert "manifest.yaml:8" in r.json()["detail"], r.json()
    assert path in r.json()["detail"]
    assert client.get("/api/v1/offerings", headers=auth()).json()["items"] == []


def test_the_catalog_and_the_web_ui_show_the_terms(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    offering = upload(
        client, auth, {**META, "job_logs": "tail", "policy": {"template": "provide-access"}}
    ).json()
    entry = runtime.catalog.entry(runtime.address, offering["id"])
    assert entry["compute_terms"] == {**DEFAULTS, "job_logs": "tail"}
    catalog, _ = runtime.catalog.dcat_catalog(runtime.address)
    assert catalog["dataset"][0]["agora:computeTerms"] == {**DEFAULTS, "job_logs": "tail"}

    client.cookies.set("agora_ui_token", runtime.issuer.issue(["catalog:read"], 600))
    page = client.get(f"/ui/offerings/{runtime.address}/{offering['id']}").text
    line = re.search(r'<dd id="compute-terms">(.*?)</dd>', page)
    assert line is not None, page
    assert line.group(1) == (
        "job logs to the consumer: tail · native model release: no · training rows in a model: no"
    )


def test_a_peer_stating_bad_terms_shows_none(runtime) -> None:  # type: ignore[no-untyped-def]
    peer = "0x" + "ab" * 20
    dataset = {"@id": "urn:uuid:x1", "dct:title": "Theirs", "agora:accessModes": ["compute"]}
    runtime.catalog.store_peer_page(
        peer, {"dataset": [{**dataset, "agora:computeTerms": {"job_logs": "all"}}]}
    )
    assert runtime.catalog.entry(peer, "x1")["compute_terms"] is None
    stated = {**DEFAULTS, "job_logs": "full"}
    runtime.catalog.store_peer_page(peer, {"dataset": [{**dataset, "agora:computeTerms": stated}]})
    assert runtime.catalog.entry(peer, "x1")["compute_terms"] == stated


def test_the_cli_sets_and_shows_the_terms(live_node: services.LiveNode, tmp_path: Path) -> None:
    data = tmp_path / "scans.csv"
    data.write_bytes(CSV)
    home = str(live_node.home)
    added = live_node.cli(
        "offerings", "add", str(data), "--title", "Scans", "-m", "compute", "--job-logs", "tail",
        "--allow-native-release", "--home", home, "--json",
    )  # fmt: skip
    offering_id = json.loads(added.stdout)["id"]
    shown = live_node.cli("offerings", "show", offering_id, "--home", home).stdout
    assert "job logs: tail" in shown
    assert "native model release: allowed" in shown and "stored training rows in a model: no" in shown
    bad = live_node.cli(
        "offerings", "add", str(data), "--title", "Bad", "--job-logs", "most", "--home", home, check=False
    )
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid metadata: metadata.job_logs")
