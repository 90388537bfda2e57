"""Self-issued ID tokens, as the Decentralized Claims Protocol has them: signing one, and
reading and checking one that arrives in an ``Authorization`` header.

A token's ``iss`` and ``sub`` are its sender's DID, ``aud`` the recipient's DID, with a fresh
``jti`` and an expiry minutes away; its header's ``kid`` names the key in the sender's DID
document (:mod:`connector.dsp.identity`). An Agora node also binds the request into its
token: ``agora:sha256`` is the body's digest and ``agora:request`` the method and path
(``POST /dsp/negotiations/…/request``), so a token taken off the wire serves neither another
body nor another route. Other connectors send neither claim; a node requires both from
Agora nodes (:class:`connector.dsp.gate.ProtocolGate`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey

from kernel.errors import AgoraError

TOKEN_TTL = 300  # seconds a self-issued token lives
MAX_TOKEN_TTL = 3600  # a token claiming a longer life is refused
MAX_SKEW = 300  # seconds of clock difference tolerated
MAX_TOKEN_BYTES = 8 * 1024
BODY_CLAIM = "agora:sha256"  # an Agora node binds the request's body into its token
REQUEST_CLAIM = "agora:request"  # ... and the request's method and path
ALGORITHMS = {("EC", "secp256k1"): "ES256K", ("EC", "P-256"): "ES256", ("OKP", "Ed25519"): "EdDSA"}
SIGNING_ALGORITHMS = tuple(ALGORITHMS.values())


class TokenRejected(AgoraError):
    type_slug = "token-rejected"
    status = 401
    title = "Identity token rejected"


def request_claim(method: str, path: str) -> str:
    """The value of :data:`REQUEST_CLAIM` for a request: ``"POST /dsp/catalog/request"``."""
    return f"{method.upper()} {path}"


def sign(claims: dict[str, Any], key: ECKey | OKPKey, kid: str) -> str:
    """A compact JWS of ``claims`` with the algorithm ``key`` calls for."""
    alg = ALGORITHMS[(key.key_type, str(key.as_dict()["crv"]))]
    header = {"alg": alg, "kid": kid, "typ": "JWT"}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return str(jws.serialize_compact(header, payload, key, algorithms=[alg]))


@dataclass(frozen=True)
class Unverified:
    """A token's header and claims as read, before the signature is checked."""

    token: str
    kid: str
    did: str
    claims: dict[str, Any]
    alg: str = ""  # the header's alg


def read_token(authorization: str | None) -> Unverified:
    """The token in an ``Authorization`` header (``Bearer`` or bare, as EDC sends it), its form
    checked: a ``kid`` under the DID that is both ``iss`` and ``sub``."""
    token = (authorization or "").strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise TokenRejected("a protocol request names its sender in the Authorization header (a DCP token)")
    if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise TokenRejected("the Authorization header does not hold a compact JWT")
    try:
        compact = jws.extract_compact(token.encode())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeDecodeError):
        raise TokenRejected("the identity token cannot be read") from None
    header = compact.protected
    if not isinstance(claims, dict):
        raise TokenRejected("the identity token's claims are not a JSON object")
    kid, iss = str(header.get("kid") or ""), claims.get("iss")
    if not isinstance(iss, str) or not iss.startswith("did:") or claims.get("sub") != iss:
        raise TokenRejected("a self-issued token's iss and sub are the sender's DID")
    if kid.startswith("#"):
        kid = iss + kid
    if not kid.startswith(iss + "#"):
        raise TokenRejected("the token's kid must name a key of its issuer's DID")
    alg = header.get("alg")
    if alg not in SIGNING_ALGORITHMS:
        raise TokenRejected(
            f"the identity token is not signed by a key algorithm this node accepts ({str(alg)[:20]})"
        )
    return Unverified(token, kid, iss, claims, str(alg))


def verify_token(
    unverified: Unverified,
    jwk: dict[str, Any],
    *,
    audience: str,
    body: bytes | None,
    request: tuple[str, str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The token's claims once its signature, audience, times and request binding hold."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    alg = ALGORITHMS.get((str(kty), str(crv)))
    if alg is None:
        raise TokenRejected(f"keys of type {kty}/{crv} are not accepted")
    try:
        key = ECKey.import_key(jwk) if kty == "EC" else OKPKey.import_key(jwk)
        jws.deserialize_compact(unverified.token, key, algorithms=[alg])
    except (JoseError, ValueError):
        raise TokenRejected(f"the identity token is not signed by {unverified.kid[:160]}") from None
    return check_claims(unverified, audience=audience, body=body, request=request, now=now)


def check_claims(
    unverified: Unverified,
    *,
    audience: str,
    body: bytes | None,
    request: tuple[str, str] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The token's claims once its audience, times, ``jti`` and the binding to ``body`` and
    ``request`` (method and path as received) hold: all that can be checked before its
    sender's DID document is fetched (the signature cannot). A token bound to a request is
    refused where the request is not known (``request`` None)."""
    claims = unverified.claims
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise TokenRejected(f"the token is meant for {str(aud)[:160]}, not for this node ({audience})")
    at = now if now is not None else time.time()
    exp, iat = claims.get("exp"), claims.get("iat", claims.get("nbf"))
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenRejected("the token has no expiry (exp)")
    if exp < at - MAX_SKEW:
        raise TokenRejected(f"the token expired {int(at - exp)} s ago")
    if isinstance(iat, int) and not isinstance(iat, bool):
        if iat > at + MAX_SKEW:
            raise TokenRejected(f"the token is issued {int(iat - at)} s in the future (clock skew)")
        if exp - iat > MAX_TOKEN_TTL:
            raise TokenRejected(f"the token lives {exp - iat} s; at most {MAX_TOKEN_TTL} s are accepted")
    elif exp - at > MAX_TOKEN_TTL:
        raise TokenRejected(f"the token expires in {int(exp - at)} s; at most {MAX_TOKEN_TTL} s are accepted")
    nbf = claims.get("nbf")
    if isinstance(nbf, int) and not isinstance(nbf, bool) and nbf > at + MAX_SKEW:
        raise TokenRejected(f"the token is not valid yet: not valid for another {int(nbf - at)} s (nbf)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 128:
        raise TokenRejected("the token needs a jti of 8 to 128 characters (replay defence)")
    bound = claims.get(BODY_CLAIM)
    if bound is not None and (body is None or hashlib.sha256(body).hexdigest() != bound):
        raise TokenRejected("the request's body is not the one the token was signed for")
    bound_request = claims.get(REQUEST_CLAIM)
    if bound_request is not None and not _same_request(bound_request, request):
        raise TokenRejected(
            f"the token was signed for another request ({str(bound_request)[:200]}), not this one"
        )
    return claims


def _same_request(claimed: Any, request: tuple[str, str] | None) -> bool:
    """Whether the method and path a token names are the request's, compared percent-decoded;
    the token's path may carry a prefix (a reverse proxy's) before the path the node received."""
    if request is None or not isinstance(claimed, str):
        return False
    method, _, path = claimed.partition(" ")
    received_method, received_path = request
    path, received_path = unquote(path), unquote(received_path)  # as sent, as routed (decoded)
    return (
        method == received_method.upper()
        and received_path.startswith("/")
        and (path == received_path or path.endswith(received_path))
    )
