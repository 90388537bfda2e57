"""The holder's Credential Service refuses what DCP says it must (tokens, queries, deliveries),
and status lists decode as the specifications encode them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from connector.dcp.credentials import CredentialRefused, parse_credential
from connector.dcp.presentation import DCP_CONTEXT, NotSupported
from connector.dcp.status import bit_is_set, decode_status_list, encode_status_list
from connector.dcp.tokens import mint_access_token, parse_scopes, redeem_access_token, type_scope
from connector.dsp.gate import ReplayedMessage
from connector.dsp.id_tokens import TokenRejected
from kernel.audit import AuditEntry
from kernel.errors import Forbidden, InvalidInput
from tests.unit.test_dcp_flow import MEMBERSHIP, SENSITIVE, World, build_world, counting, party

M = type_scope(MEMBERSHIP)


@pytest.fixture
def w(tmp_path: Path) -> World:
    world = build_world(tmp_path)
    world.hold(world.issue())
    return world


def query_body(**fields: Any) -> dict[str, Any]:
    return {"@context": [DCP_CONTEXT], "type": "PresentationQueryMessage", **fields}


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        (query_body(scope=[M], presentationDefinition={"id": "x"}), InvalidInput, "not both"),
        (query_body(scope=[]), InvalidInput, "non-empty 'scope'"),
        (query_body(), InvalidInput, "non-empty 'scope'"),
        (query_body(presentationDefinition={}), InvalidInput, "presentationDefinition is empty"),
        (query_body(presentationDefinition=None), InvalidInput, "presentationDefinition is empty"),
        (query_body(presentationDefinition={"id": "pd"}), NotSupported, "by scope"),
        ({"type": "PresentationQueryMessage", "scope": [M]}, InvalidInput, "@context"),
    ],
)
def test_query_shapes(w: World, body: dict[str, Any], error: type[Exception], reason: str) -> None:
    with pytest.raises(error, match=reason) as info:
        w.query([M], [M], body=body)
    assert getattr(info.value, "status", 0) == (501 if error is NotSupported else 400)


def _ask(w: World, *, authorization: str | None = None, access: Any = "mint", **claims: Any) -> Any:
    raw = json.dumps(query_body(scope=[M])).encode()
    if access == "mint":
        access = mint_access_token(w.holder.signer, w.verifier.did, [M])
    if access is not None:
        claims["token"] = access
    audience = claims.pop("aud", w.holder.did)
    token = w.verifier.identity.token(audience, raw, **claims)
    return w.service.query(authorization or f"Bearer {token}", raw, json.loads(raw))


def test_query_answers_with_one_presentation_for_the_verifier(w: World) -> None:
    answer = _ask(w)
    assert answer["type"] == "PresentationResponseMessage" and len(answer["presentation"]) == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"access": None}, "no access token"),
        ({"access": "faketoken"}, "not one this node issued"),
        ({"aud": "did:web:someone.example"}, "meant for"),
        ({"nbf": int(time.time()) + 1_000_000}, "not valid yet"),
        ({"exp": int(time.time()) - 1_000_000}, "expired"),
    ],
)
def test_query_token_refusals(w: World, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason) as info:
        _ask(w, **kwargs)
    assert info.value.status == 401


def test_query_needs_the_bearer_prefix(w: World) -> None:
    raw = json.dumps(query_body(scope=[M])).encode()
    token = w.verifier.identity.token(
        w.holder.did, raw, token=mint_access_token(w.holder.signer, w.verifier.did, [M])
    )
    with pytest.raises(TokenRejected, match="Bearer"):
        w.service.query(token, raw, json.loads(raw))


def test_access_token_of_another_verifier_or_reused(w: World) -> None:
    other = mint_access_token(w.holder.signer, w.issuer.did, [M])
    with pytest.raises(TokenRejected, match="issued to another party"):
        _ask(w, access=other)
    access = mint_access_token(w.holder.signer, w.verifier.did, [M])
    _ask(w, access=access)
    with pytest.raises(ReplayedMessage):
        _ask(w, access=access)


def test_access_token_signed_by_someone_else(w: World) -> None:
    impostor = party("https://holder.example", "impostor")
    with pytest.raises(TokenRejected, match="not signed by this node"):
        _ask(w, access=mint_access_token(impostor.signer, w.verifier.did, [M]))


def test_same_self_issued_token_twice(w: World) -> None:
    raw = json.dumps(query_body(scope=[M])).encode()
    access = mint_access_token(w.holder.signer, w.verifier.did, [M])
    token = w.verifier.identity.token(w.holder.did, raw, token=access)
    w.service.query(f"Bearer {token}", raw, json.loads(raw))
    with pytest.raises(ReplayedMessage):
        w.service.query(f"Bearer {token}", raw, json.loads(raw))


def test_expired_access_token(w: World) -> None:
    access = mint_access_token(w.holder.signer, w.verifier.did, [M], now=time.time() - 3600)
    with pytest.raises(TokenRejected, match="access token expired"):
        _ask(w, access=access)
    assert redeem_access_token  # the function the query used


def test_scope_grammar() -> None:
    scopes = parse_scopes(
        [
            "org.eclipse.dspace.dcp.vc.type:MembershipCredential:read",
            "org.eclipse.dspace.dcp.vc.type:Plain",
            "org.eclipse.dspace.dcp.vc.id:urn:uuid:1234:*",
            "org.eclipse.dspace.dcp.vc.type:WriteOnly:write",
            "other.alias:Thing:read",
        ]
    )
    assert {(s.kind, s.value) for s in scopes} == {
        ("type", "MembershipCredential"),
        ("type", "Plain"),
        ("id", "urn:uuid:1234"),
    }


# Storage and offers ------------------------------------------------------------------------


def deliver(w: World, *payloads: str, status: str = "ISSUED", sender: Any = None) -> Any:
    message = {
        "@context": [DCP_CONTEXT],
        "type": "CredentialMessage",
        "issuerPid": "issuance-1",
        "holderPid": "holder-1",
        "status": status,
        "credentials": [
            {"credentialType": parse_credential(p).type, "payload": p, "format": "vc11-sl2021/jwt"}
            for p in payloads
        ],
    }
    raw = json.dumps(message).encode()
    token = (sender or w.issuer).identity.token(w.holder.did, raw)
    return w.service.receive(f"Bearer {token}", raw, message)


def test_a_trusted_issuer_delivers(w: World) -> None:
    w.service.trust.add(w.issuer.did, MEMBERSHIP, actor="test")
    jwt = w.issue(claims={"membership": "silver"})
    assert deliver(w, jwt) == {"stored": [parse_credential(jwt).id]}
    assert parse_credential(jwt).id in {r.id for r in w.service.holder.all()}


def test_deliveries_refused(w: World) -> None:
    with pytest.raises(Forbidden, match="not an issuer this node trusts"):
        deliver(w, w.issue())
    w.service.trust.add(w.issuer.did, MEMBERSHIP, actor="test")
    with pytest.raises(InvalidInput, match="ISSUED or REJECTED"):
        deliver(w, w.issue(), status="INVALID_STATUS")
    with pytest.raises(Forbidden, match="not this node"):
        deliver(w, w.issue(subject=w.verifier.did))
    with pytest.raises(Forbidden, match="not trusted to issue SensitiveDataCredential"):
        deliver(w, w.issue(SENSITIVE))
    with pytest.raises(Forbidden, match="issued by"):
        deliver(w, w.issue(by=w.verifier))
    with pytest.raises(CredentialRefused, match="expired"):
        deliver(w, w.issue(now=time.time() - 3 * 86400, days=1))
    assert deliver(w, status="REJECTED") == {"stored": []}


def test_offers_are_recorded(w: World) -> None:
    w.service.trust.add(w.issuer.did, actor="test")
    offer = {
        "@context": [DCP_CONTEXT],
        "type": "CredentialOfferMessage",
        "issuer": w.issuer.did,
        "credentials": [{"id": "membership-offer"}, {"id": "other", "credentialType": SENSITIVE}],
    }
    raw = json.dumps(offer).encode()
    assert w.service.offer(f"Bearer {w.issuer.identity.token(w.holder.did, raw)}", raw, offer) == {
        "received": 2
    }
    with Session(w.service.engine) as session:
        entry = session.exec(select(AuditEntry).where(AuditEntry.action == "credential.offer")).one()
    assert entry.actor == w.issuer.did and len(entry.details["credentials"]) == 2
    bad = {**offer, "issuer": None}
    raw = json.dumps(bad).encode()
    with pytest.raises(InvalidInput, match="names its sender"):
        w.service.offer(f"Bearer {w.issuer.identity.token(w.holder.did, raw)}", raw, bad)


# Status lists ------------------------------------------------------------------------------


def test_status_list_bits_are_highest_first() -> None:
    bits = decode_status_list(encode_status_list([0, 9]))
    assert bits[0] == 0x80 and bits[1] == 0x40 and len(bits) == 131_072 // 8
    assert bit_is_set(bits, 0) and bit_is_set(bits, 9) and not bit_is_set(bits, 1)
    plain = decode_status_list(encode_status_list([3], multibase=False))  # StatusList2021: no "u"
    assert bit_is_set(plain, 3)
    with pytest.raises(CredentialRefused, match="outside the list"):
        bit_is_set(bits, 131_072)
    with pytest.raises(CredentialRefused, match="not base64url of GZIP"):
        decode_status_list("u" + "A" * 40)


def test_a_query_without_an_access_token_of_ours_fetches_no_document(w: World) -> None:
    """A stranger's query is judged on the access token it carries before its DID is resolved."""
    asked: list[str] = []
    w.service.resolve = counting(w.service.resolve, asked)
    for access, reason in [("faketoken", "not one this node issued"), (None, "no access token")]:
        with pytest.raises(TokenRejected, match=reason):
            _ask(w, access=access)
    other = mint_access_token(w.holder.signer, w.issuer.did, [M])
    with pytest.raises(TokenRejected, match="issued to another party"):
        _ask(w, access=other)
    assert asked == []
    assert _ask(w)["type"] == "PresentationResponseMessage"
    assert asked == [w.verifier.did]
