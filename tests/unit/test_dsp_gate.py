"""DIDs, self-issued tokens and the protocol gate (connector/dsp/identity.py, connector/dsp/gate.py),
on a real SQLite database and real keys."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from eth_account import Account

from connector.dsp.gate import NotAPeer, ProtocolGate, ReplayedMessage, UnknownSender
from connector.dsp.id_tokens import TokenRejected, read_token, verify_token
from connector.dsp.identity import (
    DidDocument,
    NodeIdentity,
    did_document_url,
    did_for_url,
    participant_id,
    read_did_document,
)
from connector.models import Participant
from kernel.db import make_engine, transaction
from node import db

ALICE, BOB, MALLORY = Account.create(), Account.create(), Account.create()


def identity(account: object, url: str) -> NodeIdentity:
    key = bytes(account.key)  # type: ignore[attr-defined]
    return NodeIdentity(
        did=did_for_url(url),
        address=account.address,
        private_key=lambda: key,
        url=url,
        name=url,  # type: ignore[attr-defined]
    )


ALICE_ID = identity(ALICE, "http://alice.example:8001")
BOB_ID = identity(BOB, "http://bob.example:8002")
MALLORY_ID = identity(MALLORY, "http://mallory.example:8003")


def document(node: NodeIdentity) -> DidDocument:
    return read_did_document(node.did, node.document())


@pytest.mark.parametrize(
    ("url", "did", "where"),
    [
        ("http://127.0.0.1:8001", "did:web:127.0.0.1%3A8001", "http://127.0.0.1:8001/.well-known/did.json"),
        ("https://acme.example/", "did:web:acme.example", "https://acme.example/.well-known/did.json"),
        (
            "https://acme.example/nodes/a",
            "did:web:acme.example:nodes:a",
            "https://acme.example/nodes/a/did.json",
        ),
        ("http://localhost:9", "did:web:localhost%3A9", "http://localhost:9/.well-known/did.json"),
    ],
)
def test_did_web_of_a_url_and_where_its_document_lies(url: str, did: str, where: str) -> None:
    assert did_for_url(url) == did
    assert did_document_url(did) == where


def test_did_web_resolves_over_https_unless_loopback_or_turned_off() -> None:
    assert did_document_url("did:web:acme.example%3A8443") == "https://acme.example:8443/.well-known/did.json"
    assert (
        did_document_url("did:web:acme.example", use_https=False)
        == "http://acme.example/.well-known/did.json"
    )
    for bad in ("did:key:z6Mk", "did:web:", "did:web:a%2Fb", "did:web:host::x"):
        with pytest.raises(Exception, match="did:web"):
            did_document_url(bad)


def test_an_agora_document_binds_its_address_and_keeps_only_that_key() -> None:
    found = document(ALICE_ID)
    assert found.address == ALICE.address and found.participant == ALICE.address
    assert list(found.keys) == [ALICE_ID.kid] and found.agora is not None


def test_a_copied_key_and_binding_make_no_one_that_address() -> None:
    """A document listing Alice's key, address and binding under another DID (and a key of its
    own) is a plain connector with an id of its own: the binding signs Alice's DID only."""
    stolen = ALICE_ID.document()
    did = "did:web:mallory.example"
    stolen["id"] = did
    stolen["verificationMethod"][0]["id"] = f"{did}#org"
    stolen["verificationMethod"].append(
        {"id": f"{did}#key-2", "type": "JsonWebKey2020", "controller": did, "publicKeyJwk": _p256_public()}
    )
    found = read_did_document(did, stolen)
    assert found.address is None and found.participant == participant_id(did) != ALICE.address


def test_a_document_for_another_did_or_without_keys_is_refused() -> None:
    with pytest.raises(TokenRejected, match="not that DID's"):
        read_did_document("did:web:other.example", ALICE_ID.document())
    empty = {"id": "did:web:x.example", "verificationMethod": []}
    with pytest.raises(TokenRejected, match="no key"):
        read_did_document("did:web:x.example", empty)


def test_a_token_round_trip_and_each_refusal() -> None:
    key = document(ALICE_ID).keys[ALICE_ID.kid]
    token = ALICE_ID.token(BOB_ID.did, b"{}")
    claims = verify_token(read_token(f"Bearer {token}"), key, audience=BOB_ID.did, body=b"{}")
    assert claims["iss"] == claims["sub"] == ALICE_ID.did and claims["aud"] == BOB_ID.did
    with pytest.raises(TokenRejected, match="meant for"):
        verify_token(read_token(token), key, audience=MALLORY_ID.did, body=b"{}")
    with pytest.raises(TokenRejected, match="not the one the token was signed for"):
        verify_token(read_token(token), key, audience=BOB_ID.did, body=b'{"x":1}')
    other = document(MALLORY_ID).keys[MALLORY_ID.kid]
    with pytest.raises(TokenRejected, match="not signed by"):
        verify_token(read_token(token), other, audience=BOB_ID.did, body=b"{}")
    with pytest.raises(TokenRejected, match="expired"):
        verify_token(read_token(token), key, audience=BOB_ID.did, body=b"{}", now=time.time() + 3600)
    for header, reason in (
        (None, "Authorization header"),
        ("Bearer abc", "compact JWT"),
        ("Bearer " + "a." * 5000 + "b", "compact JWT"),
    ):
        with pytest.raises(TokenRejected, match=reason):
            read_token(header)


def test_a_token_whose_issuer_is_not_its_subject_or_kid_is_refused() -> None:
    from connector.dsp.id_tokens import sign

    now = int(time.time())
    claims = {
        "iss": ALICE_ID.did,
        "sub": BOB_ID.did,
        "aud": BOB_ID.did,
        "jti": "x" * 16,
        "iat": now,
        "exp": now + 60,
    }
    with pytest.raises(TokenRejected, match="iss and sub"):
        read_token(sign(claims, ALICE_ID._key, ALICE_ID.kid))
    claims["sub"] = ALICE_ID.did
    with pytest.raises(TokenRejected, match="kid"):
        read_token(sign(claims, ALICE_ID._key, f"{MALLORY_ID.did}#org"))


def _p256_public() -> dict[str, str]:
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256")
    return {k: v for k, v in key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}


# The gate ---------------------------------------------------------------------------------


class Resolver:
    """Stands for the outbound request of a DID document: counts them."""

    def __init__(self, *nodes: NodeIdentity) -> None:
        self.documents = {n.did: document(n) for n in nodes}
        self.asked: list[str] = []

    def __call__(self, did: str) -> DidDocument:
        self.asked.append(did)
        from kernel.errors import ServiceUnavailable

        if did not in self.documents:
            raise ServiceUnavailable(f"no document for {did}")
        return self.documents[did]


def _gate(tmp_path: Path, *, accept_registered: bool, resolver: Resolver | None = None) -> ProtocolGate:
    url = f"sqlite:///{tmp_path / 'gate.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    alice = document(ALICE_ID)
    with transaction(engine) as session:
        session.add(
            Participant(
                address=ALICE.address,
                name="Alice",
                endpoint=ALICE_ID.url,
                trusted=True,
                did=ALICE_ID.did,
                keys=alice.keys,
            )
        )
    on_chain = {MALLORY.address: ("Mallory Inc", MALLORY_ID.url)}
    return ProtocolGate(
        engine,
        identity=BOB_ID,
        resolve=resolver or Resolver(ALICE_ID, MALLORY_ID),
        registry_lookup=on_chain.get,
        accept_registered=accept_registered,
    )


def _header(sender: NodeIdentity, body: bytes = b"{}") -> str:
    return "Bearer " + sender.token(BOB_ID.did, body)


def test_the_gate_accepts_a_peer_once(tmp_path: Path) -> None:
    gate = _gate(tmp_path, accept_registered=False)
    header = _header(ALICE_ID)
    opened = gate.accept(header, b"{}", {})
    assert (opened.sender, opened.sender_trusted, opened.sender_endpoint) == (
        ALICE.address,
        True,
        ALICE_ID.url,
    )
    with pytest.raises(ReplayedMessage):
        gate.accept(header, b"{}", {})
    assert gate.accept(_header(ALICE_ID), b"{}", {}).sender == ALICE.address


def test_a_stranger_is_refused_before_any_request_for_its_document(tmp_path: Path) -> None:
    resolver = Resolver(ALICE_ID, MALLORY_ID)
    gate = _gate(tmp_path, accept_registered=False, resolver=resolver)
    with pytest.raises(NotAPeer, match="not a peer of this node"):
        gate.accept(_header(MALLORY_ID), b"{}", {})
    assert resolver.asked == []


def test_an_agora_token_must_bind_the_body(tmp_path: Path) -> None:
    gate = _gate(tmp_path, accept_registered=False)
    unbound = "Bearer " + ALICE_ID.token(BOB_ID.did)
    with pytest.raises(Exception, match="binds the request's body"):
        gate.accept(unbound, b"{}", {})


def test_an_agora_token_is_good_for_the_request_it_names_only(tmp_path: Path) -> None:
    """A token taken off the wire (its body is empty, as on every GET) cannot be spent on
    another route, another method, or where the request is not known."""
    gate = _gate(tmp_path, accept_registered=False)
    here = ("GET", "/dsp/negotiations/urn:uuid:a")

    def bound(request: tuple[str, str]) -> str:
        return "Bearer " + ALICE_ID.token(BOB_ID.did, b"", request=request)

    assert gate.accept(bound(here), b"", {}, here).sender == ALICE.address
    proxied = ("GET", "/gateway/dsp/negotiations/urn:uuid:a")  # a reverse proxy's prefix
    assert gate.accept(bound(proxied), b"", {}, here).sender == ALICE.address
    encoded = ("GET", "/dsp/catalog/datasets/data%20set")  # as sent; routed decoded
    assert (
        gate.accept(bound(encoded), b"", {}, ("GET", "/dsp/catalog/datasets/data set")).sender
        == ALICE.address
    )
    elsewhere = [
        ("GET", "/dsp/negotiations/urn:uuid:b"),
        ("GET", "/dsp/transfers/urn:uuid:a"),
        ("POST", "/dsp/negotiations/urn:uuid:a"),
        ("GET", "/dsp/negotiations/urn:uuid:a/x"),
    ]
    for other in elsewhere:
        with pytest.raises(TokenRejected, match="signed for another request"):
            gate.accept(bound(here), b"", {}, other)
    with pytest.raises(TokenRejected, match="signed for another request"):
        gate.accept(bound(here), b"", {})
    with pytest.raises(TokenRejected, match=r"names the request it is for \(agora:request\)"):
        gate.accept("Bearer " + ALICE_ID.token(BOB_ID.did, b""), b"", {}, here)


def test_registered_participants_when_the_operator_opts_in(tmp_path: Path) -> None:
    from sqlmodel import Session

    gate = _gate(tmp_path, accept_registered=True)
    opened = gate.accept(_header(MALLORY_ID), b"{}", {})
    assert (opened.sender, opened.sender_trusted, opened.sender_endpoint) == (
        MALLORY.address,
        False,
        MALLORY_ID.url,
    )
    with Session(gate.engine) as session:
        row = session.get(Participant, MALLORY.address)
    assert row is not None and row.name == "Mallory Inc" and not row.trusted and row.did == MALLORY_ID.did
    stranger = identity(Account.create(), "http://stranger.example")
    with pytest.raises(UnknownSender, match="DID cannot be read"):
        gate.accept(_header(stranger), b"{}", {})


def test_a_registry_record_on_another_host_is_refused(tmp_path: Path) -> None:
    gate = _gate(tmp_path, accept_registered=True)
    gate._registry_lookup = {MALLORY.address: ("Mallory Inc", "http://elsewhere.example:8003")}.get
    with pytest.raises(UnknownSender, match="another host"):
        gate.accept(_header(MALLORY_ID), b"{}", {})


def test_a_rotated_key_is_looked_up_again_at_most_once_a_minute(tmp_path: Path) -> None:
    resolver = Resolver(ALICE_ID, MALLORY_ID)
    gate = _gate(tmp_path, accept_registered=False, resolver=resolver)
    rotated = identity(Account.create(), ALICE_ID.url)  # same DID, a new key (and address)
    resolver.documents[ALICE_ID.did] = document(rotated)
    with pytest.raises(TokenRejected, match=r"lists no key|not signed by"):
        gate.accept("Bearer " + rotated.token(BOB_ID.did, b"{}"), b"{}", {})
    with pytest.raises(TokenRejected):
        gate.accept("Bearer " + rotated.token(BOB_ID.did, b"{}"), b"{}", {})
    assert resolver.asked.count(ALICE_ID.did) <= 1


def test_the_body_a_token_binds_is_the_raw_body() -> None:
    raw = json.dumps({"a": 1}).encode()
    key = document(ALICE_ID).keys[ALICE_ID.kid]
    claims = verify_token(read_token(ALICE_ID.token(BOB_ID.did, raw)), key, audience=BOB_ID.did, body=raw)
    assert len(claims["agora:sha256"]) == 64
