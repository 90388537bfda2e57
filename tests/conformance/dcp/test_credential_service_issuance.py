"""The DCP TCK's Credential Service issuance cases (``issuance/cs``: CredentialIssuanceTest,
the Storage API's CredentialMessage, and CredentialOfferTest, the CredentialOfferMessage)
against a live node.

The node is the holder and trusts the suite's issuer; the issuer
(:class:`~tests.conformance.dcp.suite.CsSuite`) posts its messages to the Credential Service
its DID document names, with its self-issued token (``createClaims``: ``iss`` = ``sub`` the
issuer, ``aud`` the node, ``iat`` now, ``exp`` in 600 s). Each case is run for both messages
where the suite has it for both, as pytest ids ``cs_06_05_01_…`` (``/credentials``) and
``cs_06_06_01_…`` (``/offers``). A case passes as the suite's does: 2xx where it expects 2xx,
4xx where it expects 4xx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from tests.conformance.dcp.holder import MEMBERSHIP, SENSITIVE, compact
from tests.conformance.dcp.suite import CredentialServiceUnderTest, CsSuite


@dataclass(frozen=True)
class Api:
    """One of the issuer's two endpoints and the message the suite's cases send it."""

    name: str
    path: str
    message: Callable[[CsSuite], dict[str, Any]]


CREDENTIALS = Api("CredentialMessage", "/credentials", lambda suite: suite.credential_message())
OFFERS = Api("CredentialOfferMessage", "/offers", lambda suite: suite.offer_message())
BOTH = pytest.mark.parametrize(
    "api", [pytest.param(CREDENTIALS, id="cs_06_05_01"), pytest.param(OFFERS, id="cs_06_06_01")]
)


def assert_2xx(response: httpx.Response) -> None:
    assert 200 <= response.status_code < 300, (
        f"expected 2xx, got {response.status_code}: {response.text[:500]}"
    )


def assert_4xx(response: httpx.Response, because: str) -> None:
    """A 4xx (all the suite asks) whose problem detail says ``because``."""
    assert 400 <= response.status_code < 500, (
        f"expected 4xx, got {response.status_code}: {response.text[:500]}"
    )
    assert because in response.json().get("detail", ""), response.text[:500]


def held(cs: CredentialServiceUnderTest) -> list[dict[str, Any]]:
    """The credentials the node holds (its management API)."""
    response = httpx.get(
        f"{cs.node.url}/api/v1/credentials", headers={"Authorization": f"Bearer {cs.admin}"}, timeout=30
    )
    response.raise_for_status()
    rows = response.json()
    assert isinstance(rows, list)
    return rows


def held_ids(cs: CredentialServiceUnderTest) -> set[str]:
    return {row["id"] for row in held(cs)}


# 6.5.1 CredentialMessage and 6.6.1 CredentialOfferMessage: accepted ------------------------------


def test_cs_06_05_01_credential_message(cs: CredentialServiceUnderTest) -> None:
    """6.5.1 CredentialService should accept expected CredentialMessage"""
    message = cs.suite.credential_message()
    assert_2xx(cs.post("/credentials", message, f"Bearer {cs.suite.issuer_token()}"))
    # beyond the suite: both credentials are now held as delivered
    delivered = {jws.extract_compact(c["payload"].encode()).payload for c in message["credentials"]}
    rows = held(cs)
    assert delivered <= {jws.extract_compact(row["jwt"].encode()).payload for row in rows}
    assert {row["type"] for row in rows} >= {MEMBERSHIP, SENSITIVE}


def test_cs_06_06_01_credential_offer_message(cs: CredentialServiceUnderTest) -> None:
    """6.6.1 CredentialService should accept CredentialOfferMessage"""
    assert_2xx(cs.post("/offers", cs.suite.offer_message(), f"Bearer {cs.suite.issuer_token()}"))


def test_cs_06_06_01_credential_offer_message_only_ids(cs: CredentialServiceUnderTest) -> None:
    """6.6.1 CredentialService should accept CredentialOfferMessage (only IDs)"""
    message = cs.suite.offer_message(credentials=[{"id": "urn:uuid:1-offered"}, {"id": "urn:uuid:2-offered"}])
    assert_2xx(cs.post("/offers", message, f"Bearer {cs.suite.issuer_token()}"))


# Refused messages --------------------------------------------------------------------------------


def test_cs_06_05_01_credential_message_invalid_body(cs: CredentialServiceUnderTest) -> None:
    """6.5.1 CredentialService rejects a CredentialMessage with an invalid message body"""
    message = cs.suite.credential_message()
    del message["holderPid"]
    before = held_ids(cs)
    assert_4xx(cs.post("/credentials", message, f"Bearer {cs.suite.issuer_token()}"), "holderPid")
    assert held_ids(cs) == before


def test_cs_06_06_01_credential_offer_message_invalid_body(cs: CredentialServiceUnderTest) -> None:
    """6.6.1 CredentialService rejects a CredentialOfferMessage with an invalid message body"""
    message = cs.suite.offer_message(issuer=None)
    assert_4xx(cs.post("/offers", message, f"Bearer {cs.suite.issuer_token()}"), "as its issuer")


def test_cs_06_05_01_credential_message_invalid_status(cs: CredentialServiceUnderTest) -> None:
    """6.5.1 CredentialService rejects an invalid status string"""
    message = cs.suite.credential_message(status="INVALID_STATUS")
    assert_4xx(cs.post("/credentials", message, f"Bearer {cs.suite.issuer_token()}"), "ISSUED or REJECTED")


# Refused tokens, for both messages ---------------------------------------------------------------


@BOTH
def test_no_auth_header(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects a message with no auth header"""
    assert_4xx(cs.post(api.path, api.message(cs.suite), None), "Bearer")


@BOTH
def test_missing_bearer_prefix(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects a message where the auth header has no bearer prefix"""
    assert_4xx(cs.post(api.path, api.message(cs.suite), cs.suite.issuer_token()), "Bearer")


@BOTH
def test_token_signed_with_wrong_key(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - wrong signing key"""
    suite = cs.suite
    now = int(time.time())
    claims = {
        "iss": suite.issuer_did,
        "sub": suite.issuer_did,
        "aud": suite.node_did,
        "jti": f"spoofed-{now}-{api.name}",
        "iat": now,
        "exp": now + 600,
    }
    spoofed = ECKey.generate_key("P-256")  # the issuer's key id, another key
    header = {"alg": "ES256", "typ": "JWT", "kid": f"{suite.issuer_did}#{suite.keys['issuer'].key_id}"}
    token = jws.serialize_compact(header, compact(claims), spoofed, algorithms=["ES256"])
    assert_4xx(cs.post(api.path, api.message(suite), f"Bearer {token}"), "is not signed by")


@BOTH
def test_token_expired(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - token expired"""
    token = cs.suite.issuer_token(exp=int(time.time()) - 3600)
    assert_4xx(cs.post(api.path, api.message(cs.suite), f"Bearer {token}"), "expired")


@BOTH
def test_iat_in_future(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - iat in the future"""
    token = cs.suite.issuer_token(iat=int(time.time()) + 3600)
    assert_4xx(cs.post(api.path, api.message(cs.suite), f"Bearer {token}"), "in the future")


@BOTH
def test_nbf_violated(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - nbf"""
    token = cs.suite.issuer_token(nbf=int(time.time()) + 3600)
    assert_4xx(cs.post(api.path, api.message(cs.suite), f"Bearer {token}"), "(nbf)")


@BOTH
def test_incorrect_audience(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - incorrect aud"""
    token = cs.suite.issuer_token(aud=cs.suite.third_party_did)
    assert_4xx(cs.post(api.path, api.message(cs.suite), f"Bearer {token}"), "is meant for")


@BOTH
def test_iss_not_equal_to_sub(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - iss != sub"""
    token = cs.suite.issuer_token(sub=cs.suite.third_party_did)
    assert_4xx(cs.post(api.path, api.message(cs.suite), f"Bearer {token}"), "iss and sub")


@BOTH
def test_jti_already_used(cs: CredentialServiceUnderTest, api: Api) -> None:
    """6.5.1 / 6.6.1 CredentialService rejects an invalid auth token - jti used before"""
    token, message = cs.suite.issuer_token(), api.message(cs.suite)
    assert_2xx(cs.post(api.path, message, f"Bearer {token}"))
    assert_4xx(cs.post(api.path, message, f"Bearer {token}"), "already used")
