"""Bearer tokens: the node's own JWTs and, optionally, an external OIDC provider's.

The node signs ES256 JWTs with its token key (``iss`` = its public URL, ``aud`` = the
participant address). When ``AGORA_OIDC_ISSUER`` is set, tokens from that issuer are also
accepted: their keys come from ``AGORA_OIDC_JWKS_URL`` or, when unset, from the issuer's
discovery document; the audience must be ``AGORA_OIDC_AUDIENCE``. Scopes are read from
``scope`` and ``scp`` (a space-separated string or a list). ``admin`` grants every scope.

Every failure is :class:`Unauthorized` with the reason; a valid token lacking a scope is
:class:`Forbidden`.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, KeySet

from kernel.errors import AgoraError, ConfigurationError, Forbidden, InvalidInput, Unauthorized
from kernel.limits import JsonLimits, check_json, loads
from kernel.outbound import OutboundClient

if TYPE_CHECKING:
    from node.settings import Settings

SCOPES = (
    "catalog:read",
    "offerings:write",
    "negotiations:write",
    "jobs:write",
    "federations:write",
    "admin",
)
ACCEPTED_ALGORITHMS = ["ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "Ed25519"]
MAX_TOKEN_CHARS = 16 * 1024  # identity providers' tokens with many groups stay well below
TOKEN_JSON = JsonLimits(max_depth=32, max_string=8 * 1024, max_tokens=2_000)
CLOCK_SKEW_SECONDS = 30


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject, issuer and scopes."""

    subject: str
    issuer: str
    scopes: frozenset[str]
    expires_at: int = 0

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``7d`` (or plain seconds) to seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise InvalidInput(f"bad ttl {text!r}: use a number with s, m, h or d (e.g. 1h)")
    value, unit = int(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    if seconds <= 0:
        raise InvalidInput("ttl must be positive")
    return seconds


class TokenIssuer:
    """Signs the node's own bearer tokens."""

    def __init__(self, key: ECKey, issuer: str, audience: str, max_ttl: int) -> None:
        key.ensure_kid()  # the header names the key; a JWK without "kid" gets its thumbprint
        self.key = key
        self.issuer = issuer
        self.audience = audience
        self.max_ttl = max_ttl

    @classmethod
    def for_node(cls, settings: Settings) -> TokenIssuer:
        """The issuer of the node these settings describe (its token key and participant address)."""
        from node.identity import participant_address, token_signing_key

        return cls(
            token_signing_key(settings),
            settings.token_issuer,
            participant_address(settings),
            settings.token_ttl_max_seconds,
        )

    def issue(self, scopes: list[str], ttl_seconds: int, subject: str = "operator") -> str:
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise InvalidInput(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
        if not scopes:
            raise InvalidInput("a token needs at least one scope")
        if ttl_seconds > self.max_ttl:
            raise InvalidInput(f"ttl {ttl_seconds}s exceeds the node's maximum of {self.max_ttl}s")
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(sorted(set(scopes))),
        }
        header = {"alg": "ES256", "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=["ES256"])

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}


@dataclass
class _Trust:
    """One issuer the node accepts tokens from."""

    issuer: str
    audience: str
    keys: KeySet | None
    jwks_url: str = ""
    refreshable: bool = False  # keys come from a JWKS URL and may rotate
    fetched_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class OIDCKeyFetcher:
    """Fetches and caches an issuer's JWKS; refetches on an unknown ``kid`` (key rotation)."""

    MIN_REFRESH_SECONDS = 10.0
    TIMEOUT = httpx.Timeout(5.0)  # a token check waits on this: shorter than the node's default
    MAX_BYTES = 1024 * 1024

    def __init__(self, outbound: OutboundClient) -> None:
        self.outbound = outbound

    def _get(self, url: str) -> Any:
        """The JSON document at ``url`` (through the node's outbound client)."""
        try:
            response = self.outbound.request("GET", url, max_bytes=self.MAX_BYTES, timeout=self.TIMEOUT)
        except AgoraError as exc:
            raise ValueError(exc.detail) from None
        response.raise_for_status()
        try:
            return loads(response.content, what=f"the document at {url}")
        except InvalidInput as exc:
            raise ValueError(exc.detail) from None

    def discover_jwks_url(self, issuer: str) -> str:
        from authlib.oidc.discovery import OpenIDProviderMetadata

        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            metadata = OpenIDProviderMetadata(self._get(url))
            metadata.validate_issuer()
            metadata.validate_jwks_uri()
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            raise Unauthorized(f"cannot read the OIDC discovery document at {url}: {exc}") from exc
        if metadata["issuer"].rstrip("/") != issuer.rstrip("/"):
            raise Unauthorized(f"OIDC discovery at {url} names another issuer: {metadata['issuer']}")
        return str(metadata["jwks_uri"])

    def fetch(self, jwks_url: str) -> KeySet:
        try:
            return KeySet.import_key_set(self._get(jwks_url))
        except (httpx.HTTPError, ValueError, TypeError, KeyError, JoseError) as exc:
            # KeyError/TypeError: a body that is JSON but not a JWKS (no "keys" list)
            raise Unauthorized(f"cannot fetch the identity provider's keys from {jwks_url}: {exc}") from exc


class TokenVerifier:
    """Validates bearer tokens against the node's own key and an optional OIDC issuer."""

    CACHE_SIZE = 4096

    def __init__(
        self,
        own_issuer: str,
        own_audience: str,
        own_public_key: ECKey,
        *,
        oidc_issuer: str = "",
        oidc_audience: str = "",
        oidc_jwks_url: str = "",
        fetcher: OIDCKeyFetcher | None = None,
    ) -> None:
        self._trusts: dict[str, _Trust] = {
            own_issuer: _Trust(own_issuer, own_audience, KeySet([own_public_key]))
        }
        if oidc_issuer:
            if not oidc_audience:
                raise ConfigurationError("AGORA_OIDC_ISSUER is set but AGORA_OIDC_AUDIENCE is not")
            if oidc_issuer.rstrip("/") == own_issuer.rstrip("/"):
                raise ConfigurationError(
                    "AGORA_OIDC_ISSUER must differ from the node's own issuer (AGORA_PUBLIC_URL)"
                )
            self._trusts[oidc_issuer] = _Trust(
                oidc_issuer, oidc_audience, None, oidc_jwks_url, refreshable=True
            )
        # the identity provider the operator configured is exempt from the address rules
        if fetcher is None and oidc_issuer:
            fetcher = OIDCKeyFetcher(OutboundClient().exempting(oidc_issuer, oidc_jwks_url))
        self._fetcher = fetcher
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_lock = threading.Lock()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired (no I/O)."""
        with self._cache_lock:
            cached = self._cache.get(token)
        if cached is not None and cached.expires_at > time.time():
            return cached
        return None

    async def authorize(self, token: str, scope: str) -> Principal:
        """The token's principal if it holds ``scope`` (a cached token skips the worker thread);
        else :class:`Unauthorized` or :class:`Forbidden` with the reason."""
        from anyio import to_thread

        principal = self.cached(token)
        if principal is None:
            principal = await to_thread.run_sync(self.verify, token)
        require_scope(principal, scope)
        return principal

    def verify(self, token: str) -> Principal:
        """A principal for a valid token, else :class:`Unauthorized` with the reason.

        May fetch the identity provider's keys, so async callers run it in a thread.
        """
        cached = self.cached(token)
        if cached is not None:
            return cached
        now = int(time.time())
        principal = self._verify_uncached(token, now)
        with self._cache_lock:
            self._cache[token] = principal
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    def _verify_uncached(self, token: str, now: int) -> Principal:
        issuer = _unverified_issuer(token)
        trust = self._trusts.get(issuer)
        if trust is None:
            raise Unauthorized(f"tokens from issuer {issuer!r} are not accepted here")
        decoded = self._decode(token, trust)
        registry = jwt.JWTClaimsRegistry(
            now=now,
            leeway=CLOCK_SKEW_SECONDS,
            iss={"essential": True, "value": trust.issuer},
            aud={"essential": True, "value": trust.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise Unauthorized("the token has expired") from None
        except MissingClaimError as exc:
            raise Unauthorized(f"the token lacks a required claim: {exc.claim}") from None
        except InvalidClaimError as exc:
            if exc.claim == "aud":
                raise Unauthorized(
                    f"the token is not meant for this node (audience {trust.audience})"
                ) from None
            raise Unauthorized(f"invalid token claim {exc.claim}: {exc.description}") from None
        except JoseError as exc:
            raise Unauthorized(f"invalid token: {exc.error}") from None
        claims = decoded.claims
        return Principal(
            subject=str(claims["sub"]),
            issuer=trust.issuer,
            scopes=_scopes(claims),
            expires_at=int(claims["exp"]),
        )

    def _decode(self, token: str, trust: _Trust) -> Any:
        keys = self._keys(trust, refresh=False)
        try:
            return jwt.decode(token, keys, algorithms=ACCEPTED_ALGORITHMS)
        except (BadSignatureError, InvalidKeyIdError, ValueError) as exc:
            # InvalidKeyIdError: signed by a key (kid) the trusted key set does not hold
            if trust.refreshable:
                # the provider may have rotated its keys: refetch once and retry
                keys = self._keys(trust, refresh=True)
                try:
                    return jwt.decode(token, keys, algorithms=ACCEPTED_ALGORITHMS)
                except (BadSignatureError, InvalidKeyIdError, ValueError, JoseError):
                    pass
            raise Unauthorized("the token's signature is not valid (unknown key or bad signature)") from exc
        except DecodeError:
            raise Unauthorized("the token is malformed") from None
        except JoseError as exc:
            raise Unauthorized(f"invalid token: {exc.error}") from None

    def _keys(self, trust: _Trust, refresh: bool) -> KeySet:
        with trust.lock:
            stale = refresh and time.monotonic() - trust.fetched_at > OIDCKeyFetcher.MIN_REFRESH_SECONDS
            if trust.keys is None or stale:
                assert self._fetcher is not None  # only an OIDC trust starts without keys or refreshes
                if not trust.jwks_url:
                    trust.jwks_url = self._fetcher.discover_jwks_url(trust.issuer)
                trust.keys = self._fetcher.fetch(trust.jwks_url)
                trust.fetched_at = time.monotonic()
            return trust.keys


def _unverified_issuer(token: str) -> str:
    """Peek at ``iss`` to pick the trust anchor; the signature is checked right after.

    Nothing is verified yet, so the token is held to a length and its header and payload
    to small JSON bounds before this or the JOSE library parses them."""
    import base64

    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthorized("the token is malformed (not a compact JWT)")
    try:
        header, payload = (base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in parts[:2])
        check_json(header, TOKEN_JSON, what="the token's header")
        claims = loads(payload, TOKEN_JSON, what="the token's payload")
    except InvalidInput as exc:
        raise Unauthorized(f"the token is malformed: {exc.detail}") from None
    except (ValueError, TypeError):
        raise Unauthorized("the token is malformed (payload is not JSON)") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("iss"), str):
        raise Unauthorized("the token has no issuer (iss)")
    return str(claims["iss"])


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` and ``scp``, each a space-separated string or a list (Azure AD
    sends ``scp`` as a string, Okta as a list)."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list):
            scopes.update(s for s in value if isinstance(s, str))
    return frozenset(scopes)


def require_scope(principal: Principal, scope: str) -> None:
    if not principal.allows(scope):
        raise Forbidden(f"this call needs the scope {scope!r}; the token has {sorted(principal.scopes)}")


def bearer_token(header: str | None) -> str:
    if not header:
        raise Unauthorized("missing bearer token (Authorization: Bearer …)")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return value.strip()
