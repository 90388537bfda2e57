"""An agreement used once more than it allows is refused with the reason, never a 5xx.

Two organisations on one chain (``tests.job_orgs``): Acme offers the digits dataset for
download and compute under ``n-times-usage {count: 2}``; Beta holds one agreement of each
mode. Acme runs no job workers, so an accepted job stays QUEUED and its use stays taken.
Each use goes through the HTTP routes that consume one: Beta's ``POST /api/v1/transfers``
and ``POST /api/v1/jobs``, and the protocol requests themselves (``/dsp/transfers/request``,
``/dsp/jobs``) sent straight to Acme with Beta's token (signed with Beta's key).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.dsp import DSP_CONTEXT
from tests import dsp_peer
from tests.job_orgs import JobOrgs, bundle, job_orgs, submit
from training_jobs import bundle as bundles
from training_jobs.spec import load_spec

pytestmark = pytest.mark.slow
TWICE = {"template": "n-times-usage", "params": {"count": 2}}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobOrgs]:
    root = tmp_path_factory.mktemp("overuse")
    offerings = {"twice": {"access_modes": ["download", "compute"], "policy": TWICE}}
    agreements = {"download": ("twice", "download"), "compute": ("twice", "compute")}
    with job_orgs(root, offerings, agreements, workers=0) as orgs:
        yield orgs


def beta_key(world: JobOrgs) -> bytes:
    from eth_account import Account

    keystore = json.loads((world.beta.node.home / "keystore.json").read_text())
    return bytes(Account.decrypt(keystore, world.beta.node.env["AGORA_KEY_PASSPHRASE"]))


def signed(world: JobOrgs, path: str, body: dict[str, Any]) -> httpx.Response:
    beta = dsp_peer.identity(world.beta.node.url, beta_key(world), "Beta")
    return dsp_peer.post(beta, world.acme.node.url, path, body, timeout=60)


def assert_refused(response: httpx.Response, *words: str) -> None:
    """A 4xx saying why: a problem document (the API, Agora's job extension) or, on a DSP
    binding route, a DSP error message (``…Error`` with ``code`` and ``reason``)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error = response.json()
    if response.headers["content-type"].startswith("application/problem+json"):
        detail = error["detail"]
    else:
        assert str(error["@type"]).endswith("Error") and error["code"], error
        detail = " ".join(error["reason"])
    assert all(word in detail for word in words), detail


def test_a_third_transfer_of_a_two_use_agreement_is_refused_with_the_reason(world: JobOrgs) -> None:
    agreement = world.agreements["download"]
    codes = [
        world.beta.api("POST", "/transfers", json={"agreement_id": agreement}).status_code for _ in range(2)
    ]
    assert codes == [201, 201]
    third = world.beta.api("POST", "/transfers", json={"agreement_id": agreement})
    assert_refused(third, "use")
    # the provider's own refusal, asked directly with the consumer's key
    direct = signed(
        world,
        "/dsp/transfers/request",
        {
            "@context": DSP_CONTEXT,
            "@type": "TransferRequestMessage",
            "consumerPid": f"urn:uuid:{uuid.uuid4()}",
            "agreementId": agreement,
            "format": "HttpData-PULL",
            "callbackAddress": world.beta.node.url + "/dsp",
        },
    )
    assert_refused(direct, "use")
    usage = world.acme.api("GET", f"/agreements/{agreement}").json()
    assert usage["uses"] == 2
    refused = [u for u in usage["usage"] if not u["granted"]]
    assert len(refused) == 2 and all(u["reason"] for u in refused), usage["usage"]


def test_a_third_job_of_a_two_use_agreement_is_rejected_with_the_reason(
    world: JobOrgs, tmp_path: Path
) -> None:
    agreement = world.agreements["compute"]
    code, spec_text = bundle(tmp_path, "queued", "print('waits for a worker')\n")
    first, second = (submit(world.beta, world.acme, agreement, code, spec_text) for _ in range(2))
    assert [first.status_code, second.status_code] == [201, 201], (first.text, second.text)
    assert [first.json()["state"], second.json()["state"]] == ["QUEUED", "QUEUED"]
    third = submit(world.beta, world.acme, agreement, code, spec_text)
    # a job the provider refuses is recorded on both sides with the reason (201, REJECTED)
    assert third.status_code == 201, third.text
    assert third.json()["state"] == "REJECTED" and "use" in third.json()["reason"], third.json()
    assert world.acme.api("GET", f"/agreements/{agreement}").json()["uses"] == 2
    # the same request signed by Beta straight to Acme's protocol endpoint
    spec = load_spec(spec_text, "job.yaml")
    spec.agreement, spec.provider = agreement, world.acme.node.url
    packed = bundles.pack(code)
    spec.code.digest = bundles.digest(packed)
    raw = signed(
        world,
        "/dsp/jobs",
        {
            "@type": "agora:JobRequestMessage",
            "consumerPid": f"urn:uuid:{uuid.uuid4()}",
            "agreementId": agreement,
            "spec": spec.wire(),
            "bundle": base64.b64encode(packed).decode(),
        },
    )
    assert raw.status_code == 201, raw.text
    assert raw.json()["state"] == "REJECTED" and "use" in raw.json()["reason"], raw.json()
    assert world.acme.api("GET", f"/agreements/{agreement}").json()["uses"] == 2


def test_both_nodes_still_serve(world: JobOrgs) -> None:
    for org in (world.acme, world.beta):
        assert org.node.proc.poll() is None
        assert httpx.get(f"{org.node.url}/health", timeout=10).status_code == 200


def test_a_job_request_is_checked_against_its_agreement_before_its_bundle_is_read(
    world: JobOrgs, tmp_path: Path
) -> None:
    """An agreement this node never made: refused (404) before the bundle is decoded — the
    bundle here is not even base64, which would be a 400 if it were read first."""
    _, spec_text = bundle(tmp_path, "unread", "print('never')\n")
    spec = load_spec(spec_text, "job.yaml")
    spec.code.digest = "0" * 64
    answer = signed(
        world,
        "/dsp/jobs",
        {
            "@type": "agora:JobRequestMessage",
            "consumerPid": f"urn:uuid:{uuid.uuid4()}",
            "agreementId": "0x" + "ab" * 32,
            "spec": spec.wire(),
            "bundle": "!!! not base64 !!!" * 100_000,
        },
    )
    assert_refused(answer, "no agreement")
    assert answer.status_code == 404
