"""Tokens from an external OpenID Connect provider: a real HTTP server on loopback serving a
discovery document and a JWKS, and the real app verifying RS256 tokens against it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from node.auth import OIDCKeyFetcher
from tests.services import free_port

AUDIENCE = "agora-api"
OFFERINGS = "/api/v1/offerings"
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def rsa_keys() -> list[RSAKey]:
    """A few 2048-bit keys, generated once for the module (generation is the slow part)."""
    keys = [RSAKey.generate_key(2048, parameters={"alg": "RS256", "use": "sig"}) for _ in range(3)]
    for key in keys:
        key.ensure_kid()
    return keys


class IdentityProvider:
    """A minimal OIDC provider: discovery document, JWKS, and a token minting helper."""

    def __init__(self, signing_key: RSAKey) -> None:
        self.keys: list[RSAKey] = [signing_key]
        self.hits: Counter[str] = Counter()
        self.jwks_override: Any = None
        self.discovery_overrides: dict[str, Any] = {}
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.hits[self.path] += 1
                if self.path == "/.well-known/openid-configuration":
                    self._json(provider.discovery())
                elif self.path == "/jwks.json":
                    body = provider.jwks_override
                    if body is None:
                        body = {"keys": [k.as_dict(private=False) for k in provider.keys]}
                    self._json(body)
                else:
                    self.send_error(404)

            def _json(self, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.base_url,
            "jwks_uri": f"{self.base_url}/jwks.json",
            "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": f"{self.base_url}/token",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            **self.discovery_overrides,
        }

    def token(self, key: RSAKey | None = None, **overrides: Any) -> str:
        key = key or self.keys[0]
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.base_url,
            "aud": AUDIENCE,
            "sub": "user-42",
            "iat": now,
            "exp": now + 300,
            "scope": "openid catalog:read",
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS256"])

    @property
    def jwks_hits(self) -> int:
        return self.hits["/jwks.json"]

    @property
    def discovery_hits(self) -> int:
        return self.hits["/.well-known/openid-configuration"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def idp(rsa_keys: list[RSAKey]) -> Iterator[IdentityProvider]:
    provider = IdentityProvider(rsa_keys[0])
    yield provider
    provider.stop()


@pytest.fixture
def make_client(settings_factory):  # type: ignore[no-untyped-def]
    """``make_client(**settings)`` → (TestClient, Runtime) of a node built like tests/conftest.py."""
    from litestar.testing import TestClient

    from node import db
    from node.app import create_app
    from node.runtime import build_runtime

    opened: list[tuple[Any, Any]] = []

    def make(**overrides: Any) -> tuple[Any, Any]:
        settings = settings_factory(**overrides)
        db.upgrade(settings.effective_database_url)
        runtime = build_runtime(settings)
        client = TestClient(app=create_app(runtime))
        client.__enter__()
        opened.append((client, runtime))
        return client, runtime

    yield make
    for client, runtime in opened:
        client.__exit__(None, None, None)
        runtime.close()


@pytest.fixture
def oidc_client(idp: IdentityProvider, make_client) -> Any:  # type: ignore[no-untyped-def]
    client, _ = make_client(oidc_issuer=idp.base_url, oidc_audience=AUDIENCE)
    return client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_401(response: Any) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    detail: str = response.json()["detail"]
    assert detail
    return detail


# Accepted ------------------------------------------------------------------------------------


def test_provider_token_with_catalog_read_is_accepted(idp: IdentityProvider, oidc_client: Any) -> None:
    response = oidc_client.get(OFFERINGS, headers=bearer(idp.token()))
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []
    # the keys were found through discovery, once
    assert idp.discovery_hits == 1
    assert idp.jwks_hits == 1


def test_keys_are_cached_between_tokens(idp: IdentityProvider, oidc_client: Any) -> None:
    for subject in ("a", "b", "c"):
        assert oidc_client.get(OFFERINGS, headers=bearer(idp.token(sub=subject))).status_code == 200
    assert idp.discovery_hits == 1
    assert idp.jwks_hits == 1


def test_scp_list_claim_is_accepted(idp: IdentityProvider, oidc_client: Any) -> None:
    token = idp.token(scope=None, scp=["openid", "catalog:read"])
    assert oidc_client.get(OFFERINGS, headers=bearer(token)).status_code == 200


def test_audience_list_containing_ours_is_accepted(idp: IdentityProvider, oidc_client: Any) -> None:
    token = idp.token(aud=["some-other-api", AUDIENCE])
    assert oidc_client.get(OFFERINGS, headers=bearer(token)).status_code == 200


def test_provider_token_without_the_scope_is_403(idp: IdentityProvider, oidc_client: Any) -> None:
    response = oidc_client.get(OFFERINGS, headers=bearer(idp.token(scope="openid jobs:write")))
    assert response.status_code == 403, response.text
    assert "catalog:read" in response.json()["detail"]


def test_jwks_url_set_directly_skips_discovery(idp: IdentityProvider, make_client) -> None:  # type: ignore[no-untyped-def]
    client, _ = make_client(
        oidc_issuer=idp.base_url, oidc_audience=AUDIENCE, oidc_jwks_url=f"{idp.base_url}/jwks.json"
    )
    assert client.get(OFFERINGS, headers=bearer(idp.token())).status_code == 200
    assert idp.discovery_hits == 0
    assert idp.jwks_hits == 1


def test_node_issued_tokens_still_work_with_oidc_configured(idp: IdentityProvider, make_client) -> None:  # type: ignore[no-untyped-def]
    client, runtime = make_client(oidc_issuer=idp.base_url, oidc_audience=AUDIENCE)
    token = runtime.issuer.issue(["catalog:read"], 60)
    assert client.get(OFFERINGS, headers=bearer(token)).status_code == 200
    assert idp.hits.total() == 0  # the node's own tokens never touch the provider


# Rejected ------------------------------------------------------------------------------------


def test_wrong_audience_is_401(idp: IdentityProvider, oidc_client: Any) -> None:
    detail = assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token(aud="another-api"))))
    assert AUDIENCE in detail


def test_expired_provider_token_is_401(idp: IdentityProvider, oidc_client: Any) -> None:
    now = int(time.time())
    token = idp.token(iat=now - 7200, exp=now - 3600)
    assert "expired" in assert_401(oidc_client.get(OFFERINGS, headers=bearer(token)))


def test_key_not_in_the_jwks_is_401(idp: IdentityProvider, oidc_client: Any, rsa_keys: list[RSAKey]) -> None:
    token = idp.token(key=rsa_keys[2])
    assert "signature" in assert_401(oidc_client.get(OFFERINGS, headers=bearer(token)))


def test_forged_signature_with_a_known_kid_is_401(
    idp: IdentityProvider, oidc_client: Any, rsa_keys: list[RSAKey]
) -> None:
    forged = rsa_keys[2].as_dict(private=True)
    forged["kid"] = rsa_keys[0].kid
    token = idp.token(key=RSAKey.import_key(forged))
    assert "signature" in assert_401(oidc_client.get(OFFERINGS, headers=bearer(token)))


def test_token_naming_the_provider_signed_by_the_node_key_is_401(
    idp: IdentityProvider,
    make_client,  # type: ignore[no-untyped-def]
) -> None:
    client, runtime = make_client(oidc_issuer=idp.base_url, oidc_audience=AUDIENCE)
    now = int(time.time())
    claims = {"iss": idp.base_url, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "scope": "admin"}
    key = runtime.issuer.key
    token = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])
    assert "signature" in assert_401(client.get(OFFERINGS, headers=bearer(token)))


# Key rotation --------------------------------------------------------------------------------


def test_rotated_key_is_fetched_on_an_unknown_kid(
    idp: IdentityProvider, oidc_client: Any, rsa_keys: list[RSAKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OIDCKeyFetcher, "MIN_REFRESH_SECONDS", 0.0)
    old, new = rsa_keys[0], rsa_keys[1]
    assert oidc_client.get(OFFERINGS, headers=bearer(idp.token(key=old))).status_code == 200
    assert idp.jwks_hits == 1

    idp.keys = [new]  # the provider rotates: only the new key is published
    response = oidc_client.get(OFFERINGS, headers=bearer(idp.token(key=new)))
    assert response.status_code == 200, response.text
    assert idp.jwks_hits == 2
    # the refetched set replaced the old one: a fresh token under the retired key is refused
    assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token(key=old, sub="late"))))


def test_unknown_kids_do_not_hammer_the_provider(
    idp: IdentityProvider, oidc_client: Any, rsa_keys: list[RSAKey]
) -> None:
    assert oidc_client.get(OFFERINGS, headers=bearer(idp.token())).status_code == 200
    for i in range(5):
        assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token(key=rsa_keys[2], sub=f"s{i}"))))
    # refetches are rate-limited (OIDCKeyFetcher.MIN_REFRESH_SECONDS): still the one fetch
    assert idp.jwks_hits == 1


# Provider failures: 401 with a reason, never a 500 -------------------------------------------------


def test_unreachable_provider_is_401_with_a_reason(
    idp: IdentityProvider,
    make_client,  # type: ignore[no-untyped-def]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client, _ = make_client(oidc_issuer=dead, oidc_audience=AUDIENCE)
    token = idp.token(iss=dead)
    detail = assert_401(client.get(OFFERINGS, headers=bearer(token)))
    assert dead in detail
    assert "discovery" in detail


def test_unreachable_jwks_url_is_401_with_a_reason(
    idp: IdentityProvider,
    make_client,  # type: ignore[no-untyped-def]
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jwks.json"
    client, _ = make_client(oidc_issuer=idp.base_url, oidc_audience=AUDIENCE, oidc_jwks_url=dead)
    detail = assert_401(client.get(OFFERINGS, headers=bearer(idp.token())))
    assert dead in detail


@pytest.mark.parametrize("body", [{}, {"keys": []}, {"keys": "nope"}, ["not", "a", "jwks"]])
def test_a_broken_jwks_is_401_not_500(idp: IdentityProvider, oidc_client: Any, body: Any) -> None:
    idp.jwks_override = body
    detail = assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token())))
    assert "keys" in detail


def test_discovery_naming_another_issuer_is_401(idp: IdentityProvider, oidc_client: Any) -> None:
    idp.discovery_overrides = {"issuer": "http://127.0.0.1:1"}
    detail = assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token())))
    assert "another issuer" in detail
    assert idp.jwks_hits == 0


def test_discovery_without_jwks_uri_is_401(idp: IdentityProvider, oidc_client: Any) -> None:
    idp.discovery_overrides = {"jwks_uri": None}
    detail = assert_401(oidc_client.get(OFFERINGS, headers=bearer(idp.token())))
    assert "jwks_uri" in detail
