"""Bearer-token authentication over HTTP, against the real app (SQLite + local files)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet

from node.auth import TokenIssuer

PROBLEM_JSON = "application/problem+json"
OFFERINGS = "/api/v1/offerings"


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("https://agora.dev/problems/")
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def expired_token(runtime: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": runtime.settings.token_issuer,
        "aud": runtime.address,
        "sub": "operator",
        "iat": now - 7200,
        "exp": now - 3600,
        "scope": "catalog:read",
    }
    key = runtime.issuer.key
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key, algorithms=["ES256"])


# 401 -----------------------------------------------------------------------------------------


def test_no_authorization_header_is_401_problem(client: Any) -> None:
    response = client.get(OFFERINGS)
    body = assert_problem(response, 401)
    assert body["type"].endswith("/unauthorized")
    assert "bearer" in body["detail"].lower()
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_basic_auth_is_401(client: Any) -> None:
    body = assert_problem(client.get(OFFERINGS, headers={"Authorization": "Basic x"}), 401)
    assert "Bearer" in body["detail"]


@pytest.mark.parametrize("token", ["abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.e30.sig"])
def test_garbage_token_is_401(client: Any, token: str) -> None:
    assert_problem(client.get(OFFERINGS, headers={"Authorization": f"Bearer {token}"}), 401)


def test_expired_token_is_401(client: Any, runtime: Any) -> None:
    response = client.get(OFFERINGS, headers={"Authorization": f"Bearer {expired_token(runtime)}"})
    body = assert_problem(response, 401)
    assert "expired" in body["detail"]


def test_token_signed_by_another_key_is_401(client: Any, runtime: Any) -> None:
    stranger = ECKey.generate_key("P-256", parameters={"alg": "ES256"}, private=True)
    stranger.ensure_kid()
    forged = TokenIssuer(stranger, runtime.settings.token_issuer, runtime.address, 3600).issue(["admin"], 60)
    body = assert_problem(client.get(OFFERINGS, headers={"Authorization": f"Bearer {forged}"}), 401)
    assert "signature" in body["detail"]


def test_token_for_another_participant_is_401(client: Any, runtime: Any) -> None:
    other = TokenIssuer(runtime.issuer.key, runtime.settings.token_issuer, "0x" + "22" * 20, 3600)
    response = client.get(OFFERINGS, headers={"Authorization": f"Bearer {other.issue(['admin'], 60)}"})
    body = assert_problem(response, 401)
    assert "audience" in body["detail"]


# 403 -----------------------------------------------------------------------------------------


def test_token_without_catalog_read_is_403(client: Any, auth: Any) -> None:
    body = assert_problem(client.get(OFFERINGS, headers=auth("jobs:write")), 403)
    assert body["type"].endswith("/forbidden")
    assert "catalog:read" in body["detail"]


def test_post_offerings_with_only_catalog_read_is_403(client: Any, auth: Any) -> None:
    response = client.post(
        OFFERINGS, headers=auth("catalog:read"), json={"metadata": {"title": "x"}, "path": "/etc/passwd"}
    )
    body = assert_problem(response, 403)
    assert "offerings:write" in body["detail"]


# 200 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scopes", [("catalog:read",), ("admin",), ("jobs:write", "catalog:read")])
def test_token_with_catalog_read_or_admin_lists_offerings(client: Any, auth: Any, scopes: tuple[str]) -> None:
    response = client.get(OFFERINGS, headers=auth(*scopes))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"items": [], "next_cursor": None}  # a fresh node offers nothing yet


def test_the_same_token_works_repeatedly(client: Any, auth: Any) -> None:
    headers = auth("catalog:read")
    assert [client.get(OFFERINGS, headers=headers).status_code for _ in range(3)] == [200, 200, 200]


# Open endpoints ------------------------------------------------------------------------------


def test_health_needs_no_token(client: Any, runtime: Any) -> None:
    response = client.get("/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["participant"] == runtime.address
    assert body["participant"].startswith("0x") and len(body["participant"]) == 42
    assert body["database"] == "sqlite"
    assert body["storage"] == "file"
    assert body["name"] == runtime.settings.name


def test_jwks_serves_only_the_public_key(client: Any, runtime: Any, auth: Any) -> None:
    response = client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    jwks = response.json()
    assert len(jwks["keys"]) == 1
    public = jwks["keys"][0]
    assert "d" not in public
    assert public["kty"] == "EC"
    assert public["kid"] == runtime.issuer.key.kid
    # the served key verifies the node's tokens
    token = auth("catalog:read")["Authorization"].removeprefix("Bearer ")
    claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"]).claims
    assert claims["aud"] == runtime.address


def test_openapi_document_lists_offerings_and_bearer_security(client: Any) -> None:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert OFFERINGS in doc["paths"]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"
    assert {"bearer": []} in doc["paths"][OFFERINGS]["get"]["security"]
    assert "security" not in doc["paths"]["/health"]["get"]
