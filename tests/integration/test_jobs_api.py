"""The jobs API of one node in-process: scopes, bad input, the schema, and a consumer's job
whose provider cannot be reached."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from connector.models import Agreement, Participant
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
            Participant(
                address="0x" + "1" * 40,
                name="Gone",
                endpoint=gone,
                did=f"did:web:127.0.0.1%3A{port}",
                dsp_url=f"{gone}/dsp",
            )
        )
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
    # the provider removed as a peer: still the last state, with why it was not asked
    with transaction(runtime.engine) as session:
        gone_peer = session.get(Participant, "0x" + "1" * 40)
        assert gone_peer is not None
        session.delete(gone_peer)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth("catalog:read")).json()
    assert job["state"] == RUNNING and "not a participant this node has a DID for" in job["stale"]


def test_a_job_goes_only_to_the_agreement_providers_verified_endpoint(
    client: Any, auth: Any, runtime: Any
) -> None:
    """A spec's ``provider`` on another origin (an internal service, say) is refused before any
    request is sent; a provider that is not a peer is refused too."""

    provider = "0x" + "2" * 40
    agreement_id = "0x" + "cd" * 32
    internal_service = socket.socket()
    internal_service.bind(("127.0.0.1", 0))
    internal_service.listen(4)
    internal_service.setblocking(False)
    internal = internal_service.getsockname()[1]
    with internal_service, transaction(runtime.engine) as session:
        session.add(Participant(address=provider, name="Acme", endpoint="http://127.0.0.1:9", trusted=False))
        session.add(
            Agreement(
                id=agreement_id,
                negotiation_id="n",
                role="consumer",
                provider=provider,
                consumer=runtime.address,
                offering_id="o",
                terms={"accessMode": "compute"},
                terms_hash="0" * 64,
                provider_signature="0x",
                chain_id=1,
                registry_address="0x" + "0" * 40,
            )
        )
        session.commit()
        body = {"spec": {**SPEC, "agreement": agreement_id, "provider": f"http://127.0.0.1:{internal}"}}
        r = client.post("/api/v1/jobs", json={**body, "bundle": ""}, headers=auth("jobs:write"))
        assert r.status_code == 400 and "not a peer of this node" in r.json()["detail"]
        with transaction(runtime.engine) as again:
            row = again.get(Participant, provider)
            row.trusted = True
            again.add(row)
        r = client.post("/api/v1/jobs", json={**body, "bundle": ""}, headers=auth("jobs:write"))
        assert r.status_code == 400, r.text
        assert "is not on the agreement's provider's origin http://127.0.0.1:9" in r.json()["detail"]
        assert client.get("/api/v1/jobs", headers=auth("catalog:read")).json() == []
        with pytest.raises(BlockingIOError):
            internal_service.accept()  # no connection ever reached the internal service
