"""Data space membership at the protocol gate (``AGORA_DCP_SCOPES``) on a real database: a
caller that is not a peer is admitted on its verified presentation and on nothing less; its
token's audience, times, algorithm and ``jti`` are checked before its DID document is asked
for; peers present too; the cost of repeats is bounded."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from connector.dcp.credentials import CredentialRefused
from connector.dcp.membership import Membership
from connector.dsp.gate import NotAPeer, ProtocolGate, ReplayedMessage
from connector.dsp.id_tokens import TokenRejected
from connector.dsp.identity import participant_id
from connector.models import Participant
from kernel.db import transaction
from tests.conformance.dcp.holder import MEMBERSHIP_SCOPE, KeyService
from tests.unit.test_dcp_gate import Resolver, make_gate, send
from tests.unit.test_dcp_identity import ALICE, ALICE_URL, BODY, jwt_of, node

CALLER = "did:web:member.example:connector"
MEMBER_CLAIMS = {"MembershipCredential": {"level": "gold"}}


class Checks:
    """Stands in for the verifier: records what it was asked, answers or refuses."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: str | None = None

    def verify(self, claims: dict[str, Any], document: Any, scopes: list[str]) -> dict[str, dict[str, Any]]:
        self.calls.append((document.did, str(claims.get("jti"))))
        assert scopes == [MEMBERSHIP_SCOPE]
        if self.refuse:
            raise CredentialRefused(self.refuse)
        return MEMBER_CLAIMS


def member_gate(tmp_path: Path, *, ttl: float = 60.0) -> tuple[ProtocolGate, Resolver, Checks, KeyService]:
    gate, resolver = make_gate(tmp_path)
    checks, key = Checks(), KeyService()
    gate.membership = Membership(
        [MEMBERSHIP_SCOPE],
        verifier=checks,  # type: ignore[arg-type]
        resolve=resolver,
        ttl=ttl,
        use_https=True,
    )
    resolver.documents[CALLER] = {
        "id": CALLER,
        "verificationMethod": [
            {
                "id": f"{CALLER}#{key.key_id}",
                "type": "JsonWebKey2020",
                "controller": CALLER,
                "publicKeyJwk": key.public_jwk(),
            }
        ],
        "service": [
            {"id": "cs", "type": "CredentialService", "serviceEndpoint": "https://member.example/cs"}
        ],
    }
    return gate, resolver, checks, key


def caller_token(gate: ProtocolGate, key: KeyService, **over: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": CALLER,
        "sub": CALLER,
        "aud": gate.identity.did,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 300,
        "token": "access",
    }
    claims.update(over)
    return key.sign(claims)


def test_a_member_that_is_not_a_peer_is_admitted_on_its_presentation(tmp_path: Path) -> None:
    gate, resolver, checks, key = member_gate(tmp_path)
    opened = gate.accept(f"Bearer {caller_token(gate, key)}", BODY, json.loads(BODY))
    assert opened.credentials == MEMBER_CLAIMS
    assert (opened.sender, opened.sender_did, opened.sender_kind) == (participant_id(CALLER), CALLER, "dsp")
    assert not opened.sender_trusted and opened.sender_endpoint == "https://member.example"
    assert resolver.calls == [CALLER] and len(checks.calls) == 1
    with Session(gate.engine) as session:
        row = session.get(Participant, participant_id(CALLER))
    assert row is not None and not row.trusted and row.did == CALLER


def test_a_caller_whose_presentation_fails_is_refused_and_not_recorded(tmp_path: Path) -> None:
    gate, _, checks, key = member_gate(tmp_path)
    checks.refuse = "credential X expired"
    with pytest.raises(CredentialRefused, match="expired"):
        gate.accept(f"Bearer {caller_token(gate, key)}", BODY, {})
    with Session(gate.engine) as session:
        assert session.get(Participant, participant_id(CALLER)) is None


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"aud": "did:web:someone.else"}, "is meant for"),
        ({"exp": int(time.time()) - 10_000}, "expired"),
        ({"nbf": int(time.time()) + 10_000}, "not valid yet"),
        ({"exp": int(time.time()) + 10 * 3600}, "at most"),
        ({"jti": "short"}, "jti"),
    ],
)
def test_a_bad_token_is_refused_before_any_document_is_fetched(
    tmp_path: Path, over: dict[str, Any], reason: str
) -> None:
    gate, resolver, checks, key = member_gate(tmp_path)
    with pytest.raises(TokenRejected, match=reason):
        gate.accept(f"Bearer {caller_token(gate, key, **over)}", BODY, {})
    assert resolver.calls == [] and checks.calls == []


def test_an_unsigned_or_hmac_token_is_refused_before_any_document_is_fetched(tmp_path: Path) -> None:
    gate, resolver, _, key = member_gate(tmp_path)
    claims = json.loads(jwt_payload(caller_token(gate, key)))
    for alg in ("none", "HS256"):
        forged = jwt_of({"alg": alg, "kid": f"{CALLER}#{key.key_id}", "typ": "JWT"}, claims)
        with pytest.raises(TokenRejected, match="not signed by"):
            gate.accept(f"Bearer {forged}", BODY, {})
    assert resolver.calls == []


def test_a_replayed_token_is_refused_before_its_document_is_fetched_again(tmp_path: Path) -> None:
    gate, resolver, checks, key = member_gate(tmp_path, ttl=0.0)  # nothing kept: each fetch shows
    token = caller_token(gate, key)
    gate.accept(f"Bearer {token}", BODY, {})
    with pytest.raises(ReplayedMessage):
        gate.accept(f"Bearer {token}", BODY, {})
    assert resolver.calls == [CALLER] and len(checks.calls) == 1


def test_a_token_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    gate, _, checks, _ = member_gate(tmp_path)
    other = KeyService()
    token = caller_token(gate, other)  # its kid names a key the caller's document does not list
    with pytest.raises(TokenRejected, match="lists no key"):
        gate.accept(f"Bearer {token}", BODY, {})
    assert checks.calls == []


def test_documents_are_kept_a_while_and_each_token_is_verified(tmp_path: Path) -> None:
    gate, resolver, checks, key = member_gate(tmp_path)
    for _ in range(3):
        gate.accept(f"Bearer {caller_token(gate, key)}", BODY, {})
    assert resolver.calls == [CALLER] and len(checks.calls) == 3


def test_a_verified_result_is_kept_per_did_and_token_id(tmp_path: Path) -> None:
    gate, _, checks, _ = member_gate(tmp_path)
    membership = gate.membership
    assert membership is not None
    document = membership.document(CALLER)
    claims = {"iss": CALLER, "jti": "a" * 16, "token": "access"}
    assert membership.verify(claims, document) == membership.verify(claims, document) == MEMBER_CLAIMS
    membership.verify({**claims, "jti": "b" * 16}, document)
    assert len(checks.calls) == 2


def test_a_peer_presents_too(tmp_path: Path) -> None:
    gate, resolver, checks, _ = member_gate(tmp_path)
    alice = node(ALICE_URL, ALICE, "Alice")
    resolver.documents[alice.did] = alice.document()
    opened = send(gate, alice)
    assert opened.sender_trusted and opened.credentials == MEMBER_CLAIMS
    checks.refuse = "no MembershipCredential"
    with pytest.raises(CredentialRefused, match="no MembershipCredential"):
        send(gate, alice)


def test_without_membership_a_non_peer_is_still_refused_unasked(tmp_path: Path) -> None:
    gate, resolver, _, key = member_gate(tmp_path)
    gate.membership = None
    with pytest.raises(NotAPeer):
        gate.accept(f"Bearer {caller_token(gate, key)}", BODY, {})
    assert resolver.calls == []


def test_a_member_cannot_take_a_peers_address(tmp_path: Path) -> None:
    gate, _, _, key = member_gate(tmp_path)
    with transaction(gate.engine) as session:  # another DID's row, untrusted, at the same id
        session.add(
            Participant(
                address=participant_id(CALLER),
                name="Other",
                endpoint="https://other.example",
                did="did:web:other.example",
                kind="dsp",
            )
        )
    with pytest.raises(TokenRejected, match="address of another participant"):
        gate.accept(f"Bearer {caller_token(gate, key)}", BODY, {})


def jwt_payload(token: str) -> bytes:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
