"""The receiving side of the protocol: who may talk to this node, and replay defence.

:class:`ProtocolGate` reads the self-issued ID token of a request
(:mod:`connector.dsp.identity`), finds the sender by its DID, checks the token with the
sender's key and records its ``jti`` so the same token is never accepted twice.

Who may talk to this node is the operator's decision: a sender is accepted when it is a
**peer** (``trusted``: added with ``agora peers add``, the participants API or a manifest's
``peers:``), whose DID document was read when it was added. A DID this node does not know
is refused (:class:`NotAPeer`) before any request leaves for its document, unless the
operator opts in with ``AGORA_ACCEPT_REGISTERED_PARTICIPANTS``: then an Agora node's DID is
resolved and accepted when its key's address is a participant in the on-chain registry
whose endpoint is on the DID's host. It is kept as an untrusted participant row so pages
can name it, and may act as a consumer of this node's offerings: ask for the catalog,
negotiate, transfer and submit jobs under its own agreements, with the policies deciding as
for anyone. This node never starts anything with it: it is not crawled, its offerings are
not listed, and it cannot be the provider of a negotiation this node starts. Its name is
its own claim, so it is not passed on to ``participantName`` constraints.

A peer's keys are refreshed from its DID document when a token names a key the stored
document did not list (at most once a minute per peer), so a peer can rotate its key.

With **data space membership** on (``AGORA_DCP_SCOPES``, :mod:`connector.dcp.membership`)
every caller but this node itself and a conformance suite's test connector presents the
credentials the scopes name: its presentation is fetched from its Credential Service and
verified before the request is served, and the verified claims travel with the request
(:attr:`Opened.credentials`). A caller that is not a peer is then admitted on its
presentation: its token's form, algorithm, audience, times and ``jti`` are checked first
(a token seen before is refused there), only then is its ``did:web`` resolved (through the
node's outbound client) and its signature checked. It is kept as an untrusted participant
at the origin of its DID (where callbacks to it may go), like a registered participant.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from connector.dsp.id_tokens import (
    BODY_CLAIM,
    MAX_SKEW,
    REQUEST_CLAIM,
    TokenRejected,
    Unverified,
    check_claims,
    read_token,
    verify_token,
)
from connector.dsp.identity import DidDocument, NodeIdentity, did_document_url, participant_id
from connector.models import Participant, SeenNonce
from kernel.addresses import origin
from kernel.db import transaction, utcnow
from kernel.errors import AgoraError

if TYPE_CHECKING:
    from connector.dcp.membership import Membership

RegistryLookup = Callable[[str], tuple[str, str] | None]  # address -> (name, endpoint) on chain
Resolver = Callable[[str], DidDocument]  # DID -> its checked document (outbound request)
ADD_PEERS = "the operator adds peers with agora peers add"
REFRESH_SECONDS = 60.0


class UnknownSender(TokenRejected):
    type_slug = "unknown-sender"
    status = 403
    title = "Unknown participant"


class NotAPeer(UnknownSender):
    type_slug = "not-a-peer"
    title = "Not a peer of this node"


class ReplayedMessage(TokenRejected):
    type_slug = "replayed-message"
    status = 409
    title = "Replayed protocol message"


@dataclass(frozen=True)
class TestPeer:
    """A conformance suite's connector: it sends one fixed ``Authorization`` value, not a
    DCP token (the Eclipse DSP TCK does), so no replay defence applies to it. Configured
    only for conformance runs (``AGORA_DSP_TEST_*``)."""

    participant: str  # its participant id as it names itself (TCK_PARTICIPANT)
    token: str
    callback: str  # its DSP base: callbacks go there
    address: str  # the id it has in this node's records


@dataclass(frozen=True)
class Opened:
    """A request whose sender's token holds: who sent it and what it says."""

    sender: str  # the participant id (see connector.dsp.identity.participant_id)
    body: dict[str, Any]
    sender_did: str = ""
    sender_name: str = ""
    sender_endpoint: str = ""  # the endpoint of the sender's verified identity
    sender_trusted: bool = False  # a peer the operator added (not only registered on chain)
    sender_kind: str = "agora"  # agora | dsp
    token_id: str = ""
    claims: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, dict[str, Any]] = field(default_factory=dict)  # verified membership


class ProtocolGate:
    def __init__(
        self,
        engine: Engine,
        *,
        identity: NodeIdentity,
        resolve: Resolver,
        registry_lookup: RegistryLookup | None = None,
        accept_registered: bool = False,
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.address = identity.address
        self._resolve = resolve
        self._registry_lookup = registry_lookup
        self.accept_registered = accept_registered
        self._accepted = 0
        self._refreshed: dict[str, float] = {}
        self._lock = threading.Lock()
        self.test_peer: TestPeer | None = None
        self.membership: Membership | None = None  # AGORA_DCP_SCOPES: what every caller presents

    def accept(
        self,
        authorization: str | None,
        raw: bytes,
        body: dict[str, Any],
        request: tuple[str, str] | None = None,
    ) -> Opened:
        """The verified request, or a :class:`TokenRejected` subclass with the reason.
        ``request`` is the method and path as received: an Agora node's token must name them
        (:data:`REQUEST_CLAIM`) as well as the body; without it only the body is bound."""
        test = self.test_peer
        if (
            test is not None
            and authorization is not None
            and secrets.compare_digest(authorization.encode(), test.token.encode())
        ):
            return Opened(
                sender=test.address,
                body=body,
                sender_did=test.participant,
                sender_name=test.participant,
                sender_endpoint=test.callback,
                sender_trusted=True,
                sender_kind="dsp",
            )
        unverified = read_token(authorization)
        membership = self.membership
        if membership is not None and not self._is_peer(unverified.did):
            return self._admit_member(membership, unverified, raw, body, request)
        row = self._participant(unverified.did)
        key = (row.keys or {}).get(unverified.kid)
        if key is None and self._may_refresh(unverified.did):
            row = self._refresh(row)
            key = (row.keys or {}).get(unverified.kid)
        if key is None:
            raise TokenRejected(f"{unverified.did[:160]}'s DID document lists no key {unverified.kid[:200]}")
        claims = verify_token(unverified, key, audience=self.identity.did, body=raw, request=request)
        if row.kind == "agora":
            _require_binding(claims, request)
        self._remember(row.address, str(claims["jti"]))
        credentials: dict[str, dict[str, Any]] = {}
        if membership is not None and not row.is_self:
            credentials = membership.verify(claims, membership.document(unverified.did))
        trusted = row.trusted or row.is_self
        return Opened(
            sender=row.address,
            body=body,
            sender_did=unverified.did,
            sender_name=row.name,
            sender_endpoint=row.endpoint,
            sender_trusted=trusted,
            sender_kind=row.kind,
            token_id=str(claims["jti"]),
            claims=claims,
            credentials=credentials,
        )

    def _is_peer(self, did: str) -> bool:
        with Session(self.engine) as session:
            row = session.exec(select(Participant).where(Participant.did == did)).first()
        return row is not None and (row.trusted or row.is_self)

    def _admit_member(
        self,
        membership: Membership,
        unverified: Unverified,
        raw: bytes,
        body: dict[str, Any],
        request: tuple[str, str] | None,
    ) -> Opened:
        """A caller that is not a peer, admitted on its membership presentation. Its token's
        form, audience, times and ``jti`` are checked (and the ``jti`` looked up) before its
        DID document is fetched; then the signature, then the presentation."""
        did, nonce_owner = unverified.did, participant_id(unverified.did)
        check_claims(unverified, audience=self.identity.did, body=raw, request=request)
        jti = str(unverified.claims["jti"])
        if self._seen(nonce_owner, jti):
            raise ReplayedMessage(f"token {jti[:128]} from {did[:160]} was already received")
        document = membership.document(did)
        key = document.keys.get(unverified.kid)
        if key is None:
            raise TokenRejected(f"{did[:160]}'s DID document lists no key {unverified.kid[:200]}")
        claims = verify_token(unverified, key, audience=self.identity.did, body=raw, request=request)
        kind = "agora" if document.address else "dsp"
        if kind == "agora":
            _require_binding(claims, request)
        self._remember(nonce_owner, jti)
        credentials = membership.verify(claims, document)
        row = self._member_row(did, document, kind, use_https=membership.use_https)
        return Opened(
            sender=row.address,
            body=body,
            sender_did=did,
            sender_name=row.name,
            sender_endpoint=row.endpoint,
            sender_trusted=False,
            sender_kind=kind,
            token_id=jti,
            claims=claims,
            credentials=credentials,
        )

    def _member_row(self, did: str, document: DidDocument, kind: str, *, use_https: bool) -> Participant:
        """The untrusted participant row of an admitted member (kept so its agreements and
        callbacks have a verified endpoint: the origin of its did:web)."""
        from urllib.parse import urlsplit

        where = urlsplit(did_document_url(did, use_https=use_https))
        url = f"{where.scheme}://{where.netloc}"
        address = document.participant
        with transaction(self.engine) as session:
            row = session.get(Participant, address)
            if row is None:
                row = Participant(address=address, name=did[:200], endpoint=url, trusted=False)
                session.add(row)
            elif row.trusted or row.is_self or (row.did not in (None, did)):
                raise UnknownSender(f"{did[:160]} claims the address of another participant")
            row.did, row.keys, row.kind, row.updated_at = did, document.keys, kind, utcnow()
            if _origin_of(row.endpoint) != _origin_of(url):
                row.endpoint = url  # a registry record's endpoint on the DID's origin is kept
            session.flush()
            session.expunge(row)
        return row

    def _seen(self, sender: str, jti: str) -> bool:
        with Session(self.engine) as session:
            found = session.exec(
                select(SeenNonce.id).where(SeenNonce.sender == sender, SeenNonce.nonce == jti)
            ).first()
        return found is not None

    def _participant(self, did: str) -> Participant:
        with Session(self.engine) as session:
            row = session.exec(select(Participant).where(Participant.did == did)).first()
        if row is not None and (row.trusted or row.is_self or self.accept_registered):
            return row
        if not self.accept_registered:
            raise NotAPeer(f"{did[:160]} is not a peer of this node; {ADD_PEERS}")
        return self._registered(did)

    def _registered(self, did: str) -> Participant:
        """An Agora node known from the on-chain registry (the operator opted in)."""
        try:
            document = self._resolve(did)
        except AgoraError as exc:
            raise UnknownSender(
                f"{did[:160]} is not a peer and its DID cannot be read: {exc.detail}"
            ) from None
        on_chain = (
            self._registry_lookup(document.address) if self._registry_lookup and document.address else None
        )
        if on_chain is None:
            raise UnknownSender(
                f"{did[:160]} is neither a peer of this node nor a participant in the registry; {ADD_PEERS}"
            )
        name, endpoint = on_chain
        endpoint = endpoint.rstrip("/")
        agora_url = str((document.agora or {}).get("serviceEndpoint") or "")
        try:
            same = origin(endpoint) == origin(agora_url) and origin(endpoint)[1] == _did_host(did)
        except ValueError:
            same = False
        if not same:
            raise UnknownSender(f"{did[:160]}'s registry record names another host ({endpoint[:200]})")
        assert document.address is not None
        with transaction(self.engine) as session:
            row = session.get(Participant, document.address)
            if row is None:
                row = Participant(address=document.address, name=name, endpoint=endpoint, trusted=False)
                session.add(row)
            elif row.trusted or row.is_self:
                raise UnknownSender(f"{did[:160]} claims the address of another participant")
            row.name, row.endpoint, row.did, row.keys = name, endpoint, did, document.keys
            row.kind, row.updated_at = "agora", utcnow()
            session.flush()
            session.expunge(row)
        return row

    def _may_refresh(self, did: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._refreshed.get(did, -REFRESH_SECONDS) < REFRESH_SECONDS:
                return False
            self._refreshed[did] = now
            return True

    def _refresh(self, row: Participant) -> Participant:
        """The peer's keys as its DID document lists them now."""
        try:
            document = self._resolve(str(row.did))
        except AgoraError:
            return row
        if document.participant.lower() != row.address.lower():
            return row  # a document that now names another participant is not followed
        with transaction(self.engine) as session:
            fresh = session.get(Participant, row.address)
            if fresh is None:
                return row
            fresh.keys, fresh.updated_at = document.keys, utcnow()
            session.flush()
            session.expunge(fresh)
        return fresh

    def _remember(self, sender: str, jti: str) -> None:
        try:
            with transaction(self.engine) as session:
                session.add(SeenNonce(sender=sender, nonce=jti))
        except IntegrityError:
            raise ReplayedMessage(f"token {jti[:128]} from {sender} was already received") from None
        self._accepted += 1
        if self._accepted % 1000 == 0:
            self.purge_nonces()

    def purge_nonces(self) -> int:
        """Forget token ids older than their longest life plus the clock skew (such tokens
        are refused as expired anyway)."""
        from connector.dsp.id_tokens import MAX_TOKEN_TTL

        cutoff = utcnow() - timedelta(seconds=MAX_TOKEN_TTL + 2 * MAX_SKEW)
        with transaction(self.engine) as session:
            result = session.execute(delete(SeenNonce).where(col(SeenNonce.seen_at) < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        return origin(url)
    except ValueError:
        return None


def _did_host(did: str) -> str:
    from urllib.parse import unquote, urlsplit

    authority = unquote(did.removeprefix("did:web:").split(":", 1)[0])
    return (urlsplit(f"//{authority}").hostname or "").lower()


def describe(opened: Opened) -> dict[str, Any]:
    """Who sent a message, as the negotiation log records it."""
    return {"participant": opened.sender, "did": opened.sender_did, "kind": opened.sender_kind}


def _require_binding(claims: dict[str, Any], request: tuple[str, str] | None) -> None:
    """An Agora node binds its token to the body and to the request (checked by
    :func:`~connector.dsp.id_tokens.check_claims`); a token of one that does not is refused."""
    if BODY_CLAIM not in claims:
        raise TokenRejected(
            "an Agora node's token binds the request's body (agora:sha256); this one does not"
        )
    if request is not None and REQUEST_CLAIM not in claims:
        raise TokenRejected(
            "an Agora node's token names the request it is for (agora:request); this one does not"
        )
