"""An Agora provider and a connector that speaks only DSP 2025-1 and DCP (node/plain_peer.py):
the catalog, a negotiation and a pull transfer, each message checked against the DSP schemas.
The agreement is valid under DSP and enforced by the node, with no chain record and no
co-signature; the messages the peer receives carry the DSP context only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from node.plain_peer import PlainPeer
from tests import dsp, services

SCHEMAS = {
    "ContractAgreementMessage": "negotiation/contract-agreement-message-schema.json",
    "ContractNegotiationEventMessage": "negotiation/contract-negotiation-event-message-schema.json",
    "TransferStartMessage": "transfer/transfer-start-message-schema.json",
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Org]:
    node = services.start_node(tmp_path_factory.mktemp("acme"), "Acme Wind")
    try:
        yield services.Org(node)
    finally:
        node.stop()


def register(org: services.Org, name: str, policy: dict[str, object], data: bytes) -> str:
    meta = {"title": name, "name": name, "media_type": "text/csv", "policy": policy}
    files = {"metadata": (None, json.dumps(meta)), "file": (f"{name}.csv", data)}
    r = org.api("POST", "/offerings", files=files)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_plain_peer_negotiates_and_pulls(provider: services.Org, tmp_path: Path) -> None:
    data = b"t,v\n" + b"".join(f"{i},{i * 0.5}\n".encode() for i in range(500))
    offering_id = register(provider, "open-readings", {"template": "provide-access"}, data)
    register(provider, "closed", {"template": "prohibit-access"}, b"a\n1\n")
    with PlainPeer() as gamma:
        # before the operator adds it, the node refuses it without asking its DID for anything
        far = gamma.discover(provider.node.url)
        refused = gamma.post(
            far, "/catalog/request", {"@context": [dsp_context()], "@type": "CatalogRequestMessage"}
        )
        assert refused.status_code == 403 and refused.json()["@type"] == "CatalogError"
        added = provider.api(
            "POST", "/participants", json={"url": gamma.url, "did": gamma.did, "name": "Gamma"}
        )
        assert added.status_code == 201, added.text
        assert added.json()["kind"] == "dsp" and added.json()["dsp_url"] == gamma.dsp

        catalog = gamma.catalog(far)
        assert dsp.errors("catalog/catalog-schema.json", catalog) == []
        assert catalog["@context"] == [dsp_context()]
        assert catalog["participantId"].startswith("did:web:")
        datasets = {d["@id"]: d for d in catalog["dataset"]}
        assert f"urn:uuid:{offering_id}" in datasets and len(datasets) == 1  # the closed one is hidden
        assert not any(key.startswith("agora:") for d in catalog["dataset"] for key in d)

        agreement = gamma.negotiate(far, datasets[f"urn:uuid:{offering_id}"])
        assert agreement["assignee"] == gamma.did and agreement["target"] == f"urn:uuid:{offering_id}"
        received = gamma.transfer(far, agreement["@id"])
        assert received == data
        for message in gamma.received:
            assert message["@context"] == [dsp_context()], message
            schema = SCHEMAS.get(message["@type"])
            if schema:
                assert dsp.errors(schema, message) == [], message

    negotiations = provider.api("GET", "/negotiations").json()
    done = next(n for n in negotiations if n["offering_id"] == offering_id)
    assert done["state"] == "FINALIZED"
    record = provider.api("GET", f"/agreements/{agreement['@id']}").json()
    assert record["tx_hash"] is None and record["consumer_signature"] == ""
    assert record["uses"] == 1  # the transfer took a use: the node enforces the agreement
    transfers = provider.api("GET", "/transfers").json()
    assert transfers[0]["state"] == "COMPLETED" and [h["state"] for h in transfers[0]["history"]] == [
        "STARTED",
        "COMPLETED",
    ]


def dsp_context() -> str:
    return "https://w3id.org/dspace/2025/1/context.jsonld"


def test_version_metadata_and_did_document(provider: services.Org) -> None:
    versions = httpx.get(f"{provider.node.url}/.well-known/dspace-version").json()
    assert dsp.errors("common/protocol-version-schema.json", versions) == []
    assert versions["protocolVersions"][0]["path"] == "/dsp"
    document = httpx.get(f"{provider.node.url}/.well-known/did.json").json()
    assert document["id"] == f"did:web:127.0.0.1%3A{provider.node.port}"
    method = document["verificationMethod"][0]
    assert method["publicKeyJwk"]["crv"] == "secp256k1"
    assert method["blockchainAccountId"].endswith(provider.address)
