"""The Eclipse DCP TCK's verifier cases (``presentation/verifier``: PresentationFlowSection4Test
and PresentationFlowSection5Test), one test each, against a real node as the verifier.

The node runs with data space membership on (``AGORA_DCP_SCOPES`` naming the
MembershipCredential scope) and trusts the suite's issuer. The suite's trigger is the
node's catalog endpoint, as the suite proposes for a verifier that implements DSP: a
``CatalogRequestMessage`` (expanded, without a context) whose ``Authorization`` carries the
holder's ID token. The holder, issuer and third party are :class:`~tests.conformance.dcp.holder.TckParties`;
each case starts them afresh, as the suite builds its services per case. A case passes as
the suite's does: 2xx where it expects 2xx, 4xx where it expects 4xx.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import services
from tests.conformance.dcp.holder import (
    DCP_CONTEXT,
    MEMBERSHIP,
    MEMBERSHIP_SCOPE,
    SENSITIVE_SCOPE,
    StatusList,
    TckParties,
    instant,
)

TRIGGER_MESSAGE = """
{
    "@type": "https://w3id.org/dspace/2025/1/CatalogRequestMessage",
    "https://w3id.org/dspace/2025/1/filter": {}
}
"""


@dataclass
class Verifier:
    node: services.LiveNode
    parties: TckParties

    @property
    def trigger_endpoint(self) -> str:
        return f"{self.node.url}/dsp/catalog/request"

    def trigger(self, authorization: str) -> httpx.Response:
        return httpx.post(
            self.trigger_endpoint,
            content=TRIGGER_MESSAGE.encode(),
            headers={"Authorization": authorization, "Content-Type": "application/json"},
            timeout=60,
        )


@pytest.fixture(scope="module")
def verifier_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifier]:
    parties = TckParties()
    home: Path = tmp_path_factory.mktemp("dcp-verifier")
    node = services.start_node(home, "DCP Verifier Org", AGORA_DCP_SCOPES=MEMBERSHIP_SCOPE)
    try:
        parties.verifier_did = httpx.get(f"{node.url}/.well-known/did.json", timeout=10).json()["id"]
        node.cli("credentials", "trust", "add", parties.issuer_did)
        yield Verifier(node, parties)
    finally:
        node.stop()
        parties.stop()


@pytest.fixture
def tck(verifier_node: Verifier) -> Verifier:
    verifier_node.parties.reset()
    return verifier_node


def assert_2xx(response: httpx.Response) -> None:
    assert 200 <= response.status_code < 300, (
        f"expected 2xx, got {response.status_code}: {response.text[:500]}"
    )


def assert_4xx(response: httpx.Response, because: str) -> None:
    """A 4xx DSP error (all the suite asks) whose reason says ``because``: the case is
    refused for what it tests, not for something else."""
    assert 400 <= response.status_code < 500, (
        f"expected 4xx, got {response.status_code}: {response.text[:500]}"
    )
    error = response.json()
    assert error["@type"] == "CatalogError", error
    assert because in " ".join(error["reason"]), error


# PresentationFlowSection4Test: the ID token ----------------------------------------------------


def test_verifier_04_bearer_prefix_missing(tck: Verifier) -> None:
    """Verifier should reject an auth token without the Bearer prefix"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    assert_4xx(tck.trigger(parties.id_token(auth_token)), "presentation holds no credentials")


def test_verifier_04_03_03_id_token_invalid_issuer_sub(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - auth token bound to a different iss/sub"""
    parties = tck.parties
    parties.issue_credentials()
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    third = parties.third_party_did
    token = parties.id_token(auth_token, iss=third, sub=third, aud=parties.holder_did, signer="thirdparty")
    assert_4xx(tck.trigger(f"Bearer {token}"), "is meant for")
    assert parties.queries == []  # refused before the verifier asked anyone


def test_verifier_04_03_03_id_token_invalid_sub(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - iss and sub different"""
    parties = tck.parties
    parties.issue_credentials()
    token = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), sub=parties.third_party_did)
    assert_4xx(tck.trigger(f"Bearer {token}"), "iss and sub")


def test_verifier_04_03_03_id_token_incorrect_aud(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - incorrect aud"""
    parties = tck.parties
    parties.issue_credentials()
    token = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), aud=parties.third_party_did)
    assert_4xx(tck.trigger(f"Bearer {token}"), "is meant for")
    assert parties.queries == []


def test_verifier_04_03_03_id_token_incorrect_sub(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - sub does not match DID document id"""
    parties = tck.parties
    parties.issue_credentials()
    token = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), sub=parties.third_party_did)
    assert_4xx(tck.trigger(f"Bearer {token}"), "iss and sub")


def test_verifier_04_03_03_id_token_nbf_in_future(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - nbf in future"""
    parties = tck.parties
    parties.issue_credentials()
    token = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), nbf=int(time.time()) + 1_000_000)
    assert_4xx(tck.trigger(f"Bearer {token}"), "(nbf)")
    assert parties.queries == []


def test_verifier_04_03_03_id_token_expired(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - expired"""
    parties = tck.parties
    parties.issue_credentials()
    token = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), exp=int(time.time()) - 1_000_000)
    assert_4xx(tck.trigger(f"Bearer {token}"), "expired")
    assert parties.queries == []


def test_verifier_04_03_03_id_token_jti_used_twice(tck: Verifier) -> None:
    """4.3.3 Verify invalid access token - jti"""
    parties = tck.parties
    parties.issue_credentials()
    jti = str(uuid.uuid4())
    first = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), jti=jti)
    assert_2xx(tck.trigger(f"Bearer {first}"))
    second = parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE), jti=jti)
    assert_4xx(tck.trigger(f"Bearer {second}"), "already received")
    assert len(parties.queries) == 1  # the replay was refused before the holder was asked again


def test_verifier_04_03_01_id_token_no_token_claim(tck: Verifier) -> None:
    """4.3.1 Verifier should reject an ID token that does not contain an access token"""
    parties = tck.parties
    parties.issue_credentials()
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(None)}"), "no access token")
    assert parties.queries == []


# PresentationFlowSection5Test: the presentation --------------------------------------------------


def test_verifier_05_endpoint_discovery(tck: Verifier) -> None:
    """Verifier should resolve the DID from the prover's ID token"""
    tck.parties.issue_credentials()
    document = httpx.get(f"{tck.node.url}/.well-known/did.json", timeout=10).json()
    assert document["id"] == tck.parties.verifier_did
    entries = [s for s in document["service"] if s["type"] == "CredentialService"]
    assert entries and entries[0]["serviceEndpoint"]


def test_verifier_05_01_presentation_response_success(tck: Verifier) -> None:
    """5.1 Verifier should accept a valid PresentationResponseMessage"""
    parties = tck.parties
    parties.issue_credentials()
    response = tck.trigger(f"Bearer {parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE))}")
    assert_2xx(response)
    assert response.json()["@type"] == "Catalog"
    (query,) = parties.queries
    assert query["type"] == "PresentationQueryMessage"
    assert query["@context"] == [DCP_CONTEXT] and query["scope"] == [MEMBERSHIP_SCOPE]


def test_verifier_05_04_02_01_presentation_response_too_few_credentials(tck: Verifier) -> None:
    """5.4.2.1 Verifier should reject a presentation response message that contains a different credential than requested"""
    parties = tck.parties
    parties.issue_credentials()
    auth_token = parties.auth_token("org.eclipse.dspace.dcp.vc.type:SomeOtherCredential:read")
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "refused the query: HTTP 401")


def test_verifier_05_04_02_02_presentation_response_too_many_credentials(tck: Verifier) -> None:
    """5.4.2.2 Verifier should accept a presentation response message that contains more credentials than requested"""
    parties = tck.parties
    parties.issue_credentials()
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE, SENSITIVE_SCOPE)
    assert_2xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"))


def test_verifier_05_04_02_03_presentation_response_empty_presentations(tck: Verifier) -> None:
    """5.4.2.3 Verifier should reject an empty 'presentation' array"""
    parties = tck.parties
    auth_token = parties.auth_token(SENSITIVE_SCOPE)
    parties.answer = lambda bearer, token, query: parties.response()
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "empty presentation")
    assert len(parties.queries) == 1


def test_verifier_05_04_02_04_presentation_response_empty_credentials(tck: Verifier) -> None:
    """5.4.2.4 Verifier should reject an a presentation where a requested credential is missing"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    parties.answer = parties.presenting()
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "holds no credentials")
    assert len(parties.queries) == 1


def test_verifier_05_04_03_presentation_response_holder_not_equal_subject_id(tck: Verifier) -> None:
    """5.4.3 Verifier should reject Presentations where the holder does not match the credentialSubject.id"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    subject = {"id": parties.third_party_did, "foo": "bar"}
    parties.answer = parties.presenting(parties.credential([MEMBERSHIP], credentialSubject=subject))
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "not did:web")
    assert len(parties.queries) == 1


def test_verifier_05_04_03_07_presentation_response_expired_credential(tck: Verifier) -> None:
    """5.4.3.7 Verifier should reject an expired credential"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    expired = parties.credential([MEMBERSHIP], expirationDate=instant(time.time() - 100))
    parties.answer = parties.presenting(expired)
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "expired at")
    assert len(parties.queries) == 1


@pytest.mark.parametrize("revocation_type", ["bitstringstatuslist", "statuslist2021"])
def test_verifier_05_04_03_06_presentation_response_credential_revoked(
    tck: Verifier, revocation_type: str
) -> None:
    """5.4.3.6 Verifier should reject Presentations where at least 1 credential is revoked/suspended"""
    parties = tck.parties
    parties.status_list = StatusList(parties.issuer_did, parties.address, revocation_type)
    index = 1
    parties.status_list.set_revoked(index)

    def entry(at: int) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "type": "BitstringStatusListEntry",
            "statusPurpose": "revocation",
            "statusListIndex": str(at),
            "statusListCredential": parties.status_list.url,
        }

    # beyond the suite: the bit beside it is not set, and that credential passes
    parties.answer = parties.presenting(parties.credential([MEMBERSHIP], credentialStatus=entry(index + 1)))
    assert_2xx(tck.trigger(f"Bearer {parties.id_token(parties.auth_token(MEMBERSHIP_SCOPE))}"))
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    parties.answer = parties.presenting(parties.credential([MEMBERSHIP], credentialStatus=entry(index)))
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "is revoked")


def test_verifier_05_04_03_06_presentation_response_not_yet_valid_credential(tck: Verifier) -> None:
    """5.4.3.6 Verifier should reject a credential that is not yet valid"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    future = parties.credential([MEMBERSHIP], issuanceDate=instant(time.time() + 3600))
    parties.answer = parties.presenting(future)
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "not valid yet")
    assert len(parties.queries) == 1


def test_verifier_x_x_presentation_response_invalid_credential_schema(tck: Verifier) -> None:
    """X.X Verifier should reject Presentations where at least 1 credential schema is violated"""
    parties = tck.parties
    auth_token = parties.auth_token(MEMBERSHIP_SCOPE)
    schema = {"id": f"{parties.address}/schema/membership-schema.json", "type": "JsonSchemaValidator2018"}
    subject = {"id": parties.holder_did, "baz": "quazz"}  # "foo" is missing: the schema is violated
    parties.answer = parties.presenting(
        parties.credential([MEMBERSHIP], credentialSubject=subject, credentialSchema=schema)
    )
    assert_4xx(tck.trigger(f"Bearer {parties.id_token(auth_token)}"), "'foo' is a required property")
