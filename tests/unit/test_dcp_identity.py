"""Self-issued DCP tokens: did:web, DID documents (and the Agora key binding), and each
refusal of a token with its reason. The gate that applies them is tested in test_dcp_gate."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from joserfc.jwk import ECKey

from connector.dsp.id_tokens import BODY_CLAIM, MAX_TOKEN_TTL, TokenRejected, read_token, sign, verify_token
from connector.dsp.identity import (
    DidDocument,
    NodeIdentity,
    agora_address,
    did_document_url,
    did_for_url,
    participant_id,
    read_did_document,
)
from kernel.errors import InvalidInput
from node.settings import Settings
from tests import dsp_peer

ALICE, BOB, MALLORY = Account.create(), Account.create(), Account.create()
ALICE_URL, BOB_URL, MALLORY_URL = (f"http://127.0.0.1:{p}" for p in (8001, 8002, 8003))
BODY = b'{"@type": "CatalogRequestMessage", "filter": []}'


def node(url: str, account: Any, name: str = "org") -> NodeIdentity:
    return dsp_peer.identity(url, bytes(account.key), name)


def document(identity: NodeIdentity) -> DidDocument:
    return read_did_document(identity.did, identity.document())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwt_of(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    head, body = (b64(json.dumps(part).encode()) for part in (header, claims))
    return f"{head}.{body}.{b64(signature)}"


# did:web ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "did", "document_url"),
    [
        ("http://127.0.0.1:8001", "did:web:127.0.0.1%3A8001", "http://127.0.0.1:8001/.well-known/did.json"),
        ("http://localhost:8001/", "did:web:localhost%3A8001", "http://localhost:8001/.well-known/did.json"),
        ("http://[::1]:8001", "did:web:[%3A%3A1]%3A8001", "http://[::1]:8001/.well-known/did.json"),
        ("https://acme.example", "did:web:acme.example", "https://acme.example/.well-known/did.json"),
        ("http://acme.example:8443", "did:web:acme.example%3A8443", "https://acme.example:8443/.well-known/did.json"),
        ("https://acme.example/agora/node", "did:web:acme.example:agora:node", "https://acme.example/agora/node/did.json"),
    ],
)  # fmt: skip
def test_did_web_and_its_document_url(url: str, did: str, document_url: str) -> None:
    assert did_for_url(url) == did
    assert did_document_url(did) == document_url  # the scheme is not part of the DID


def test_https_off_resolves_every_host_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    did = did_for_url("https://acme.example:8443/agora")
    assert did_document_url(did, use_https=False) == "http://acme.example:8443/agora/did.json"
    monkeypatch.setenv("AGORA_DID_WEB_USE_HTTPS", "false")
    assert Settings(home=Path("/nonexistent")).did_web_use_https is False
    monkeypatch.delenv("AGORA_DID_WEB_USE_HTTPS")
    assert Settings(home=Path("/nonexistent")).did_web_use_https is True


@pytest.mark.parametrize(
    "did",
    ["did:key:z6Mk", "did:web:", "did:web:acme.example::x", "did:web:evil.example%2Fx", "did:web:a%40b", "x" * 600],
)  # fmt: skip
def test_invalid_did_web_is_refused(did: str) -> None:
    with pytest.raises(InvalidInput):
        did_document_url(did)


def test_url_without_host_has_no_did() -> None:
    with pytest.raises(InvalidInput, match="no host"):
        did_for_url("not a url")


# DID documents -------------------------------------------------------------------------------


def test_an_agora_document_binds_the_key_to_its_address() -> None:
    alice = node(ALICE_URL, ALICE, "Alice")
    raw = alice.document(chain_id=1337)
    method = raw["verificationMethod"][0]
    assert method["id"] == alice.kid == f"{alice.did}#org"
    assert method["publicKeyJwk"]["crv"] == "secp256k1" and "d" not in method["publicKeyJwk"]
    assert method["blockchainAccountId"] == f"eip155:1337:{ALICE.address}"
    agora = next(s for s in raw["service"] if s["type"] == "AgoraNode")
    assert (agora["serviceEndpoint"], agora["name"]) == (ALICE_URL, "Alice") and agora[
        "binding"
    ] == alice.binding()
    doc = read_did_document(alice.did, raw)
    assert (doc.address, doc.participant, list(doc.keys)) == (ALICE.address, ALICE.address, [alice.kid])
    assert doc.agora is not None and doc.service("DataService") == f"{ALICE_URL}/.well-known/dspace-version"
    assert participant_id(alice.did, raw) == agora_address(raw) == ALICE.address


def test_a_document_for_another_did_is_refused() -> None:
    with pytest.raises(TokenRejected, match="is not that DID's"):
        read_did_document(did_for_url(MALLORY_URL), node(ALICE_URL, ALICE).document())
    with pytest.raises(TokenRejected, match="is not that DID's"):
        read_did_document("did:web:x", ["not", "a", "document"])


def test_a_document_without_a_usable_key_is_refused() -> None:
    did = did_for_url(MALLORY_URL)
    rsa = {"id": f"{did}#rsa", "publicKeyJwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}
    foreign = {"id": "did:web:other#k", "publicKeyJwk": ECKey.generate_key("P-256").as_dict(private=False)}
    for methods in ([], [rsa], [foreign], ["text"]):
        with pytest.raises(TokenRejected, match="lists no key this node can check"):
            read_did_document(did, {"id": did, "verificationMethod": methods})


def test_a_plain_dsp_document_keeps_its_keys_and_gets_a_derived_participant_id() -> None:
    did = did_for_url(MALLORY_URL)
    key = ECKey.generate_key("P-256").as_dict(private=False)
    wrong = node(MALLORY_URL, MALLORY).document()["verificationMethod"][0]
    wrong = dict(wrong, id="#k2", blockchainAccountId=f"eip155:1:{ALICE.address}")  # not its key's address
    doc = read_did_document(
        did, {"id": did, "verificationMethod": [{"id": "#k1", "publicKeyJwk": key}, wrong]}
    )
    assert set(doc.keys) == {f"{did}#k1", f"{did}#k2"} and doc.address is None and doc.agora is None
    assert doc.participant == participant_id(did) != ALICE.address


def test_a_copied_key_and_binding_do_not_lend_an_address() -> None:
    """Mallory lists Alice's secp256k1 key with Alice's address, and even Alice's AgoraNode
    service with its binding signature: that signature is over Alice's DID, so Mallory's
    document binds no address and its keys are a plain connector's, under Mallory's own id."""
    did = did_for_url(MALLORY_URL)
    alices = node(ALICE_URL, ALICE, "Alice").document()
    own = ECKey.generate_key("P-256")
    copied = dict(alices["verificationMethod"][0], id=f"{did}#alice")
    raw = {
        "id": did,
        "verificationMethod": [copied, {"id": f"{did}#mine", "publicKeyJwk": own.as_dict(private=False)}],
        "service": [dict(alices["service"][0], serviceEndpoint=MALLORY_URL)],
    }
    doc = read_did_document(did, raw)
    assert doc.address is None and agora_address(raw) is None and doc.agora is None
    assert doc.participant == participant_id(did) != ALICE.address
    unbound = dict(raw, service=[{"type": "AgoraNode", "serviceEndpoint": MALLORY_URL}])
    assert read_did_document(did, unbound).address is None  # no binding at all: no address either


def test_an_agora_document_keeps_only_its_bound_key() -> None:
    """Beside its bound secp256k1 key an Agora document may list a P-256 key: that key does
    not sign as the address (the address is the bound key's alone)."""
    mallory = node(MALLORY_URL, MALLORY)
    raw = mallory.document()
    extra = {"id": f"{mallory.did}#p256", "publicKeyJwk": ECKey.generate_key("P-256").as_dict(private=False)}
    raw["verificationMethod"].append(extra)
    doc = read_did_document(mallory.did, raw)
    assert doc.address == MALLORY.address and list(doc.keys) == [mallory.kid]


# Tokens ----------------------------------------------------------------------------------------


def claims_for(did: str, audience: str, body: bytes | None = None, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": did,
        "sub": did,
        "aud": audience,
        "jti": "j" * 32,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    if body is not None:
        claims[BODY_CLAIM] = hashlib.sha256(body).hexdigest()
    return {k: v for k, v in (claims | over).items() if v is not None}


def check(token: str, identity: NodeIdentity, *, body: bytes | None = BODY) -> dict[str, Any]:
    key = document(identity).keys[identity.kid]
    return verify_token(read_token(f"Bearer {token}"), key, audience=did_for_url(BOB_URL), body=body)


def test_a_token_round_trip() -> None:
    alice = node(ALICE_URL, ALICE)
    claims = check(alice.token(did_for_url(BOB_URL), BODY), alice)
    assert (claims["iss"], claims["sub"], claims["aud"]) == (alice.did, alice.did, did_for_url(BOB_URL))
    assert claims["exp"] - claims["iat"] == 300 and claims[BODY_CLAIM] == hashlib.sha256(BODY).hexdigest()
    bare = read_token(alice.token(did_for_url(BOB_URL)))  # EDC sends the token without "Bearer"
    assert bare.did == alice.did and bare.kid == alice.kid


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "names its sender in the Authorization header"),
        ("  ", "names its sender in the Authorization header"),
        ("Bearer ", "does not hold a compact JWT"),
        ("Bearer abc.def", "does not hold a compact JWT"),
        ("Bearer " + "a." * 5000 + "b", "does not hold a compact JWT"),
        ("Bearer !!.??.##", "cannot be read"),
        ("Bearer " + jwt_of({"alg": "ES256K"}, {"iss": "x"}), "iss and sub are the sender's DID"),
    ],
)
def test_unreadable_tokens_are_refused(authorization: str | None, reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        read_token(authorization)


def test_iss_must_be_sub_and_kid_under_the_issuer() -> None:
    alice = node(ALICE_URL, ALICE)
    with pytest.raises(TokenRejected, match="iss and sub"):
        read_token(alice.token(did_for_url(BOB_URL), sub=did_for_url(MALLORY_URL)))
    key = ECKey.generate_key("secp256k1")
    claims = claims_for(alice.did, did_for_url(BOB_URL))
    with pytest.raises(TokenRejected, match="kid must name a key of its issuer's DID"):
        read_token(sign(claims, key, f"{did_for_url(MALLORY_URL)}#org"))
    assert read_token(sign(claims, key, "#org")).kid == alice.kid  # a relative kid is the issuer's


def test_a_token_signed_by_another_key_is_refused() -> None:
    alice, mallory = node(ALICE_URL, ALICE), node(MALLORY_URL, MALLORY)
    forged = sign(
        claims_for(alice.did, did_for_url(BOB_URL), BODY), ECKey.generate_key("secp256k1"), alice.kid
    )
    with pytest.raises(TokenRejected, match=f"not signed by {alice.kid}"):
        check(forged, alice)
    # a token Alice signed for Mallory, its audience rewritten to Bob, keeps a signature over other claims
    head, payload, signature = alice.token(mallory.did, BODY).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) | {
        "aud": did_for_url(BOB_URL)
    }
    with pytest.raises(TokenRejected, match=f"not signed by {alice.kid}"):
        check(f"{head}.{b64(json.dumps(claims).encode())}.{signature}", alice)


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_alg_none_and_hmac_are_refused(alg: str) -> None:
    alice = node(ALICE_URL, ALICE)
    header = {"alg": alg, "kid": alice.kid, "typ": "JWT"}
    claims = claims_for(alice.did, did_for_url(BOB_URL), BODY)
    unsigned = jwt_of(header, claims)
    if alg == "HS256":  # the classic confusion: the public key as an HMAC secret
        secret = json.dumps(document(alice).keys[alice.kid], sort_keys=True).encode()
        signing_input = unsigned.rsplit(".", 1)[0].encode()
        unsigned = jwt_of(header, claims, hmac.new(secret, signing_input, hashlib.sha256).digest())
    with pytest.raises(TokenRejected, match="not signed by"):
        check(unsigned, alice)


def test_a_key_of_another_type_is_refused() -> None:
    alice = node(ALICE_URL, ALICE)
    with pytest.raises(TokenRejected, match="keys of type RSA/None are not accepted"):
        verify_token(read_token(alice.token("x")), {"kty": "RSA"}, audience="x", body=None)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"aud": "did:web:elsewhere"}, "is meant for did:web:elsewhere, not for this node"),
        ({"aud": ["did:web:a", "did:web:b"]}, "is meant for"),
        ({"exp": None}, "has no expiry"),
        ({"exp": True}, "has no expiry"),
        ({"iat": -1000, "nbf": -1000, "exp": -700}, r"expired 70\d s ago"),
        ({"iat": 1000, "nbf": 1000, "exp": 1300}, r"issued (9\d\d|1000) s in the future"),
        ({"nbf": 1000}, r"not valid for another (9\d\d|1000) s \(nbf\)"),
        ({"iat": 0, "exp": MAX_TOKEN_TTL + 1}, f"lives {MAX_TOKEN_TTL + 1} s"),
        ({"iat": None, "nbf": None, "exp": 2 * MAX_TOKEN_TTL}, "expires in"),
        ({"jti": None}, "needs a jti"),
        ({"jti": "short"}, "needs a jti"),
        ({"jti": 12345678}, "needs a jti"),
        ({BODY_CLAIM: hashlib.sha256(b"{}").hexdigest()}, "body is not the one the token was signed for"),
    ],
)
def test_each_claim_is_checked(over: dict[str, Any], reason: str) -> None:
    alice, now = node(ALICE_URL, ALICE), int(time.time())
    shifted = {k: now + v if k in ("iat", "nbf", "exp") and isinstance(v, int) and v is not True else v
               for k, v in over.items()}  # fmt: skip
    token = sign(claims_for(alice.did, did_for_url(BOB_URL), BODY, **shifted), alice._key, alice.kid)
    with pytest.raises(TokenRejected, match=reason):
        check(token, alice)


def test_a_bound_token_needs_its_body() -> None:
    alice = node(ALICE_URL, ALICE)
    with pytest.raises(TokenRejected, match="body is not the one"):
        check(alice.token(did_for_url(BOB_URL), BODY), alice, body=None)
    audiences = [did_for_url(MALLORY_URL), did_for_url(BOB_URL)]
    listed = sign(claims_for(alice.did, "", BODY, aud=audiences), alice._key, alice.kid)
    assert check(listed, alice)["aud"] == audiences  # one of several audiences is enough
