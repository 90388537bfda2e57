"""The parties of the DCP conformance suite's Credential Service cases, played on loopback.

Where the node under test is the holder (its Credential Service under ``/dcp``), the Eclipse
DCP TCK plays a **verifier** (``did:web:127.0.0.1%3A<port>:verifier``) that queries it, an
**issuer** that delivers and offers credentials to it, and a **third party**, all on the one
loopback address of :class:`~tests.conformance.dcp.holder.TckParties` (their DID documents,
keys and token shapes are those; :class:`CsSuite` adds the verifier). As the suite does it:

* the node is found by its DID: its document's ``CredentialService`` entry is the base the
  requests go to (``/presentations/query``, ``/credentials``, ``/offers``);
* the verifier's ID token is ES256, ``kid`` ``<verifier>#<uuid>``, ``iss`` = ``sub`` the
  verifier, ``aud`` the node, a fresh ``jti``, ``iat`` now, ``exp`` in 600 s, and the access
  token in ``token``; the issuer's the same without ``token`` (``createClaims``);
* the access token (``@AuthToken``) comes from the holder's Secure Token Service, asked as
  the suite asks an external one (``dataspacetck.sts.url`` = ``<node>/dcp/sts``, OAuth client
  credentials with ``dataspacetck.sts.client.id`` and ``.secret``): the node runs with
  ``AGORA_DCP_STS_CLIENT_ID`` and ``AGORA_DCP_STS_CLIENT_SECRET`` set;
* ``@IssueCredentials`` delivers a MembershipCredential and a SensitiveDataCredential about the
  node in one ``CredentialMessage`` (``format`` ``vc11-sl2021/jwt``, the suite's ``holderPid``);
* an answer is judged as ``verifyCredentials`` judges it: 2xx, a PresentationResponseMessage
  whose presentations are JWTs signed by a key of the node's DID document for the verifier
  alone (``aud``), each credential signed by its issuer, their types exactly the ones asked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from joserfc import jws
from joserfc.jwk import ECKey

from connector.dsp.identity import did_document_url
from tests import services
from tests.conformance.dcp.holder import (
    DCP_CONTEXT,
    MEMBERSHIP,
    SENSITIVE,
    KeyService,
    TckParties,
    compact,
    instant,
)

VC11_JWT = "vc11-sl2021/jwt"
VC_TYPE = "VerifiableCredential"
_ALGORITHMS = {"P-256": "ES256", "secp256k1": "ES256K"}


STS_CLIENT_ID = "dcp-tck"  # dataspacetck.sts.client.id
STS_CLIENT_SECRET = "tck-client-secret-of-24-chars"  # dataspacetck.sts.client.secret


class CsSuite(TckParties):
    """The suite's parties for a holder under test: its verifier beside the issuer and third party."""

    def __init__(self) -> None:
        super().__init__()
        self.keys["verifier"] = KeyService()
        self.verifier_did = self.did("verifier")
        self.holder_pid = str(uuid.uuid4())  # the suite's dataspacetck.credentials.correlation.id
        self.node_did = ""  # the holder under test (set by the fixture)

    def did(self, role: str) -> str:
        return f"did:web:127.0.0.1%3A{self.port}:{role}"

    def token(self, role: str, **over: Any) -> str:
        """A self-issued token of ``role`` for the node (``createIdToken``/``createClaims``);
        ``over`` replaces claims (``None`` removes one), ``signer`` names whose key signs."""
        signer = over.pop("signer", role)
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.did(role),
            "sub": self.did(role),
            "aud": self.node_did,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 600,
        }
        claims.update(over)
        return self.keys[signer].sign({k: v for k, v in claims.items() if v is not None})

    def verifier_token(self, access_token: str | None, **over: Any) -> str:
        return self.token("verifier", token=access_token, **over)

    def issuer_token(self, **over: Any) -> str:
        return self.token("issuer", **over)

    # Credentials and messages ---------------------------------------------------------------

    def credential_jwt(self, type_: str) -> str:
        """A credential of ``type_`` about the node, as the suite's ``@Credential`` makes it."""
        vc = self.credential(
            [VC_TYPE, type_],
            credentialSubject={"id": self.node_did, "foo": "bar"},
            expirationDate=instant(time.time() + 600),
        )
        return self.sign_credential(vc)

    def credential_message(self, **over: Any) -> dict[str, Any]:
        """A CredentialMessage delivering a MembershipCredential and a SensitiveDataCredential."""
        message: dict[str, Any] = {
            "@context": [DCP_CONTEXT],
            "type": "CredentialMessage",
            "issuerPid": str(uuid.uuid4()),
            "holderPid": self.holder_pid,
            "status": "ISSUED",
            "credentials": [
                {"credentialType": t, "format": VC11_JWT, "payload": self.credential_jwt(t)}
                for t in (MEMBERSHIP, SENSITIVE)
            ],
        }
        message.update(over)
        return message

    def offer_message(self, **over: Any) -> dict[str, Any]:
        """A CredentialOfferMessage from the issuer offering a MembershipCredential."""
        message: dict[str, Any] = {
            "@context": [DCP_CONTEXT],
            "type": "CredentialOfferMessage",
            "issuer": self.issuer_did,
            "credentials": [
                {
                    "id": str(uuid.uuid4()),
                    "type": "CredentialObject",
                    "credentialType": MEMBERSHIP,
                    "offerReason": "reissue",
                    "bindingMethods": ["did:web:"],
                    "profile": VC11_JWT,
                    "issuancePolicy": {},
                }
            ],
        }
        message.update(over)
        return message


def document(did: str) -> dict[str, Any]:
    """A DID document as the suite's DidClient reads it (over HTTP)."""
    response = httpx.get(did_document_url(did, use_https=False), timeout=10)
    response.raise_for_status()
    found = response.json()
    assert isinstance(found, dict)
    return found


def verify_jwt(token: str) -> dict[str, Any]:
    """The claims of ``token`` once the key its ``kid`` names (``<did>#<fragment>``, looked up
    in that DID's document) verifies it."""
    extracted = jws.extract_compact(token.encode())
    kid = str(extracted.protected.get("kid") or "")
    did, sep, fragment = kid.partition("#")
    assert sep and did and fragment, f"kid {kid!r} is not <did>#<key id>"
    methods = [m for m in document(did).get("verificationMethod", []) if m.get("id") in (kid, f"#{fragment}")]
    assert methods, f"{did}'s DID document lists no key {kid}"
    jwk = methods[0]["publicKeyJwk"]
    jws.deserialize_compact(token, ECKey.import_key(jwk), algorithms=[_ALGORITHMS[jwk["crv"]]])
    claims = json.loads(extracted.payload)
    assert isinstance(claims, dict)
    return claims


@dataclass
class CredentialServiceUnderTest:
    """The node as the holder, and the suite's parties around it."""

    node: services.LiveNode
    suite: CsSuite
    admin: str

    @property
    def endpoint(self) -> str:
        """The node's Credential Service, as its DID document names it."""
        entries = [s for s in document(self.suite.node_did)["service"] if s["type"] == "CredentialService"]
        assert entries, "the node's DID document names no CredentialService"
        return str(entries[0]["serviceEndpoint"]).rstrip("/")

    def post(self, path: str, message: Any, authorization: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if authorization is not None:
            headers["Authorization"] = authorization
        return httpx.post(self.endpoint + path, content=compact(message), headers=headers, timeout=60)

    def access_token(self, *scopes: str) -> str:
        """``@AuthToken``: read access for the suite's verifier, from the holder's Secure Token
        Service as the suite asks for it when ``dataspacetck.sts.url`` is set: a
        client-credentials form to ``<sts.url>/token``, the ``token`` claim of the
        ``access_token`` it answers."""
        response = httpx.post(
            f"{self.sts_url}/token",
            data={
                "grant_type": "client_credentials",
                "client_id": STS_CLIENT_ID,
                "client_secret": STS_CLIENT_SECRET,
                "audience": self.suite.verifier_did,
                "bearer_access_scope": " ".join(scopes),
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return str(verify_jwt(response.json()["access_token"])["token"])

    @property
    def sts_url(self) -> str:
        """``dataspacetck.sts.url``: the node's token service, without ``/token``."""
        return f"{self.node.url}/dcp/sts"

    def query(self, access_token: str, message: dict[str, Any]) -> httpx.Response:
        """``createPresentationRequest``: the message with the verifier's ID token carrying ``access_token``."""
        return self.post("/presentations/query", message, f"Bearer {self.suite.verifier_token(access_token)}")

    def issue_credentials(self) -> None:
        """``@IssueCredentials``: the issuer delivers both credentials; it must be taken."""
        response = self.post(
            "/credentials", self.suite.credential_message(), f"Bearer {self.suite.issuer_token()}"
        )
        assert 200 <= response.status_code < 300, f"seeding credentials failed: {response.text[:500]}"

    def verify_credentials(self, response: httpx.Response, *expected: str) -> None:
        """``verifyCredentials``: a valid answer presenting exactly the ``expected`` types."""
        assert 200 <= response.status_code < 300, (
            f"Request failed: {response.status_code} {response.text[:500]}"
        )
        message = response.json()
        context = message.get("@context")
        assert isinstance(context, list) and DCP_CONTEXT in context, message
        assert message.get("type") == "PresentationResponseMessage", message
        presentations = message.get("presentation")
        assert isinstance(presentations, list), message
        types: set[str] = set()
        for vp in presentations:
            claims = verify_jwt(vp)
            aud = claims.get("aud")
            assert (aud if isinstance(aud, list) else [aud]) == [self.suite.verifier_did], aud
            body = claims["vp"]
            for part in body if isinstance(body, list) else [body]:
                for credential in part["verifiableCredential"]:
                    types.update(verify_jwt(credential)["vc"]["type"])
        assert types == {VC_TYPE, *expected}, types


@contextmanager
def credential_service(home: Path) -> Iterator[CredentialServiceUnderTest]:
    """A node in ``home`` trusting the suite's issuer, and the suite's parties on loopback."""
    suite = CsSuite()
    node = services.start_node(
        home,
        "DCP Holder Org",
        AGORA_DCP_STS_CLIENT_ID=STS_CLIENT_ID,
        AGORA_DCP_STS_CLIENT_SECRET=STS_CLIENT_SECRET,
    )
    try:
        suite.node_did = httpx.get(f"{node.url}/.well-known/did.json", timeout=10).json()["id"]
        node.cli("credentials", "trust", "add", suite.issuer_did)
        yield CredentialServiceUnderTest(node, suite, node.token("admin"))
    finally:
        node.stop()
        suite.stop()
