"""Negotiation, agreements and transfers between organisations' nodes sharing one chain."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import dsp_peer, services


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Org, services.Org]]:
    from contracts.devchain import DevChainServer

    root = tmp_path_factory.mktemp("negotiation")
    chain = DevChainServer(root / "chain", port=services.free_port())
    chain.start()
    env = {
        "AGORA_CHAIN_URL": chain.url,
        "AGORA_CHAIN_REGISTRY": chain.registry,
        "AGORA_ANCHOR_MAX_DELAY": "0.2",
    }
    provider = services.start_node(root / "acme", name="Acme Wind", **env)
    consumer = services.start_node(root / "beta", name="Beta Analytics", **env)
    try:
        acme, beta = services.Org(provider), services.Org(consumer)
        work = root / "manifest"
        shutil.copytree(services.REPO / "examples" / "data", work / "data")
        offerings = [
            {
                "name": "vibration",
                "title": "Turbine vibration",
                "source": "data/vibration.csv",
                "access_modes": ["download", "compute"],
                "on_untrainable": "register-flagged",  # no label column: negotiable, never trainable
                "policy": {"template": "n-times-usage", "params": {"count": 10}},
            },
            {
                "name": "bearings",
                "title": "Bearing faults",
                "source": "data/bearings.csv",
                "access_modes": ["compute"],
                "on_untrainable": "register-flagged",
                "policy": {
                    "permissions": [
                        {
                            "action": "use",
                            "constraints": [
                                {
                                    "leftOperand": "purpose",
                                    "operator": "isAnyOf",
                                    "rightOperand": ["research"],
                                }
                            ],
                        }
                    ]
                },
            },
            {
                "name": "manual",
                "title": "Maintenance log",
                "source": "data/maintenance-log.csv",
                "access_modes": ["download"],
                "approval": "manual",
                "policy": {"template": "provide-access"},
            },
        ]
        (work / "manifest.yaml").write_text(
            json.dumps({"apiVersion": "agora/v1", "offerings": offerings, "peers": [{"url": consumer.url}]})
        )
        provider.cli("apply", "-f", str(work / "manifest.yaml"), "--home", str(provider.home))
        assert beta.api("POST", "/participants", json={"url": provider.url}).status_code == 201
        yield acme, beta
    finally:
        provider.stop()
        consumer.stop()
        chain.stop()


def offering_id(org: services.Org, name: str) -> str:
    return next(o["id"] for o in org.api("GET", "/offerings").json()["items"] if o["name"] == name)


def negotiate(acme: services.Org, beta: services.Org, name: str, purpose: str, mode: str) -> dict[str, Any]:
    r = beta.api(
        "POST",
        "/negotiations",
        json={
            "offering_id": offering_id(acme, name),
            "provider": acme.node.url,
            "purpose": purpose,
            "access_mode": mode,
        },
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def wait_state(
    org: services.Org, negotiation_id: str, states: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        n = org.api("GET", f"/negotiations/{negotiation_id}").json()
        if n["state"] in states:
            return dict(n)
        if time.monotonic() > deadline:
            raise AssertionError(
                f"negotiation stuck in {n['state']}: {n['reason']} {n['history']} {n.get('outbox')}"
            )
        time.sleep(0.1)


def test_happy_path_to_a_recorded_agreement_and_a_verified_transfer(
    orgs: tuple[services.Org, services.Org], tmp_path: Path
) -> None:
    acme, beta = orgs
    started = negotiate(acme, beta, "vibration", "predictive-maintenance", "download")
    done = wait_state(beta, started["id"], ("FINALIZED", "TERMINATED"))
    assert done["state"] == "FINALIZED", done
    assert [h["to"] for h in done["history"]] == ["REQUESTED", "AGREED", "VERIFIED", "FINALIZED"]
    agreement = done["agreement"]
    assert agreement["tx_hash"] and agreement["provider_signature"] and agreement["consumer_signature"]
    provider_side = acme.api("GET", f"/agreements/{agreement['id']}").json()
    assert provider_side["terms_hash"] == agreement["terms_hash"]
    assert provider_side["max_uses"] == 10

    transfer = beta.api("POST", "/transfers", json={"agreement_id": agreement["id"]})
    assert transfer.status_code == 201, transfer.text
    assert transfer.json()["state"] == "COMPLETED"
    data = beta.api("GET", f"/transfers/{transfer.json()['id']}/data").content
    assert data == (services.REPO / "examples" / "data" / "vibration.csv").read_bytes()
    usage = acme.api("GET", f"/agreements/{agreement['id']}").json()
    assert usage["uses"] == 1 and usage["usage"][0]["granted"] is True


def test_policy_denial_terminates_with_the_reason(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    started = negotiate(acme, beta, "bearings", "marketing", "compute")
    done = wait_state(beta, started["id"], ("FINALIZED", "TERMINATED"))
    assert done["state"] == "TERMINATED"
    assert "marketing" in done["reason"] and "research" in done["reason"]


def test_download_of_a_compute_only_offering_is_refused(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    done = wait_state(
        beta, negotiate(acme, beta, "bearings", "research", "download")["id"], ("FINALIZED", "TERMINATED")
    )
    assert done["state"] == "TERMINATED" and "does not allow download" in done["reason"]


def test_manual_approval(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    started = negotiate(acme, beta, "manual", "research", "download")
    waiting = provider_side(acme, started["id"])
    assert waiting["state"] == "REQUESTED" and "approve" in waiting["reason"]
    assert waiting["id"] in [
        n["id"] for n in acme.api("GET", "/negotiations", params={"state": "REQUESTED"}).json()
    ]
    assert beta.api("GET", f"/negotiations/{started['id']}").json()["state"] == "REQUESTED"
    assert acme.api("POST", f"/negotiations/{waiting['id']}/approve").status_code == 200
    assert wait_state(beta, started["id"], ("FINALIZED", "TERMINATED"))["state"] == "FINALIZED"

    rejected = negotiate(acme, beta, "manual", "research", "download")
    provider_id = provider_side(acme, rejected["id"])["id"]
    acme.api("POST", f"/negotiations/{provider_id}/reject", json={"reason": "not this quarter"})
    done = wait_state(beta, rejected["id"], ("FINALIZED", "TERMINATED"))
    assert done["state"] == "TERMINATED" and "not this quarter" in done["reason"]

    # the consumer withdraws, with an empty body: the reason says terminated, not rejected
    withdrawn = negotiate(acme, beta, "manual", "research", "download")
    provider_side(acme, withdrawn["id"])
    ended = beta.api("POST", f"/negotiations/{withdrawn['id']}/terminate", json={}).json()
    assert ended["state"] == "TERMINATED" and "terminated" in ended["reason"], ended


def test_counter_offer_accepted(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    started = negotiate(acme, beta, "manual", "research", "download")
    provider_id = provider_side(acme, started["id"])["id"]
    counter = {"template": "n-times-usage", "params": {"count": 2}}
    assert acme.api("POST", f"/negotiations/{provider_id}/offer", json={"policy": counter}).status_code == 200
    offered = wait_state(beta, started["id"], ("OFFERED",))
    assert offered["state"] == "OFFERED"
    assert beta.api("POST", f"/negotiations/{started['id']}/accept").status_code == 200
    done = wait_state(beta, started["id"], ("FINALIZED", "TERMINATED"))
    assert done["state"] == "FINALIZED"
    assert done["agreement"]["terms"]["policy"] == counter
    assert done["agreement"]["max_uses"] == 2


def test_fifty_parallel_uses_of_a_ten_use_agreement(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    done = wait_state(beta, negotiate(acme, beta, "vibration", "research", "download")["id"], ("FINALIZED",))
    agreement_id = done["agreement"]["id"]

    def transfer(_: int) -> int:
        return beta.api("POST", "/transfers", json={"agreement_id": agreement_id}).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(transfer, range(50)))
    assert codes.count(201) == 10, codes
    provider_side = acme.api("GET", f"/agreements/{agreement_id}").json()
    assert provider_side["uses"] == 10
    refused = [u for u in provider_side["usage"] if not u["granted"]]
    assert len(refused) == 40, (
        sorted(codes),
        [u.get("reason") for u in refused][:3],
    )  # every ask reached the provider
    # refused either by the atomic count (a race) or by the policy's count constraint (after it)
    assert all("spent" in u["reason"] or "10" in u["reason"] for u in refused), refused[:3]


def test_illegal_transition_is_refused_and_recorded(orgs: tuple[services.Org, services.Org]) -> None:
    """A known, correctly signed peer sends a message its negotiation's state does not allow."""
    acme, beta = orgs
    done = wait_state(beta, negotiate(acme, beta, "vibration", "research", "compute")["id"], ("FINALIZED",))
    provider_id = done["peer_pid"]
    message = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractAgreementVerificationMessage",
        "providerPid": provider_id,
        "consumerPid": done["id"],
        "agora:signature": done["agreement"]["consumer_signature"],
    }
    r = dsp_peer.post(
        dsp_peer.as_node(beta.node),
        acme.node.url,
        f"/dsp/negotiations/{provider_id}/agreement/verification",
        message,
    )
    assert r.status_code == 409, r.text
    assert r.json()["@type"] == "ContractNegotiationError" and "FINALIZED" in r.json()["reason"][0]
    history = acme.api("GET", f"/negotiations/{provider_id}").json()
    assert history["state"] == "FINALIZED"
    refused = [e for e in history["history"] if not e["accepted"]]
    assert refused and refused[-1]["signer"] == beta.address and "FINALIZED" in refused[-1]["reason"]


def test_unknown_sender_is_refused(orgs: tuple[services.Org, services.Org]) -> None:
    acme, _ = orgs
    r = dsp_peer.post(
        dsp_peer.stranger(), acme.node.url, "/dsp/negotiations/request", {"@type": "ContractRequestMessage"}
    )
    assert r.status_code == 403 and "not a peer of this node" in r.json()["reason"][0]


def test_cli_negotiate_transfer_and_verify(orgs: tuple[services.Org, services.Org], tmp_path: Path) -> None:
    acme, beta = orgs
    home = str(beta.node.home)
    result = beta.node.cli(
        "negotiate",
        offering_id(acme, "vibration"),
        "--provider",
        acme.node.url,
        "--purpose",
        "research",
        "--wait",
        "--home",
        home,
    )
    agreement_id = result.stdout.strip().splitlines()[-1]
    assert agreement_id.startswith("0x") and len(agreement_id) == 66
    out = tmp_path / "vibration.csv"
    beta.node.cli("transfer", agreement_id, "-o", str(out), "--home", home)
    assert out.read_bytes() == (services.REPO / "examples" / "data" / "vibration.csv").read_bytes()
    verified = beta.node.cli("verify", str(out), "--home", str(tmp_path / "bystander"))
    assert "VERIFIED" in verified.stdout
    listed = beta.node.cli("negotiations", "list", "--home", home).stdout
    assert "FINALIZED" in listed
    denied = beta.node.cli(
        "negotiate",
        offering_id(acme, "bearings"),
        "--provider",
        acme.node.url,
        "--purpose",
        "marketing",
        "--mode",
        "compute",
        "--wait",
        "--home",
        home,
        check=False,
    )
    assert denied.returncode == 1 and "TERMINATED" in denied.stdout and "marketing" in denied.stdout


def test_replayed_message_is_refused(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    body = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:replay-test-0001",
        "callbackAddress": f"{beta.node.url}/dsp",
        "offer": {
            "@type": "Offer",
            "@id": "urn:x",
            "target": f"urn:uuid:{offering_id(acme, 'vibration')}",
            "permission": [
                {
                    "action": "https://agora.dev/ns/policy#compute",
                    "constraint": [
                        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": "research"}
                    ],
                }
            ],
        },
    }
    raw = json.dumps(body).encode()
    url = f"{acme.node.url}/dsp/negotiations/request"
    headers = dsp_peer.headers(dsp_peer.as_node(beta.node), acme.node.url, raw, url)
    first = httpx.post(url, content=raw, headers=headers)
    assert first.status_code == 201, first.text
    again = httpx.post(url, content=raw, headers=headers)
    assert again.status_code == 409 and "already received" in again.json()["reason"][0]
    token = headers["Authorization"]
    forged = {**headers, "Authorization": token[: token.rindex(".") + 1] + "A" * 86}
    assert httpx.post(url, content=raw, headers=forged).status_code == 401


def test_tampered_agreement_terms_are_refused_and_recorded(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    started = negotiate(acme, beta, "manual", "research", "download")  # waits for approval at Acme
    provider_side(acme, started["id"])
    terms = {
        "agreement": "0x" + "ab" * 32,
        "offering": offering_id(acme, "manual"),
        "purpose": "marketing",
        "accessMode": "download",
        "consumer": beta.address,
        "provider": acme.address,
        "chain": {"chain_id": 1337, "registry": "0x" + "00" * 20},
        "validUntil": 0,
    }
    message = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractAgreementMessage",
        "consumerPid": started["id"],
        "providerPid": "urn:uuid:x",
        "agora:terms": terms,
        "agora:signature": "0x" + "22" * 65,
    }
    r = dsp_peer.post(
        dsp_peer.as_node(acme.node), beta.node.url, f"/dsp/negotiations/{started['id']}/agreement", message
    )
    assert r.status_code == 400 and "purpose" in r.json()["reason"][0]
    shown = beta.api("GET", f"/negotiations/{started['id']}").json()
    assert shown["state"] == "REQUESTED"
    refused = [e for e in shown["history"] if not e["accepted"]]
    assert refused and "differ" in refused[0]["reason"]


SCHEMAS = {
    "ContractRequestMessage": "negotiation/contract-request-message-schema.json",
    "ContractOfferMessage": "negotiation/contract-offer-message-schema.json",
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractAgreementVerificationMessage": "negotiation/contract-agreement-verification-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "ContractNegotiationTerminationMessage": "negotiation/contract-negotiation-termination-message-schema.json",
}


def test_protocol_messages_validate_against_the_dsp_schemas(orgs: tuple[services.Org, services.Org]) -> None:
    from tests import dsp

    acme, beta = orgs
    wait_state(beta, negotiate(acme, beta, "vibration", "research", "compute")["id"], ("FINALIZED",))
    wait_state(beta, negotiate(acme, beta, "bearings", "marketing", "compute")["id"], ("TERMINATED",))
    checked: set[str] = set()
    for org in (acme, beta):
        for summary in org.api("GET", "/negotiations").json():
            for event in org.api("GET", f"/negotiations/{summary['id']}").json()["history"]:
                message = event["dsp_message"]
                kind = message.get("@type") if message else None
                if kind in SCHEMAS and event["accepted"]:
                    assert dsp.errors(SCHEMAS[kind], message) == [], (kind, message)
                    checked.add(kind)
    assert {
        "ContractRequestMessage",
        "ContractAgreementMessage",
        "ContractAgreementVerificationMessage",
        "ContractNegotiationEventMessage",
    } <= checked, checked


def provider_side(acme: services.Org, consumer_pid: str, timeout: float = 20) -> dict[str, Any]:
    """The provider's record of a negotiation the consumer started, once it has arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = [n for n in acme.api("GET", "/negotiations").json() if n["peer_pid"] == consumer_pid]
        if found:
            return dict(found[0])
        if time.monotonic() > deadline:
            raise AssertionError(f"the request {consumer_pid} never reached the provider")
        time.sleep(0.1)


def request_manual_approval(acme: services.Org, beta: services.Org, tmp_path: Path) -> dict[str, Any]:
    """Acme offers a file that needs a person's approval; Beta asks for it."""
    source = tmp_path / "d.csv"
    source.write_text("a\n1\n")
    meta = {"title": "Manual", "approval": "manual", "policy": {"template": "provide-access"}}
    with source.open("rb") as f:
        offering = acme.api(
            "POST",
            "/offerings",
            data={"metadata": json.dumps(meta)},
            files={"file": ("d.csv", f, "text/csv")},
        ).json()
    acme.api("POST", "/participants", json={"url": beta.node.url})
    beta.api("POST", "/participants", json={"url": acme.node.url})
    started = beta.api(
        "POST",
        "/negotiations",
        json={"offering_id": offering["id"], "provider": acme.node.url, "purpose": "research"},
    )
    assert started.status_code == 201, started.text
    return dict(started.json())


def test_provider_restart_mid_negotiation_resumes(tmp_path: Path) -> None:
    """The provider stops while a request waits for approval; after its restart the person
    approves and the negotiation runs to FINALIZED, both sides consistent."""
    from contracts.devchain import DevChainServer

    chain = DevChainServer(tmp_path / "chain", port=services.free_port())
    chain.start()
    env = {"AGORA_CHAIN_URL": chain.url, "AGORA_CHAIN_REGISTRY": chain.registry}
    provider = services.start_node(tmp_path / "p", name="Provider", **env)
    consumer = services.start_node(tmp_path / "c", name="Consumer", **env)
    try:
        acme, beta = services.Org(provider), services.Org(consumer)
        started = request_manual_approval(acme, beta, tmp_path)
        pending = [provider_side(acme, started["id"])]
        provider.stop()
        provider = services.start_node(tmp_path / "p", name="Provider", port=provider.port, **env)
        acme = services.Org(provider)
        assert acme.api("GET", f"/negotiations/{pending[0]['id']}").json()["state"] == "REQUESTED"
        acme.api("POST", f"/negotiations/{pending[0]['id']}/approve")
        done = wait_state(beta, started["id"], ("FINALIZED", "TERMINATED"))
        assert done["state"] == "FINALIZED"
        assert (
            wait_state(acme, pending[0]["id"], ("FINALIZED",))["agreement"]["tx_hash"]
            == done["agreement"]["tx_hash"]
        )
    finally:
        provider.stop()
        consumer.stop()
        chain.stop()


def test_negotiation_times_out_with_the_reason(tmp_path: Path) -> None:
    provider = services.start_node(tmp_path / "p", name="Provider", AGORA_NEGOTIATION_TIMEOUT="2")
    consumer = services.start_node(tmp_path / "c", name="Consumer")
    try:
        acme, beta = services.Org(provider), services.Org(consumer)
        started = request_manual_approval(acme, beta, tmp_path)
        done = wait_state(beta, started["id"], ("TERMINATED", "FINALIZED"), timeout=30)
        assert done["state"] == "TERMINATED" and "timed out in state REQUESTED" in done["reason"]
    finally:
        provider.stop()
        consumer.stop()


def test_a_policy_slipped_into_the_request_is_ignored(orgs: tuple[services.Org, services.Org]) -> None:
    acme, beta = orgs
    pid = "urn:uuid:slipped-policy-0001"
    body = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": pid,
        "callbackAddress": f"{beta.node.url}/dsp",
        "offer": {
            "@type": "Offer",
            "@id": "urn:x",
            "target": f"urn:uuid:{offering_id(acme, 'vibration')}",
            "agora:policy": {"template": "provide-access"},
            "permission": [
                {
                    "action": "use",
                    "constraint": [
                        {"leftOperand": "odrl:purpose", "operator": "eq", "rightOperand": "research"}
                    ],
                }
            ],
        },
    }
    r = dsp_peer.post(dsp_peer.as_node(beta.node), acme.node.url, "/dsp/negotiations/request", body)
    assert r.status_code == 201, r.text
    agreement = acme.api("GET", f"/agreements/{provider_side(acme, pid)['agreement_id']}").json()
    assert agreement["terms"]["policy"] == {"template": "n-times-usage", "params": {"count": 10}}
    assert agreement["max_uses"] == 10


def test_three_nodes_on_one_chain(orgs: tuple[services.Org, services.Org], tmp_path: Path) -> None:
    """A third organisation negotiates the same offering: each agreement is its own, on the one chain."""
    acme, beta = orgs
    env = {k: v for k, v in acme.node.env.items() if k in ("AGORA_CHAIN_URL", "AGORA_CHAIN_REGISTRY")}
    third = services.start_node(tmp_path / "gamma", name="Gamma Labs", **env)
    try:
        gamma = services.Org(third)
        assert acme.api("POST", "/participants", json={"url": third.url}).status_code == 201
        assert gamma.api("POST", "/participants", json={"url": acme.node.url}).status_code == 201
        mine = wait_state(
            gamma, negotiate(acme, gamma, "vibration", "research", "download")["id"], ("FINALIZED",)
        )
        theirs = wait_state(
            beta, negotiate(acme, beta, "vibration", "research", "download")["id"], ("FINALIZED",)
        )
        assert mine["agreement"]["id"] != theirs["agreement"]["id"]
        provider_view = acme.api("GET", f"/agreements/{mine['agreement']['id']}").json()
        assert provider_view["consumer"] == gamma.address
        # Beta cannot use Gamma's agreement
        request = {
            "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
            "@type": "TransferRequestMessage",
            "consumerPid": "urn:uuid:not-yours-0001",
            "agreementId": mine["agreement"]["id"],
            "format": "HttpData-PULL",
            "callbackAddress": f"{beta.node.url}/dsp",
        }
        r = dsp_peer.post(dsp_peer.as_node(beta.node), acme.node.url, "/dsp/transfers/request", request)
        assert (
            r.status_code == 403 and r.json()["@type"] == "TransferError" and "not" in r.json()["reason"][0]
        )
    finally:
        third.stop()
