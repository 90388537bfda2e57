"""The DCP TCK's Credential Service presentation cases (``presentation/cs``:
PresentationFlowSection4Test and PresentationFlowSection5Test) against a live node.

The node is the holder: the suite's verifier (:class:`~tests.conformance.dcp.suite.CsSuite`)
sends it PresentationQueryMessages with its self-issued ID token, the access token in its
``token`` claim coming from the node's token service; the credentials it asks for are
delivered first by the suite's issuer where a case is ``@IssueCredentials``. A case passes as
the suite's does: 2xx where it expects 2xx (the presentation checked as ``verifyCredentials``
checks it), 4xx where it expects 4xx, 400 where it asks for exactly that.

Three Section 5 cases are ``@Disabled`` in the suite ("Not implemented yet") and are not
translated: ``cs_05_04_01_01_presentationRequest``,
``cs_05_04_01_02_lessTypesThanAuthorizedByTypeRequest`` and
``cs_05_04_01_01_invalidPresentationEscalationRequest``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

from tests.conformance.dcp.holder import DCP_CONTEXT, MEMBERSHIP, MEMBERSHIP_SCOPE, SENSITIVE, SENSITIVE_SCOPE
from tests.conformance.dcp.suite import CredentialServiceUnderTest, document

PRESENTATION_QUERY = "/presentations/query"


def query_message(**properties: Any) -> dict[str, Any]:
    """A PresentationQueryMessage as DcpMessageBuilder builds it."""
    return {"@context": [DCP_CONTEXT], "type": "PresentationQueryMessage", **properties}


def membership_query() -> dict[str, Any]:
    return query_message(scope=[MEMBERSHIP_SCOPE])


def presentation_definition(credential_type: str) -> dict[str, Any]:
    """TestFixtures.createPresentationDefinition."""
    field = {"path": ["$.type"], "filter": {"type": "string", "pattern": credential_type}}
    descriptor = {"id": "credential", "format": "vcdm11_jwt", "constraints": {"fields": field}}
    return {"id": str(uuid.uuid4()), "input_descriptors": [descriptor]}


def assert_4xx(response: httpx.Response, because: str) -> None:
    """A 4xx (all the suite asks) whose problem detail says ``because``: the request is
    refused for what the case tests, not for something else."""
    assert 400 <= response.status_code < 500, (
        f"expected 4xx, got {response.status_code}: {response.text[:500]}"
    )
    assert because in response.json().get("detail", ""), response.text[:500]


# PresentationFlowSection4Test: the verifier's ID token -------------------------------------------


def test_cs_04_03_03_id_token_invalid_issuer_sub(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - auth token bound to a different iss/sub"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    token = cs.suite.token("thirdparty", token=auth_token)  # iss and sub not the token's verifier
    response = cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}")
    assert_4xx(response, "issued to another party")


def test_cs_04_03_03_id_token_invalid_sub(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - iss and sub different"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    token = cs.suite.verifier_token(auth_token, sub=cs.suite.third_party_did)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}"), "iss and sub")


def test_cs_04_03_03_idtoken_incorrect_aud(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - incorrect aud"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    token = cs.suite.verifier_token(auth_token, aud=cs.suite.verifier_did)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}"), "is meant for")


def test_cs_04_03_03_idtoken_incorrect_sub(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - sub does not match DID document id"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    third = cs.suite.third_party_did
    # the verifier's key signs as the third party, for the verifier
    token = cs.suite.verifier_token(auth_token, iss=third, sub=third, aud=cs.suite.verifier_did)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}"), "is meant for")


def test_cs_04_03_03_idtoken_nbf_in_future(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - nbf in future"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    token = cs.suite.verifier_token(auth_token, nbf=int(time.time()) + 1_000_000)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}"), "(nbf)")


def test_cs_04_03_03_idtoken_expired(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - expired"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    token = cs.suite.verifier_token(auth_token, exp=int(time.time()) - 1_000_000)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {token}"), "expired")


def test_cs_04_03_03_idtoken_jti_used_twice(cs: CredentialServiceUnderTest) -> None:
    """4.3.3 Verify invalid access token - jti"""
    cs.issue_credentials()
    auth_token1, auth_token2 = cs.access_token(MEMBERSHIP_SCOPE), cs.access_token(MEMBERSHIP_SCOPE)
    jti = str(uuid.uuid4())
    first = cs.suite.verifier_token(auth_token1, jti=jti)
    cs.verify_credentials(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {first}"), MEMBERSHIP)
    second = cs.suite.verifier_token(auth_token2, jti=jti)
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), f"Bearer {second}"), "already used")


# PresentationFlowSection5Test: the Resolution API -------------------------------------------------


def test_cs_05_02_endpoint_discovery(cs: CredentialServiceUnderTest) -> None:
    """5.2 Verify Credential Service endpoint discovery"""
    found = document(cs.suite.node_did)
    entries = [s for s in found["service"] if s["type"] == "CredentialService"]
    assert entries and entries[0]["serviceEndpoint"]


def test_cs_05_03_01_access_token_invalid_header(cs: CredentialServiceUnderTest) -> None:
    """5.3.1 Verify submitting an invalid access token header"""
    cs.issue_credentials()
    token = cs.suite.verifier_token(cs.access_token(MEMBERSHIP_SCOPE))
    assert_4xx(cs.post(PRESENTATION_QUERY, membership_query(), token), "Bearer")  # no "Bearer " prefix


def test_cs_05_04_invalid_token_not_authorized(cs: CredentialServiceUnderTest) -> None:
    """5.4 Verify Resolution API invalid token not authorized"""
    cs.issue_credentials()
    assert_4xx(cs.query("faketoken", membership_query()), "not one this node issued")


def test_cs_05_04_01_invalid_scope_and_presentation_request(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.2 Verify Resolution API request does not contain a scope and presentation definition"""
    cs.issue_credentials()
    message = query_message(
        scope=[MEMBERSHIP_SCOPE], presentationDefinition=presentation_definition(MEMBERSHIP)
    )
    response = cs.query(cs.access_token(MEMBERSHIP_SCOPE), message)
    assert response.status_code == 400, response.text[:500]
    assert "not both" in response.json()["detail"]


def test_cs_05_04_01_empty_presentation_definition(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.1 Verify Resolution API rejects an empty 'presentationDefinition' object"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    assert_4xx(cs.query(auth_token, query_message(presentationDefinition={})), "is empty")
    assert_4xx(cs.query(auth_token, query_message(presentationDefinition=None)), "is empty")


def test_cs_05_04_02_empty_scope_expect_4xx(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.2 Verify Resolution API rejects an empty (or absent) 'scope' array"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE)
    assert_4xx(cs.query(auth_token, query_message(scope=[])), "non-empty 'scope' array")
    assert_4xx(cs.query(auth_token, query_message()), "non-empty 'scope' array")


def test_cs_05_04_01_02_scope_by_type_request(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.2 Verify Resolution API scope request for a MembershipCredential"""
    cs.issue_credentials()
    response = cs.query(cs.access_token(MEMBERSHIP_SCOPE), membership_query())
    cs.verify_credentials(response, MEMBERSHIP)


def test_cs_05_04_01_02_less_scopes_than_authorized_by_type_request(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.2 Verify Resolution API with less scopes than requested for a SensitiveDataCredential"""
    cs.issue_credentials()
    auth_token = cs.access_token(MEMBERSHIP_SCOPE, SENSITIVE_SCOPE)
    cs.verify_credentials(cs.query(auth_token, query_message(scope=[SENSITIVE_SCOPE])), SENSITIVE)


def test_cs_05_04_01_02_invalid_scope_escalation_request(cs: CredentialServiceUnderTest) -> None:
    """5.4.1.2 Verify Resolution API invalid scope escalation request for a SensitiveDataCredential"""
    cs.issue_credentials()
    message = query_message(scope=[MEMBERSHIP_SCOPE, SENSITIVE_SCOPE])  # more than the token grants
    cs.verify_credentials(cs.query(cs.access_token(MEMBERSHIP_SCOPE), message), MEMBERSHIP)
