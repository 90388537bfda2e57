"""Publishing a job's model as a version of a model offering, between two real nodes.

Beta trains on Acme's digits (compute-to-data), then publishes the ONNX model Acme released
as version 2 of its own model offering in one command. A download of that version verifies
against the chain with the job's whole lineage in its tree: Beta's model version ← Acme's
ONNX model ← the trained model ← the job run, the dataset version and the agreement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import services
from tests.job_orgs import EXAMPLES, JobOrgs, bundle, job_orgs, poll, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JobOrgs, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("publish")
    offerings = {"digits": {"access_modes": ["compute"], "policy": {"template": "provide-access"}}}
    with job_orgs(root, offerings, {"digits": ("digits", "compute")}) as orgs:
        spec = (EXAMPLES / "digits-sklearn" / "job.yaml").read_text()
        job = run_job(orgs.beta, orgs.acme, orgs.agreements["digits"], EXAMPLES / "digits-sklearn", spec)
        assert job["state"] == "COMPLETED", job
        yield orgs, job


def _kinds(node: dict[str, Any]) -> list[str]:
    """Every asset kind in a verified tree, depth first."""
    return [node["kind"], *(k for p in node["parents"] for k in _kinds(p))]


def _anchor(org: services.Org, offering: str, version: int) -> dict[str, Any]:
    found = next(
        v for v in org.api("GET", f"/offerings/{offering}").json()["versions"] if v["version"] == version
    )
    return {**found, "state": found["anchor"]["status"]}


def test_a_jobs_model_published_as_a_version_verifies_with_its_lineage(
    trained: tuple[JobOrgs, dict[str, Any]], tmp_path: Path
) -> None:
    orgs, job = trained
    beta = orgs.beta
    cli = ["--url", beta.node.url, "--token", beta.token]
    first = tmp_path / "v1.onnx"
    first.write_bytes(b"an earlier model, trained elsewhere")
    added = beta.node.cli(
        "offerings",
        "add",
        str(first),
        "--kind",
        "model",
        "--title",
        "Digit classifier",
        "--name",
        "digits-clf",
        *cli,
    )
    assert "registered" in added.stdout

    out = beta.node.cli("offerings", "publish", "digits-clf", "--job", job["id"], "--alias", "champion", *cli)
    assert "published" in out.stdout and "v2" in out.stdout and "champion → v2" in out.stdout, out.stdout
    detail = beta.api("GET", "/offerings/digits-clf/aliases").json()
    offering = detail["offering_id"]
    assert detail["aliases"] == {"champion": 2}
    version = _anchor(beta, offering, 2)
    onnx = job["result"]["artifacts"]["onnx"]
    assert version["sha256"] == f"sha256:{onnx['sha256']}"
    assert version["source"] == {"kind": "job", "job": job["id"], "asset_id": onnx["asset_id"]}

    poll(lambda: _anchor(beta, offering, 2), ("ANCHORED",), timeout=90)
    model = tmp_path / "champion.onnx"
    beta.node.cli("offerings", "download", offering, "-o", str(model), "--alias", "champion", *cli)
    assert model.with_name("champion.onnx.provenance.json").exists()
    assert "VERIFIED" in beta.node.cli("verify", str(model)).stdout
    report = json.loads(beta.node.cli("verify", str(model), "--json").stdout)
    assert report["verified"], report
    root = report["asset"]
    assert root["kind"] == "model" and root["owner"] == beta.address
    (released,) = root["parents"]
    assert released["kind"] == "onnx-model" and released["asset_id"] == onnx["asset_id"]
    assert released["owner"] == orgs.acme.address
    kinds = _kinds(root)
    assert {"job-result", "dataset", "agreement"} <= set(kinds), kinds

    # the same model into a new offering, created by the API; its anchor is the same asset
    r = beta.api(
        "POST",
        "/offerings/digits-onnx/publish",
        json={"job": job["id"], "create": {"kind": "model", "title": "Digits, ONNX"}},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["version"] == 1 and created["offering"]["name"] == "digits-onnx"
    assert created["offering"]["media_type"] == "application/onnx" and created["alias"] is None


def test_what_cannot_be_published_is_refused_with_the_reason(
    trained: tuple[JobOrgs, dict[str, Any]], tmp_path: Path
) -> None:
    orgs, job = trained
    acme, beta = orgs.acme, orgs.beta
    directory, spec = bundle(tmp_path, "fails", "raise SystemExit(3)\n")
    failed = run_job(beta, acme, orgs.agreements["digits"], directory, spec)
    assert failed["state"] == "FAILED", failed
    meta = {"name": "refusals", "kind": "model", "title": "Refusals"}
    r = beta.api(
        "POST",
        "/offerings",
        data={"metadata": json.dumps(meta)},
        files={"file": ("m.onnx", b"a model", "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    refusals = r.json()["id"]

    def publish(key: str, body: Any) -> tuple[int, str]:
        r = beta.api("POST", f"/offerings/{key}/publish", json=body)
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        return r.status_code, str(r.json().get("detail"))

    status, detail = publish("refusals", {"job": failed["id"]})
    assert status == 409 and "FAILED" in detail and "COMPLETED" in detail
    assert publish("refusals", {"job": "urn:uuid:no-such-job"})[0] == 404
    assert publish("refusals", {"federation": "no-such-federation"})[0] == 404
    assert publish("refusals", {"job": job["id"], "federation": "x"})[0] == 400
    assert publish("refusals", {})[0] == 400
    assert publish("refusals", {"job": job["id"], "alias": "latest"})[0] == 400
    assert publish("refusals", {"job": job["id"], "extra": True})[0] == 400
    assert publish("no-such-offering", {"job": job["id"]})[0] == 404
    status, detail = publish("Not A Name", {"job": job["id"], "create": {"title": "x"}})
    assert status == 400 and "not an offering name" in detail
    assert publish("refusals", {"job": job["id"], "create": {"kind": "dataset", "title": "x"}})[0] == 400
    assert [v["version"] for v in beta.api("GET", f"/offerings/{refusals}").json()["versions"]] == [1]
    # a dataset offering takes no model
    data = {"name": "not-a-model", "title": "Not a model", "media_type": "text/plain"}
    r = acme.api(
        "POST",
        "/offerings",
        data={"metadata": json.dumps(data)},
        files={"file": ("x.txt", b"text", "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    acme_job = next(j for j in acme.api("GET", "/jobs").json() if job["id"] in (j["id"], j["peer_pid"]))
    r = acme.api("POST", "/offerings/not-a-model/publish", json={"job": acme_job["id"]})
    assert r.status_code == 400 and "models are published to model offerings" in r.json()["detail"], r.text
    # the job's model is its consumer's: the provider that ran it may not publish it as its own
    model = {"name": "acme-models", "kind": "model", "title": "Acme's models"}
    r = acme.api(
        "POST",
        "/offerings",
        data={"metadata": json.dumps(model)},
        files={"file": ("m.onnx", b"acme's own model", "application/octet-stream")},
    )
    assert r.status_code == 201, r.text
    acme_models = r.json()["id"]
    r = acme.api("POST", "/offerings/acme-models/publish", json={"job": acme_job["id"]})
    assert r.status_code == 403 and "only the consumer may publish it" in r.json()["detail"], r.text
    assert [v["version"] for v in acme.api("GET", f"/offerings/{acme_models}").json()["versions"]] == [1]


def test_a_federations_model_published_as_a_version_verifies_with_its_rounds(tmp_path: Path) -> None:
    from tests.fl_orgs import fl_orgs, run, spec

    with fl_orgs(tmp_path / "fl", 2, iid=True) as orgs:
        fed = run(orgs, spec(orgs, rounds=1, min_participants=2))
        assert fed["state"] == "COMPLETED", fed["reason"]
        coordinator = orgs.coordinator
        cli = ["--url", coordinator.node.url, "--token", coordinator.token]
        out = coordinator.node.cli(
            "offerings",
            "publish",
            "digits-fl",
            "--federation",
            fed["id"],
            "--create",
            "--title",
            "Federated digits",
            "--alias",
            "candidate",
            *cli,
        )
        assert "published" in out.stdout and "v1" in out.stdout, out.stdout
        offering = coordinator.api("GET", "/offerings/digits-fl/aliases").json()["offering_id"]
        version = _anchor(coordinator, offering, 1)
        assert version["source"] == {
            "kind": "federation",
            "federation": fed["id"],
            "asset_id": fed["result"]["onnx_asset_id"],
        }
        poll(lambda: _anchor(coordinator, offering, 1), ("ANCHORED",), timeout=90)
        model = tmp_path / "fl.onnx"
        coordinator.node.cli(
            "offerings", "download", offering, "-o", str(model), "--alias", "candidate", *cli
        )
        report = json.loads(coordinator.node.cli("verify", str(model), "--json").stdout)
        assert report["verified"], report
        (released,) = report["asset"]["parents"]
        assert released["kind"] == "onnx-model" and released["asset_id"] == fed["result"]["onnx_asset_id"]
        assert "fl-round" in _kinds(report["asset"])
        # a provider of the federation holds no model to publish
        provider = orgs.providers[0]
        r = provider.api(
            "POST", "/offerings/x/publish", json={"federation": fed["id"], "create": {"title": "Not mine"}}
        )
        assert r.status_code == 404 and "coordinated by this node" in r.json()["detail"], r.text
