"""Policies that ask for verified credentials, between two real nodes: Acme is its data space's
issuer (`agora credentials issue`), Beta holds the membership it was given, and Acme's policy
decides on what Beta's credential service presents (DCP), not on what Beta says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import services
from tests.integration.test_negotiation import wait_state


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Org, services.Org]]:
    acme_node = services.start_node(tmp_path_factory.mktemp("acme"), "Acme Wind")
    beta_node = services.start_node(tmp_path_factory.mktemp("beta"), "Beta Analytics")
    try:
        acme, beta = services.Org(acme_node), services.Org(beta_node)
        for a, b in ((acme, beta), (beta, acme)):
            assert a.api("POST", "/participants", json={"url": b.node.url}).status_code == 201
        yield acme, beta
    finally:
        beta_node.stop()
        acme_node.stop()


def did(org: services.Org) -> str:
    return f"did:web:127.0.0.1%3A{org.node.port}"


def offer(org: services.Org, name: str, policy: dict[str, Any]) -> str:
    meta = {"title": name, "name": name, "media_type": "text/csv", "policy": policy}
    files = {"metadata": (None, json.dumps(meta)), "file": (f"{name}.csv", f"a\n{name}\n".encode())}
    r = org.api("POST", "/offerings", files=files)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def members_only(level: str) -> dict[str, Any]:
    return {
        "permissions": [
            {
                "action": "use",
                "constraints": [
                    {
                        "leftOperand": "credential",
                        "operator": "isAnyOf",
                        "rightOperand": ["MembershipCredential"],
                    },
                    {
                        "leftOperand": "credentialClaim",
                        "operator": "isAnyOf",
                        "rightOperand": [f"MembershipCredential.membership={level}"],
                    },
                ],
            }
        ]
    }


def negotiate(consumer: services.Org, provider: services.Org, offering_id: str) -> dict[str, Any]:
    r = consumer.api(
        "POST",
        "/negotiations",
        json={"offering_id": offering_id, "provider": provider.node.url, "purpose": "research"},
    )
    assert r.status_code == 201, r.text
    return wait_state(consumer, r.json()["id"], ("FINALIZED", "TERMINATED"))


def test_a_policy_decides_on_verified_credentials(
    orgs: tuple[services.Org, services.Org], tmp_path: Path
) -> None:
    acme, beta = orgs
    gold = offer(acme, "gold-readings", members_only("gold"))
    platinum = offer(acme, "platinum-readings", members_only("platinum"))

    # before Beta holds anything, the policy sees no credential
    refused = negotiate(beta, acme, gold)
    assert refused["state"] == "TERMINATED" and "verified credentials (none)" in refused["reason"], refused

    # Acme issues Beta's membership (offline, with its organisation key) and trusts itself as issuer
    jwt = tmp_path / "membership.jwt"
    acme.node.cli(
        "credentials", "issue", "--subject", did(beta), "--type", "MembershipCredential",
        "--claim", "membership=gold", "-o", str(jwt),
    )  # fmt: skip
    assert acme.api(
        "POST", "/credentials/trusted-issuers", json={"did": did(acme), "type": "MembershipCredential"}
    ).status_code in (200, 201)
    held = beta.api("POST", "/credentials", json={"jwt": jwt.read_text().strip()})
    assert held.status_code in (200, 201), held.text

    agreed = negotiate(beta, acme, gold)
    assert agreed["state"] == "FINALIZED", agreed["reason"]
    terms = agreed["agreement"]["terms"]
    assert terms["credentials"]["credential_claims"] == ["MembershipCredential.membership=gold"]

    # a claim Beta's credential does not make is not met, whatever Beta could say
    denied = negotiate(beta, acme, platinum)
    assert denied["state"] == "TERMINATED"
    assert "MembershipCredential.membership=platinum" in denied["reason"], denied["reason"]


@pytest.mark.parametrize(
    "forged", [{"participant": "0x" + "a1" * 20}, {"credentials": ["x"]}, ["x"], {"bogus": 1}]
)
def test_a_consumer_cannot_state_its_own_credentials(
    orgs: tuple[services.Org, services.Org], forged: Any
) -> None:
    """What the provider decides on is what it verified: an ``agora:credentials`` the consumer
    slips into its offer is dropped (no other context field, no 5xx)."""
    from tests import dsp_peer

    acme, beta = orgs
    chosen = offer(
        acme,
        f"only-a1-{abs(hash(json.dumps(forged))) % 10_000}",
        {"template": "connector-restricted-usage", "params": {"participants": ["0x" + "A1" * 20]}},
    )
    pid = f"urn:uuid:forged-{abs(hash(json.dumps(forged))) % 10_000:04d}-0000-0000-000000000000"
    body = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractRequestMessage",
        "consumerPid": pid,
        "callbackAddress": f"{beta.node.url}/dsp",
        "offer": {
            "@type": "Offer",
            "@id": f"urn:agora:offer:{chosen}",
            "target": f"urn:uuid:{chosen}",
            "permission": [{"action": "use"}],
            "agora:credentials": forged,
        },
    }
    r = dsp_peer.post(dsp_peer.as_node(beta.node), acme.node.url, "/dsp/negotiations/request", body)
    assert r.status_code == 201, r.text
    mine = next(n for n in acme.api("GET", "/negotiations").json() if n["peer_pid"] == pid)
    assert mine["state"] == "TERMINATED" and "not" in mine["reason"], mine
