"""Data space membership between two real nodes: Acme requires a MembershipCredential of every
DSP caller (``AGORA_DCP_SCOPES``) and is its data space's issuer; Beta, a peer, is refused
until it holds the membership, then reads the catalog and negotiates, and the claims its
membership presentation proved decide Acme's credential policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import dsp_peer, services
from tests.integration.test_credential_policies import did, members_only, negotiate, offer

MEMBERSHIP_SCOPE = "org.eclipse.dspace.dcp.vc.type:MembershipCredential:read"
CATALOG_REQUEST = {
    "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
    "@type": "CatalogRequestMessage",
}


@pytest.fixture(scope="module")
def orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[services.Org, services.Org]]:
    acme_node = services.start_node(
        tmp_path_factory.mktemp("acme"), "Acme Wind", AGORA_DCP_SCOPES=MEMBERSHIP_SCOPE
    )
    beta_node = services.start_node(tmp_path_factory.mktemp("beta"), "Beta Analytics")
    try:
        acme, beta = services.Org(acme_node), services.Org(beta_node)
        for a, b in ((acme, beta), (beta, acme)):
            assert a.api("POST", "/participants", json={"url": b.node.url}).status_code == 201
        yield acme, beta
    finally:
        beta_node.stop()
        acme_node.stop()


def test_a_peer_presents_its_membership_to_be_served(
    orgs: tuple[services.Org, services.Org], tmp_path: Path
) -> None:
    acme, beta = orgs
    gold = offer(acme, "member-readings", members_only("gold"))
    beta_id = dsp_peer.as_node(beta.node)

    refused = dsp_peer.post(beta_id, acme.node.url, "/dsp/catalog/request", CATALOG_REQUEST)
    assert refused.status_code == 401 and "no access token" in refused.text, refused.text

    jwt = tmp_path / "membership.jwt"
    acme.node.cli(
        "credentials", "issue", "--subject", did(beta), "--type", "MembershipCredential",
        "--claim", "membership=gold", "-o", str(jwt),
    )  # fmt: skip
    trusted = acme.api(
        "POST", "/credentials/trusted-issuers", json={"did": did(acme), "type": "MembershipCredential"}
    )
    assert trusted.status_code in (200, 201), trusted.text
    assert beta.api("POST", "/credentials", json={"jwt": jwt.read_text().strip()}).status_code in (200, 201)

    # Beta's own requests carry an access token to its credentials: one presentation per request
    agreed = negotiate(beta, acme, gold)
    assert agreed["state"] == "FINALIZED", agreed.get("reason")
    assert agreed["agreement"]["terms"]["credentials"]["credential_claims"] == [
        "MembershipCredential.membership=gold"
    ]


def test_a_stranger_without_credentials_is_refused(orgs: tuple[services.Org, services.Org]) -> None:
    acme, _ = orgs
    refused = dsp_peer.post(dsp_peer.stranger(), acme.node.url, "/dsp/catalog/request", CATALOG_REQUEST)
    assert refused.status_code in (401, 403) and refused.json()["@type"] == "CatalogError", refused.text
