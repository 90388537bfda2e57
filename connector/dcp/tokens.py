"""Tokens of the credential APIs: the callers' self-issued ID tokens, and the access tokens
this node hands out as a holder.

A request to this node's Credential Service (a verifier's query, an issuer's delivery or
offer) carries the caller's self-issued ID token as ``Authorization: Bearer <jwt>``. Unlike
on the DSP routes the caller need not be a peer: its DID document is resolved (the
resolver the node is given; its outbound rules apply) once the token's audience and times
hold, the token checked against it (:func:`connector.dsp.id_tokens.verify_token`, plus
``nbf``), and its ``jti`` kept so the token is never accepted twice.

An **access token** is what a holder gives a verifier so the verifier may read its
credentials: a JWT this node signs for itself (``iss`` = ``aud`` = its DID), bound to the
verifier (``sub``), with the ``scope`` it grants (space separated, e.g.
``org.eclipse.dspace.dcp.vc.type:MembershipCredential:read``), minutes of life and a ``jti``
that is accepted once. The holder puts it into the ``token`` claim of the self-issued token
it sends the verifier; the verifier hands it back unread in its query.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from connector.dcp.credentials import CredentialRefused, Signer, read_jwt
from connector.dsp.gate import ReplayedMessage
from connector.dsp.id_tokens import (
    MAX_SKEW,
    TokenRejected,
    Unverified,
    check_claims,
    read_token,
    verify_token,
)
from connector.dsp.identity import DidDocument, participant_id
from connector.models import SeenNonce
from kernel.db import transaction
from kernel.errors import AgoraError, InvalidInput

Resolver = Callable[[str], DidDocument]
ACCESS_TTL = 300
TYPE_ALIAS = "org.eclipse.dspace.dcp.vc.type"
ID_ALIAS = "org.eclipse.dspace.dcp.vc.id"
_OPERATIONS = ("read", "write", "*", "all")
MAX_SCOPES = 32


@dataclass(frozen=True)
class Caller:
    """A request's verified self-issued token and its sender's DID document."""

    did: str
    claims: dict[str, Any]
    document: DidDocument


def check_caller(
    engine: Engine,
    authorization: str | None,
    raw: bytes,
    *,
    audience: str,
    resolve: Resolver,
    now: float | None = None,
    admit: Callable[[Unverified], None] | None = None,
) -> Caller:
    """The caller of a credential API, its token checked, or :class:`TokenRejected`;
    the token's audience and times are checked, and ``admit`` judges the token as read (its
    DID, what it carries), before any request leaves for its document."""
    text = (authorization or "").strip()
    if text[:7].lower() != "bearer ":
        raise TokenRejected("the credential APIs take a self-issued token as 'Authorization: Bearer <jwt>'")
    unverified = read_token(text)
    check_claims(unverified, audience=audience, body=raw, now=now)  # before any fetch
    if admit is not None:
        admit(unverified)
    try:
        document = resolve(unverified.did)
    except TokenRejected:
        raise
    except AgoraError as exc:
        raise TokenRejected(
            f"the DID document of {unverified.did[:160]} cannot be read: {exc.detail}"
        ) from None
    key = document.keys.get(unverified.kid)
    if key is None:
        raise TokenRejected(f"{unverified.did[:160]}'s DID document lists no key {unverified.kid[:200]}")
    claims = verify_token(unverified, key, audience=audience, body=raw, now=now)
    at = time.time() if now is None else now
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int | float) or isinstance(nbf, bool) or nbf > at + MAX_SKEW):
        raise TokenRejected("the token is not valid yet (nbf)")
    remember(engine, participant_id(unverified.did), str(claims["jti"]))
    return Caller(unverified.did, claims, document)


def remember(engine: Engine, sender: str, nonce: str) -> None:
    """Keep a token's id; a second time is :class:`ReplayedMessage`."""
    try:
        with transaction(engine) as session:
            session.add(SeenNonce(sender=sender, nonce=nonce[:128]))
    except IntegrityError:
        raise ReplayedMessage(f"token {nonce[:128]} was already used") from None


# Scopes ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Scope:
    """One scope: credentials of a type, or one credential by id."""

    kind: str  # type | id
    value: str


def parse_scopes(scopes: Iterable[str]) -> set[Scope]:
    """The read scopes among ``scopes`` (``alias:discriminator[:operation]``); scopes of another
    alias or for writing only grant and ask for nothing here."""
    out: set[Scope] = set()
    for scope in scopes:
        alias, _, rest = scope.partition(":")
        head, _, operation = rest.rpartition(":")
        if operation in _OPERATIONS and head:
            rest = head
        else:
            operation = "read"
        if operation == "write" or not rest:
            continue
        if alias == TYPE_ALIAS:
            out.add(Scope("type", rest))
        elif alias == ID_ALIAS:
            out.add(Scope("id", rest))
    return out


def type_scope(credential_type: str) -> str:
    """The scope asking for credentials of one type."""
    return f"{TYPE_ALIAS}:{credential_type}:read"


def query_scopes(value: Any) -> list[str]:
    """A query's ``scope``: a non-empty array of short strings."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("a PresentationQueryMessage asks with a non-empty 'scope' array")
    if len(value) > MAX_SCOPES or not all(isinstance(s, str) and 0 < len(s) <= 300 for s in value):
        raise InvalidInput(f"'scope' holds at most {MAX_SCOPES} strings of 1 to 300 characters")
    return list(value)


# Access tokens ---------------------------------------------------------------------------


def mint_access_token(
    signer: Signer, verifier: str, scopes: Sequence[str], *, ttl: int = ACCESS_TTL, now: float | None = None
) -> str:
    """An access token letting ``verifier`` (a DID) read what ``scopes`` name, once."""
    if not scopes or any(not s or " " in s for s in scopes):
        raise InvalidInput("an access token grants one or more scopes without spaces")
    at = int(time.time() if now is None else now)
    return signer.sign(
        {
            "iss": signer.did,
            "aud": signer.did,
            "sub": verifier,
            "scope": " ".join(scopes),
            "jti": uuid.uuid4().hex,
            "iat": at,
            "exp": at + ttl,
        }
    )


def redeem_access_token(
    engine: Engine, signer: Signer, token: Any, *, verifier: str, now: float | None = None
) -> set[Scope]:
    """The scopes an access token this node issued grants ``verifier``; it is then used up."""
    jti, scopes = read_access_token(signer, token, verifier=verifier, now=now)
    remember(engine, participant_id(signer.did), "access:" + jti)
    return scopes


def read_access_token(
    signer: Signer, token: Any, *, verifier: str, now: float | None = None
) -> tuple[str, set[Scope]]:
    """The ``jti`` and scopes of an access token this node issued to ``verifier``, checked
    (signature, binding, expiry) but not used up: what can be known without the database or
    the verifier's DID document."""
    if not isinstance(token, str) or not token:
        raise TokenRejected("the verifier's token carries no access token ('token' claim)")
    try:
        header, claims = read_jwt(token, "the access token")
    except CredentialRefused:
        raise TokenRejected("the access token is not one this node issued") from None
    document = DidDocument(signer.did, {signer.kid: signer.public_jwk()}, None, None)
    from connector.dcp.credentials import check_signature

    if header.get("kid") != signer.kid:
        raise TokenRejected("the access token is not one this node issued")
    try:
        check_signature(token, signer.kid, document, "the access token")
    except CredentialRefused:
        raise TokenRejected("the access token is not signed by this node") from None
    if claims.get("iss") != signer.did or claims.get("aud") != signer.did:
        raise TokenRejected("the access token was not issued by this node for itself")
    if claims.get("sub") != verifier:
        raise TokenRejected(f"the access token was issued to another party, not to {verifier[:160]}")
    at = time.time() if now is None else now
    exp, jti, scope = claims.get("exp"), claims.get("jti"), claims.get("scope")
    if not isinstance(exp, int) or exp <= at:
        raise TokenRejected("the access token expired")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 120 or not isinstance(scope, str):
        raise TokenRejected("the access token has no jti or scope")
    return jti, parse_scopes(scope.split())
