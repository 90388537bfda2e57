"""Issue -> hold -> present -> verify with real keys: the holder's Credential Service answers
a verifier's query, and the verifier checks what it gets (every refusal by its reason)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import SQLModel

import connector.dcp.models
import connector.models  # noqa: F401
import kernel.audit  # noqa: F401
from connector.dcp.credentials import CredentialRefused, Signer, issue_credential, parse_credential
from connector.dcp.presentation import CredentialService, credential_service_entry
from connector.dcp.status import encode_status_list
from connector.dcp.stores import HolderStore, TrustedIssuers
from connector.dcp.tokens import mint_access_token, type_scope
from connector.dcp.verifier import Verifier, credential_claims_context
from connector.dsp.id_tokens import TokenRejected
from connector.dsp.identity import DidDocument, NodeIdentity, read_did_document
from kernel.db import make_engine
from kernel.errors import NotFound
from kernel.outbound import OutboundClient

MEMBERSHIP, SENSITIVE = "MembershipCredential", "SensitiveDataCredential"
STATUS_URL = "https://issuer.example/status/1"


@dataclass
class Party:
    identity: NodeIdentity
    signer: Signer

    @property
    def did(self) -> str:
        return self.identity.did


def party(url: str, name: str) -> Party:
    key = secrets.token_bytes(32)
    from eth_account import Account

    from connector.dsp.identity import did_for_url

    did = did_for_url(url)
    identity = NodeIdentity(
        did=did, address=Account.from_key(key).address, private_key=lambda: key, url=url, name=name
    )
    return Party(identity, Signer.secp256k1(did, lambda: key))


def engine_at(path: Path) -> Engine:
    """A database with the tables the credential side uses."""
    engine = make_engine(f"sqlite:///{path}")
    tables = [
        SQLModel.metadata.tables[name]
        for name in ("seen_nonce", "held_credential", "trusted_issuer", "audit_log")
    ]
    SQLModel.metadata.create_all(engine, tables=tables)
    return engine


@dataclass
class World:
    issuer: Party
    holder: Party
    verifier: Party
    documents: dict[str, dict[str, Any]]
    service: CredentialService
    checker: Verifier
    verifier_trust: TrustedIssuers
    status_lists: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, did: str) -> DidDocument:
        if did not in self.documents:
            raise NotFound(f"no DID document for {did}")
        return read_did_document(did, self.documents[did])

    def holder_document(self) -> DidDocument:
        return self.resolve(self.holder.did)

    def issue(self, type_: str = MEMBERSHIP, *, by: Party | None = None, **kwargs: Any) -> str:
        kwargs.setdefault("subject", self.holder.did)
        kwargs.setdefault("claims", {"membership": "gold"})
        return issue_credential((by or self.issuer).signer, type_=type_, **kwargs)

    def hold(self, *jwts: str) -> None:
        for jwt in jwts:
            self.service.holder.add(parse_credential(jwt), actor="test", source="test")

    def query(self, scopes: list[str], granted: list[str], *, body: dict[str, Any] | None = None) -> Any:
        access = mint_access_token(self.holder.signer, self.verifier.did, granted)
        message = body or {
            "@context": ["https://w3id.org/dspace-dcp/v1.0/dcp.jsonld"],
            "type": "PresentationQueryMessage",
            "scope": scopes,
        }
        raw = json.dumps(message).encode()
        token = self.verifier.identity.token(self.holder.did, raw, token=access)
        return self.service.query(f"Bearer {token}", raw, message)

    def answer_with(
        self, *jwts: str, holder: Party | None = None, audience: str | None = None
    ) -> dict[str, Any]:
        """A response whose presentation (signed by ``holder``) holds exactly ``jwts``."""
        signer = (holder or self.holder).signer
        service = CredentialService(
            self.service.engine,
            signer=signer,
            resolve=self.resolve,
            holder=self.service.holder,
            trust=self.service.trust,
        )
        vp = service.presentation(audience or self.verifier.did, list(jwts))
        return {"type": "PresentationResponseMessage", "presentation": [vp]}


def counting(resolve: Callable[[str], DidDocument], asked: list[str]) -> Callable[[str], DidDocument]:
    """``resolve``, noting in ``asked`` every DID it is asked for."""

    def resolving(did: str) -> DidDocument:
        asked.append(did)
        return resolve(did)

    return resolving


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def build_world(tmp_path: Path) -> World:
    """An issuer, a holder with its Credential Service and a verifier trusting the issuer."""
    issuer = party("https://issuer.example", "issuer")
    holder = party("https://holder.example", "holder")
    verifier = party("https://verifier.example", "verifier")
    documents = {
        p.did: p.identity.document(services=[credential_service_entry(p.did, p.identity.url)])
        for p in (issuer, holder, verifier)
    }
    holder_engine, verifier_engine = engine_at(tmp_path / "holder.db"), engine_at(tmp_path / "verifier.db")
    trust = TrustedIssuers(verifier_engine)
    trust.add(issuer.did, actor="test")
    world = World(issuer, holder, verifier, documents, None, None, trust)  # type: ignore[arg-type]
    world.service = CredentialService(
        holder_engine,
        signer=holder.signer,
        resolve=world.resolve,
        holder=HolderStore(holder_engine),
        trust=TrustedIssuers(holder_engine),
    )
    world.checker = Verifier(
        identity=verifier.identity,
        outbound=OutboundClient(),
        resolve=world.resolve,
        trust=trust,
        fetch_status=lambda url: world.status_lists[url],
    )
    return world


def test_issue_present_verify_round_trip(world: World) -> None:
    world.hold(world.issue(), world.issue(SENSITIVE, claims={"level": 3}))
    answer = world.query([type_scope(MEMBERSHIP)], [type_scope(MEMBERSHIP), type_scope(SENSITIVE)])
    verified = world.checker.check(answer, world.holder_document(), [type_scope(MEMBERSHIP)])
    assert verified == {MEMBERSHIP: {"membership": "gold"}}
    context = credential_claims_context(verified)["credentials"]
    assert context["agora:credential.MembershipCredential.membership"] == "gold"
    assert context[MEMBERSHIP] == "active"


def test_credential_shape_is_vc11_jwt(world: World) -> None:
    credential = parse_credential(world.issue(days=2))
    _, claims = __import__("connector.dcp.credentials", fromlist=["read_jwt"]).read_jwt(credential.raw, "vc")
    assert {"iss", "sub", "jti", "nbf", "iat", "exp", "vc"} <= set(claims)
    vc = claims["vc"]
    assert vc["type"] == ["VerifiableCredential", MEMBERSHIP] and vc["issuer"] == world.issuer.did
    assert vc["credentialSubject"] == {"id": world.holder.did, "membership": "gold"}
    assert vc["issuanceDate"].endswith("Z") and vc["expirationDate"].endswith("Z")
    assert claims["exp"] - claims["iat"] == 2 * 86400


def test_scope_escalation_gets_only_what_was_granted(world: World) -> None:
    world.hold(world.issue(), world.issue(SENSITIVE))
    answer = world.query([type_scope(MEMBERSHIP), type_scope(SENSITIVE)], [type_scope(MEMBERSHIP)])
    verified = world.checker.check(answer, world.holder_document(), [type_scope(MEMBERSHIP)])
    assert set(verified) == {MEMBERSHIP}
    with pytest.raises(CredentialRefused, match="presented no SensitiveDataCredential"):
        world.checker.check(answer, world.holder_document(), [type_scope(SENSITIVE)])


def test_no_granted_scope_asked_is_refused(world: World) -> None:
    world.hold(world.issue())
    with pytest.raises(Exception, match="none of the scopes") as info:
        world.query([type_scope(SENSITIVE)], [type_scope(MEMBERSHIP)])
    assert getattr(info.value, "status", 0) == 403


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda w: w.issue(now=time.time() - 3 * 86400, days=1), "expired at"),
        (lambda w: w.issue(now=time.time() + 3600), "not valid yet"),
        (lambda w: w.issue(subject=w.verifier.did), "is about"),
        (lambda w: w.issue(by=w.verifier), "not an issuer this node trusts"),
    ],
    ids=["expired", "not-yet-valid", "wrong-subject", "untrusted-issuer"],
)
def test_verifier_refusals(world: World, make: Any, reason: str) -> None:
    answer = world.answer_with(make(world))
    with pytest.raises(CredentialRefused, match=reason) as info:
        world.checker.check(answer, world.holder_document(), [type_scope(MEMBERSHIP)])
    assert info.value.status == 403 and "\n" not in info.value.detail


def test_an_untrusted_issuers_document_is_never_asked_for(world: World) -> None:
    """A presented credential from an issuer this node does not trust is refused before a
    request leaves for that issuer's DID document (a slow host cannot hold the verifier)."""
    stranger = party("https://stranger.example", "stranger")
    world.documents[stranger.did] = stranger.identity.document()
    asked: list[str] = []
    world.checker.resolve = counting(world.checker.resolve, asked)
    answer = world.answer_with(world.issue(by=stranger))
    with pytest.raises(CredentialRefused, match="not an issuer this node trusts"):
        world.checker.check(answer, world.holder_document(), [type_scope(MEMBERSHIP)])
    assert stranger.did not in asked
    world.checker.check(world.answer_with(world.issue()), world.holder_document(), [type_scope(MEMBERSHIP)])
    assert world.issuer.did in asked


def test_issuer_trusted_for_another_type_only(world: World) -> None:
    world.verifier_trust.remove(world.issuer.did, actor="test")
    world.verifier_trust.add(world.issuer.did, SENSITIVE, actor="test")
    with pytest.raises(CredentialRefused, match="trusts for MembershipCredential"):
        world.checker.check(
            world.answer_with(world.issue()), world.holder_document(), [type_scope(MEMBERSHIP)]
        )


def test_revoked_through_a_status_list(world: World) -> None:
    entry = {
        "id": f"{STATUS_URL}#5",
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": "5",
        "statusListCredential": STATUS_URL,
    }
    status_list = {
        "issuer": world.issuer.did,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "credentialSubject": {"type": "BitstringStatusList", "statusPurpose": "revocation"},
    }
    scopes = [type_scope(MEMBERSHIP)]
    for revoked, outcome in (([4, 6], None), ([5], "is revoked")):
        status_list["credentialSubject"]["encodedList"] = encode_status_list(revoked)  # type: ignore[index]
        world.status_lists[STATUS_URL] = json.dumps(status_list).encode()
        answer = world.answer_with(world.issue(status=entry))
        if outcome is None:
            assert world.checker.check(answer, world.holder_document(), scopes) == {
                MEMBERSHIP: {"membership": "gold"}
            }
        else:
            with pytest.raises(CredentialRefused, match=outcome):
                world.checker.check(answer, world.holder_document(), scopes)


def test_an_unsigned_status_list_over_plain_http_is_refused(world: World) -> None:
    """Over plain HTTP anyone on the path could clear a bit: an unsigned list is read over
    HTTPS (or from a loopback host) only; the same list as the issuer's JWT is read anywhere."""
    url = "http://issuer.example/status/1"
    entry = {
        "type": "BitstringStatusListEntry",
        "statusPurpose": "revocation",
        "statusListIndex": "5",
        "statusListCredential": url,
    }
    status_list = {
        "issuer": world.issuer.did,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "credentialSubject": {
            "type": "BitstringStatusList",
            "statusPurpose": "revocation",
            "encodedList": encode_status_list([]),
        },
    }
    scopes = [type_scope(MEMBERSHIP)]
    world.status_lists[url] = json.dumps(status_list).encode()
    with pytest.raises(CredentialRefused, match="unsigned JSON over plain HTTP"):
        world.checker.check(world.answer_with(world.issue(status=entry)), world.holder_document(), scopes)
    world.status_lists[url] = world.issuer.signer.sign({"iss": world.issuer.did, "vc": status_list}).encode()
    answer = world.answer_with(world.issue(status=entry))
    assert world.checker.check(answer, world.holder_document(), scopes) == {
        MEMBERSHIP: {"membership": "gold"}
    }
    loopback = {**entry, "statusListCredential": "http://127.0.0.1:9/status/1"}
    world.status_lists[loopback["statusListCredential"]] = json.dumps(status_list).encode()
    answer = world.answer_with(world.issue(status=loopback))
    assert world.checker.check(answer, world.holder_document(), scopes) == {
        MEMBERSHIP: {"membership": "gold"}
    }


def test_empty_presentations_are_refused(world: World) -> None:
    scopes = [type_scope(MEMBERSHIP)]
    with pytest.raises(CredentialRefused, match="empty presentation"):
        world.checker.check(
            {"type": "PresentationResponseMessage", "presentation": []}, world.holder_document(), scopes
        )
    with pytest.raises(CredentialRefused, match="holds no credentials"):
        world.checker.check(world.answer_with(), world.holder_document(), scopes)


def test_presentation_of_another_signer_or_audience_is_refused(world: World) -> None:
    scopes = [type_scope(MEMBERSHIP)]
    stranger = party("https://holder.example", "impostor")  # the holder's DID, another key
    with pytest.raises(CredentialRefused, match="is not signed by"):
        world.checker.check(
            world.answer_with(world.issue(), holder=stranger), world.holder_document(), scopes
        )
    with pytest.raises(CredentialRefused, match="meant for"):
        world.checker.check(
            world.answer_with(world.issue(), audience=world.issuer.did), world.holder_document(), scopes
        )


def test_forged_credential_is_refused(world: World) -> None:
    forger = party("https://issuer.example", "forger")  # claims the issuer's DID
    with pytest.raises(CredentialRefused, match="is not signed by"):
        world.checker.check(
            world.answer_with(world.issue(by=forger)), world.holder_document(), [type_scope(MEMBERSHIP)]
        )


def test_missing_token_claim_is_refused_before_any_request(world: World) -> None:
    claims = {"iss": world.holder.did, "sub": world.holder.did, "aud": world.verifier.did}
    with pytest.raises(TokenRejected, match="no access token"):
        world.checker.verify(claims, world.holder_document(), [type_scope(MEMBERSHIP)])
