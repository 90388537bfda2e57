"""The jobs API of one node in-process: scopes, bad input, the schema, and a consumer's job
whose provider cannot be reached."""

from __future__ import annotations

from typing import Any

from kernel.db import transaction
from tests import services
from training_jobs.models import RUNNING, Job
from training_jobs.states import entry

SPEC = {
    "name": "tiny",
    "code": {"entrypoint": "train.py", "digest": "0" * 64},
    "output": {"format": "sklearn", "path": "model.joblib"},
    "onnx": {"input_shape": [1, 4]},
}


def test_the_schema_is_served(client: Any, auth: Any) -> None:
    r = client.get("/api/v1/jobs/schema", headers=auth("catalog:read"))
    assert r.status_code == 200 and r.json()["title"] == "JobSpec"
    assert "code" in r.json()["required"]


def test_submitting_needs_the_jobs_scope_and_a_compute_agreement(client: Any, auth: Any) -> None:
    body = {"spec": {**SPEC, "agreement": "0x" + "ab" * 32}, "bundle": ""}
    assert client.post("/api/v1/jobs", json=body, headers=auth("catalog:read")).status_code == 403
    r = client.post("/api/v1/jobs", json=body, headers=auth("jobs:write"))
    assert r.status_code == 404 and "no agreement" in r.json()["detail"]
    r = client.post("/api/v1/jobs", json={"spec": SPEC}, headers=auth("jobs:write"))
    assert r.status_code == 400 and "names no agreement" in r.json()["detail"]
    r = client.post(
        "/api/v1/jobs", json={"spec": {**SPEC, "resources": {"memory": "lots"}}}, headers=auth("jobs:write")
    )
    assert r.status_code == 400 and any(e["path"] == "spec.resources.memory" for e in r.json()["errors"])
    assert client.get("/api/v1/jobs", headers=auth("catalog:read")).json() == []


def test_a_job_whose_provider_is_unreachable_shows_its_last_state(
    runtime: Any, client: Any, auth: Any
) -> None:
    with services.listening() as port:
        gone = f"http://127.0.0.1:{port}"
    job_id = "urn:uuid:11111111-2222-3333-4444-555555555555"
    with transaction(runtime.engine) as session:
        session.add(
            Job(
                id=job_id,
                role="consumer",
                peer_pid="urn:uuid:99999999-2222-3333-4444-555555555555",
                counterparty="0x" + "1" * 40,
                counterparty_endpoint=gone,
                name="tiny",
                agreement_id="0x" + "ab" * 32,
                offering_id="o",
                state=RUNNING,
                reason="running the job's code in the sandbox",
                progress=0.4,
                history=[entry(RUNNING, "running the job's code in the sandbox")],
            )
        )
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth("catalog:read")).json()
    assert job["state"] == RUNNING and "could not be reached" in job["stale"]
    r = client.get(f"/api/v1/jobs/{job_id}/result", headers=auth("catalog:read"))
    assert r.status_code == 409 and "RUNNING" in r.json()["detail"]
    r = client.get(f"/api/v1/jobs/{job_id}/logs", headers=auth("catalog:read"))
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]
    client.cookies.set("agora_ui_token", runtime.issuer.issue(["catalog:read"], 600))
    page = client.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    assert "the log is not available now" in page.text and "could not be reached" in page.text
