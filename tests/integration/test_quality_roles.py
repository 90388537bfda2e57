"""Dataset schemas and trainability through a node: registration with declared roles, an
untrainable compute offering refused (422, nothing written) or registered flagged with its
reason shown, a declared schema the file does not match refused; and, between two real nodes,
a job trained in bubblewrap on a CSV with a text id and a categorical column by their roles,
and a job on a flagged offering failed before its code runs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_offerings_api import counts
from tests.job_orgs import EXAMPLES, job_orgs, run_job

SITES = ("north", "south", "east")
ROLES = {
    "columns": [
        {"name": "machine", "type": "string", "role": "id", "description": "serial number"},
        {"name": "site", "type": "category", "categories": list(SITES)},
        {"name": "speed", "type": "float", "unit": "m/s"},
        {"name": "load", "type": "integer", "unit": "kg"},
        {"name": "running", "type": "boolean"},
        {"name": "label", "type": "category", "role": "label"},
    ]
}
UNLABELLED = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * 2) for i in range(20))


def machines(rows: int = 240) -> bytes:
    """Machines at three sites: a fault when fast and loaded, or at the east site when loaded.
    Row 7's speed is missing (the node fills it and says so)."""
    lines = ["machine,site,speed,load,running,label"]
    for i in range(rows):
        site, speed, load = SITES[i % 3], (i * 37 % 100) / 10, i * 53 % 90
        fault = (speed > 5 and load > 40) or (site == "east" and load > 60)
        shown = "" if i == 7 else f"{speed:.1f}"
        lines.append(f"SN-{i:05d},{site},{shown},{load},{i % 2 == 0},{'fault' if fault else 'ok'}")
    return ("\n".join(lines) + "\n").encode()


def upload(client: Any, auth: Any, data: bytes, **meta: Any) -> Any:
    metadata = {"title": "Machines", "media_type": "text/csv", "access_modes": ["compute"], **meta}
    files = {
        "metadata": (None, json.dumps(metadata), "application/json"),
        "file": ("machines.csv", data, "text/csv"),
    }
    return client.post("/api/v1/offerings", files=files, headers=auth("offerings:write"))


def versions(client: Any, auth: Any, offering_id: str) -> list[dict[str, Any]]:
    shown = client.get(f"/api/v1/offerings/{offering_id}", headers=auth("catalog:read"))
    assert shown.status_code == 200, shown.text
    return list(shown.json()["versions"])


def test_declared_roles_are_kept_and_checked(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, auth, machines(), schema=ROLES)
    assert r.status_code == 201, r.text
    [version] = versions(client, auth, r.json()["id"])
    assert version["schema"]["source"] == "declared"
    assert [c["role"] for c in version["schema"]["columns"]] == ["id", *["feature"] * 4, "label"]
    assert version["trainable"] == {
        "ok": True,
        "reason": "label label; 4 feature columns, 1 of them encoded",
        "label": "label",
        "features": ["site", "speed", "load", "running"],
        "encoded": [{"name": "site", "encoding": "onehot"}],
        "dropped": [{"name": "machine", "reason": "id"}],
    }


def test_an_inferred_schema_is_shown(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, auth, machines(), access_modes=["download"])
    assert r.status_code == 201, r.text
    [version] = versions(client, auth, r.json()["id"])
    assert version["trainable"] is None  # download only: no training set is built
    assert {c["name"]: (c["type"], c["role"]) for c in version["schema"]["columns"]} == {
        "machine": ("string", "id"),
        "site": ("category", "feature"),
        "speed": ("float", "feature"),
        "load": ("integer", "feature"),
        "running": ("boolean", "feature"),
        "label": ("category", "label"),
    }


def test_an_untrainable_compute_offering_is_refused_and_nothing_is_written(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    before = counts(runtime)
    r = upload(client, auth, UNLABELLED)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["type"].endswith("/untrainable-dataset")
    assert "no label column" in problem["detail"] and "register-flagged" in problem["detail"]
    assert problem["trainable"]["features"] == ["a", "b"]
    assert counts(runtime) == before


def test_a_flagged_offering_is_registered_with_its_reason(client, auth) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, auth, UNLABELLED, on_untrainable="register-flagged")
    assert r.status_code == 201, r.text
    [version] = versions(client, auth, r.json()["id"])
    assert version["trainable"]["ok"] is False
    assert version["trainable"]["reason"].startswith("no label column")


@pytest.mark.parametrize(
    ("column", "says"),
    [
        ({"name": "serial", "type": "string", "role": "id"}, "declares column serial"),
        ({"name": "site", "type": "integer"}, "column site is declared integer"),
    ],
)
def test_a_schema_the_file_does_not_match_is_refused(client, auth, runtime, column, says) -> None:  # type: ignore[no-untyped-def]
    before = counts(runtime)
    r = upload(client, auth, machines(), schema={"columns": [column]}, on_untrainable="register-flagged")
    assert r.status_code == 422, r.text
    assert r.json()["type"].endswith("/invalid-dataset") and says in r.json()["detail"]
    assert counts(runtime) == before


def test_a_new_version_is_checked_against_the_declared_schema(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    created = upload(client, auth, machines(), schema=ROLES)
    assert created.status_code == 201, created.text
    offering_id = created.json()["id"]
    before = counts(runtime)
    renamed = machines(60).replace(b"machine,site", b"serial,site", 1)
    r = client.post(
        f"/api/v1/offerings/{offering_id}/versions",
        files={"file": ("machines.csv", renamed, "text/csv")},
        headers=auth("offerings:write"),
    )
    assert r.status_code == 422 and "declares column machine" in r.json()["detail"], r.text
    assert counts(runtime) == before


def test_a_manifest_refuses_an_untrainable_offering(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    manifest = (
        "apiVersion: agora/v1\n"
        "offerings:\n"
        "  - {name: pairs, title: Pairs, source: pairs.csv, access_modes: [compute],"
        " policy: {template: provide-access}}\n"
    )
    body = {
        "manifest": manifest,
        "source_name": "manifest.yaml",
        "sources": {"pairs": {"sha256": hashlib.sha256(UNLABELLED).hexdigest(), "size": len(UNLABELLED)}},
    }
    before = counts(runtime)
    r = client.post(
        "/api/v1/manifests/apply",
        data={"request": json.dumps(body)},
        files=[("source:pairs", ("pairs.csv", UNLABELLED, "text/csv"))],
        headers=auth(),
    )
    assert r.status_code == 422 and "no label column" in r.json()["detail"], r.text
    assert "manifest.yaml:3 offerings.0.source: pairs: " in r.json()["detail"]  # which entry to fix
    assert counts(runtime) == before


def test_jobs_and_federations_read_a_version_by_its_schema(client, auth, runtime) -> None:  # type: ignore[no-untyped-def]
    """holdout.load, which the job runner and the federation's invitation share."""
    from training_jobs import holdout

    good = upload(client, auth, machines(), schema=ROLES).json()
    rows = holdout.load(runtime.engine, runtime.store, good["id"], good["sha256"].removeprefix("sha256:"))
    assert rows.features.shape == (240, 6) and set(rows.labels.tolist()) == {0, 1}
    flagged = upload(client, auth, UNLABELLED, on_untrainable="register-flagged").json()
    with pytest.raises(holdout.Untrained, match="cannot be trained on: no label column"):
        holdout.load(runtime.engine, runtime.store, flagged["id"], flagged["sha256"].removeprefix("sha256:"))


# Between two real nodes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("roles")
    files = {"machines": root / "machines.csv", "pairs": root / "pairs.csv"}
    files["machines"].write_bytes(machines())
    files["pairs"].write_bytes(UNLABELLED)
    compute = {"access_modes": ["compute"], "policy": {"template": "provide-access"}}
    offerings = {
        "machines": {**compute, "schema": ROLES},
        "pairs": {**compute, "on_untrainable": "register-flagged"},
    }
    agreements = {name: (name, "compute") for name in offerings}
    with job_orgs(root, offerings, agreements, files=files) as world:
        yield world


@pytest.mark.slow
def test_a_job_trains_on_declared_roles(orgs: Any) -> None:
    spec = (EXAMPLES / "digits-sklearn" / "job.yaml").read_text()
    spec = spec.replace("input_shape: [1, 64]", "input_shape: [1, 6]")  # 3 sites, speed, load, running
    job = run_job(orgs.beta, orgs.acme, orgs.agreements["machines"], EXAMPLES / "digits-sklearn", spec)
    assert job["state"] == "COMPLETED", job
    log = orgs.beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]
    lines = [line["line"] for line in log]
    assert "dataset: column speed: 1 missing values filled with its median" in lines, lines
    assert any("192 rows for training, 48 held back" in line for line in lines), lines
    assert job["result"]["job_metrics"]["n_features"] == 6, job["result"]
    assert job["result"]["metrics"]["holdout_rows"] == 48
    assert job["result"]["metrics"]["onnx_accuracy"] > 0.7, job["result"]


def test_a_job_on_a_flagged_version_fails_before_its_code_runs(orgs: Any, tmp_path: Path) -> None:
    spec = (EXAMPLES / "digits-sklearn" / "job.yaml").read_text()
    agreement = orgs.agreements["pairs"]
    job = run_job(orgs.beta, orgs.acme, agreement, EXAMPLES / "digits-sklearn", spec)
    assert job["state"] == "FAILED", job
    assert job["reason"].startswith("the dataset version cannot be trained on: no label column"), job
    lines = [line["line"] for line in orgs.beta.api("GET", f"/jobs/{job['id']}/logs").json()["lines"]]
    assert not any("running the job's code" in line for line in lines), lines
    assert any("the agreement's use was given back" in line for line in lines), lines
    shown = orgs.acme.node.cli(
        "offerings", "show", orgs.offerings["pairs"], "--home", str(orgs.acme.node.home)
    )
    assert "trainable: NO: no label column" in shown.stdout, shown.stdout
    assert "schema (inferred, 2 columns): a integer, b integer" in shown.stdout, shown.stdout
