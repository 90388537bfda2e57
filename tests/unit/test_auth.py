"""TokenIssuer and TokenVerifier with the node's own keys; scopes, TTLs and the bearer header."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey

from kernel.errors import ConfigurationError, Forbidden, InvalidInput, Unauthorized
from node.auth import (
    CLOCK_SKEW_SECONDS,
    SCOPES,
    Principal,
    TokenIssuer,
    TokenVerifier,
    bearer_token,
    parse_ttl,
    require_scope,
)

ISSUER = "http://node.test:8000"
AUDIENCE = "0x1111111111111111111111111111111111111111"
MAX_TTL = 3600


def new_key() -> ECKey:
    key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, private=True)
    key.ensure_kid()
    return key


@pytest.fixture(scope="module")
def key() -> ECKey:
    return new_key()


@pytest.fixture
def issuer(key: ECKey) -> TokenIssuer:
    return TokenIssuer(key, ISSUER, AUDIENCE, MAX_TTL)


@pytest.fixture
def verifier(key: ECKey) -> TokenVerifier:
    return TokenVerifier(ISSUER, AUDIENCE, key)


def signed(key: Any, alg: str = "ES256", kid: str | None = None, **overrides: Any) -> str:
    """A token with the node's usual claims, any of them overridden (``None`` drops it)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "someone",
        "iat": now,
        "exp": now + 600,
        "scope": "catalog:read",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": alg, "kid": kid if kid is not None else key.kid}
    return jwt.encode(header, claims, key, algorithms=[alg])


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unauthorized(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as info:
        verifier.verify(token)
    assert info.value.status == 401
    return info.value.detail


# Issuing ---------------------------------------------------------------------------------------


def test_issued_token_verifies_to_a_principal_with_its_scopes(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token = issuer.issue(["catalog:read", "jobs:write"], 600, subject="alice")
    principal = verifier.verify(token)
    assert principal.subject == "alice"
    assert principal.issuer == ISSUER
    assert principal.scopes == {"catalog:read", "jobs:write"}
    assert abs(principal.expires_at - (time.time() + 600)) < 5
    assert principal.allows("catalog:read")
    assert principal.allows("jobs:write")
    assert not principal.allows("offerings:write")
    assert not principal.allows("admin")


def test_issued_claims_and_header(issuer: TokenIssuer, key: ECKey) -> None:
    token = issuer.issue(["jobs:write", "catalog:read", "jobs:write"], 120)
    decoded = jwt.decode(token, key, algorithms=["ES256"])
    claims = decoded.claims
    assert decoded.header == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    assert claims["iss"] == ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == "operator"
    assert claims["scope"] == "catalog:read jobs:write"  # sorted, without duplicates
    assert claims["exp"] - claims["iat"] == 120
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["jti"] != jwt.decode(issuer.issue(["admin"], 60), key).claims["jti"]


def test_issuer_names_a_key_without_kid_by_its_thumbprint() -> None:
    bare = ECKey.generate_key("P-256", private=True, auto_kid=False)
    assert bare.kid is None
    issuer = TokenIssuer(bare, ISSUER, AUDIENCE, MAX_TTL)
    token = issuer.issue(["admin"], 60)
    assert jwt.decode(token, bare).header["kid"] == bare.thumbprint()
    assert TokenVerifier(ISSUER, AUDIENCE, bare).verify(token).scopes == {"admin"}


def test_issue_rejects_unknown_scopes_and_lists_the_known_ones(issuer: TokenIssuer) -> None:
    with pytest.raises(InvalidInput) as info:
        issuer.issue(["catalog:read", "root", "everything"], 60)
    assert "everything, root" in info.value.detail
    for scope in SCOPES:
        assert scope in info.value.detail


def test_issue_needs_a_scope(issuer: TokenIssuer) -> None:
    with pytest.raises(InvalidInput, match="at least one scope"):
        issuer.issue([], 60)


def test_issue_refuses_a_ttl_over_the_maximum(issuer: TokenIssuer) -> None:
    assert issuer.issue(["admin"], MAX_TTL)
    with pytest.raises(InvalidInput, match="exceeds"):
        issuer.issue(["admin"], MAX_TTL + 1)


def test_public_jwks_has_no_private_part_and_verifies_tokens(issuer: TokenIssuer, key: ECKey) -> None:
    jwks = issuer.public_jwks()
    assert len(jwks["keys"]) == 1
    public = jwks["keys"][0]
    assert "d" not in public
    assert public["kty"] == "EC"
    assert public["crv"] == "P-256"
    assert public["kid"] == key.kid
    verifier = TokenVerifier(ISSUER, AUDIENCE, ECKey.import_key(public))
    assert verifier.verify(issuer.issue(["admin"], 60)).scopes == {"admin"}


# Scopes ----------------------------------------------------------------------------------------


def test_admin_allows_every_scope(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    principal = verifier.verify(issuer.issue(["admin"], 60))
    for scope in [*SCOPES, "something:new"]:
        assert principal.allows(scope)
        require_scope(principal, scope)


def test_require_scope_forbids_a_missing_scope() -> None:
    principal = Principal(subject="bob", issuer=ISSUER, scopes=frozenset({"catalog:read"}))
    require_scope(principal, "catalog:read")
    with pytest.raises(Forbidden) as info:
        require_scope(principal, "offerings:write")
    assert info.value.status == 403
    assert "offerings:write" in info.value.detail
    assert "catalog:read" in info.value.detail


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"scope": "catalog:read  jobs:write"}, {"catalog:read", "jobs:write"}),
        ({"scope": None, "scp": ["catalog:read", "jobs:write"]}, {"catalog:read", "jobs:write"}),
        ({"scope": None, "scp": "catalog:read jobs:write"}, {"catalog:read", "jobs:write"}),
        ({"scope": ["catalog:read"]}, {"catalog:read"}),
        ({"scope": "catalog:read", "scp": ["jobs:write"]}, {"catalog:read", "jobs:write"}),
        ({"scope": None}, set()),
        ({"scope": 42}, set()),
    ],
)
def test_scopes_are_read_from_scope_and_scp(
    key: ECKey, verifier: TokenVerifier, claims: dict[str, Any], expected: set[str]
) -> None:
    assert verifier.verify(signed(key, **claims)).scopes == expected


# Rejections ------------------------------------------------------------------------------------


def test_expired_token_is_unauthorized(key: ECKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    token = signed(key, iat=now - 3600, exp=now - CLOCK_SKEW_SECONDS - 60)
    assert "expired" in unauthorized(verifier, token)


def test_small_clock_skew_is_tolerated(key: ECKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    assert verifier.verify(signed(key, exp=now - CLOCK_SKEW_SECONDS // 2)).subject == "someone"
    assert verifier.verify(signed(key, nbf=now + CLOCK_SKEW_SECONDS // 2)).subject == "someone"


def test_token_not_yet_valid_is_unauthorized(key: ECKey, verifier: TokenVerifier) -> None:
    token = signed(key, nbf=int(time.time()) + 3600)
    assert "nbf" in unauthorized(verifier, token)


def test_token_signed_by_another_key_is_unauthorized(verifier: TokenVerifier) -> None:
    token = TokenIssuer(new_key(), ISSUER, AUDIENCE, MAX_TTL).issue(["admin"], 60)
    assert "signature" in unauthorized(verifier, token)


def test_token_signed_by_another_key_claiming_our_kid_is_unauthorized(
    key: ECKey, verifier: TokenVerifier
) -> None:
    token = signed(new_key(), kid=key.kid, scope="admin")
    assert "signature" in unauthorized(verifier, token)


def test_tampered_payload_is_unauthorized(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    header, payload, signature = issuer.issue(["catalog:read"], 60).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "admin"
    assert "signature" in unauthorized(verifier, f"{header}.{b64(claims)}.{signature}")


def test_hmac_token_using_the_public_key_as_secret_is_unauthorized(
    key: ECKey, verifier: TokenVerifier
) -> None:
    secret = OctKey.import_key(json.dumps(key.as_dict(private=False)).encode())
    token = signed(secret, alg="HS256", kid=key.kid, scope="admin")
    unauthorized(verifier, token)


def test_unsigned_token_is_unauthorized(key: ECKey, verifier: TokenVerifier) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "scope": "admin"}
    token = f"{b64({'alg': 'none', 'kid': key.kid})}.{b64(claims)}."
    unauthorized(verifier, token)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "....",
        f"not-base64!.{b64({'iss': ISSUER})}.sig",
        f"{b64({'alg': 'ES256'})}.{b64({'sub': 'no issuer'})}.sig",
        f"{b64({'alg': 'ES256'})}.{base64.urlsafe_b64encode(b'[1, 2]').decode()}.sig",
    ],
)
def test_malformed_tokens_are_unauthorized(verifier: TokenVerifier, token: str) -> None:
    unauthorized(verifier, token)


def test_wrong_audience_is_unauthorized(key: ECKey, verifier: TokenVerifier) -> None:
    other = TokenIssuer(key, ISSUER, "0x2222222222222222222222222222222222222222", MAX_TTL)
    detail = unauthorized(verifier, other.issue(["admin"], 60))
    assert "audience" in detail
    assert AUDIENCE in detail


def test_unknown_issuer_is_unauthorized(key: ECKey, verifier: TokenVerifier) -> None:
    token = TokenIssuer(key, "https://evil.example", AUDIENCE, MAX_TTL).issue(["admin"], 60)
    detail = unauthorized(verifier, token)
    assert "https://evil.example" in detail
    assert "not accepted" in detail


@pytest.mark.parametrize("claim", ["sub", "exp", "aud"])
def test_required_claims_must_be_present(key: ECKey, verifier: TokenVerifier, claim: str) -> None:
    detail = unauthorized(verifier, signed(key, **{claim: None}))
    assert claim in detail


def test_verified_tokens_are_cached_until_they_expire(
    issuer: TokenIssuer, verifier: TokenVerifier, key: ECKey
) -> None:
    token = issuer.issue(["catalog:read"], 60)
    assert verifier.cached(token) is None
    principal = verifier.verify(token)
    assert verifier.cached(token) == principal
    # inside the clock-skew leeway the token verifies, but an expired principal is never cached
    stale = signed(key, exp=int(time.time()) - 5)
    assert verifier.verify(stale).subject == "someone"
    assert verifier.cached(stale) is None


def test_oidc_issuer_without_audience_is_a_configuration_error(key: ECKey) -> None:
    with pytest.raises(ConfigurationError, match="AGORA_OIDC_AUDIENCE"):
        TokenVerifier(ISSUER, AUDIENCE, key, oidc_issuer="https://idp.example")


# parse_ttl -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("7d", 7 * 86400),
        ("120", 120),
        (" 5m ", 300),
        ("5 m", 300),
    ],
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "1.5h", "-5m", "10x", "h", "1H", "1h30m", "0", "0d"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(InvalidInput, match="ttl"):
        parse_ttl(text)


# bearer_token ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        ("Bearer   abc  ", "abc"),
    ],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, ""])
def test_missing_authorization_header(header: str | None) -> None:
    with pytest.raises(Unauthorized, match="missing bearer token"):
        bearer_token(header)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token abc", "abc"])
def test_non_bearer_authorization_header(header: str) -> None:
    with pytest.raises(Unauthorized, match="Bearer <token>"):
        bearer_token(header)
