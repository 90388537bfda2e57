"""The holder's Secure Token Service (``POST /dcp/sts/token``): the client is authenticated
first, the form is bounded, what it grants is checked, and what it mints is an ID token for
the audience whose access token the holder redeems once for the scopes asked."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
from joserfc import jws

from connector.dcp.sts import MAX_FORM_BYTES, SecureTokenService
from connector.dcp.tokens import redeem_access_token, type_scope
from connector.dsp.id_tokens import TokenRejected
from kernel.errors import AgoraError
from node.settings import Settings
from tests.unit.test_dcp_flow import MEMBERSHIP, SENSITIVE, World, build_world

CLIENT, SECRET = "tck", "s" * 24
FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def w(tmp_path: Path) -> World:
    return build_world(tmp_path)


@pytest.fixture
def sts(w: World) -> SecureTokenService:
    return SecureTokenService(
        identity=w.holder.identity, signer=w.holder.signer, client_id=CLIENT, client_secret=SECRET
    )


def form(w: World, **fields: str) -> bytes:
    base = {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "audience": w.verifier.did,
        "bearer_access_scope": type_scope(MEMBERSHIP),
    }
    return urlencode({**base, **fields}).encode()


def test_a_token_for_the_audience_redeemed_once_for_the_scopes_asked(
    w: World, sts: SecureTokenService
) -> None:
    scopes = f"{type_scope(MEMBERSHIP)} {type_scope(SENSITIVE)}"
    answer = sts.token(form(w, bearer_access_scope=scopes), FORM)
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 300
    claims = json.loads(jws.extract_compact(answer["access_token"].encode()).payload)
    assert (claims["iss"], claims["sub"], claims["aud"]) == (w.holder.did, w.holder.did, w.verifier.did)
    granted = redeem_access_token(w.service.engine, w.holder.signer, claims["token"], verifier=w.verifier.did)
    assert {s.value for s in granted} == {MEMBERSHIP, SENSITIVE}
    with pytest.raises(TokenRejected):
        redeem_access_token(w.service.engine, w.holder.signer, claims["token"], verifier=w.verifier.did)


def test_the_access_token_is_bound_to_the_audience(w: World, sts: SecureTokenService) -> None:
    answer = sts.token(form(w), FORM)
    access = json.loads(jws.extract_compact(answer["access_token"].encode()).payload)["token"]
    with pytest.raises(TokenRejected):
        redeem_access_token(w.service.engine, w.holder.signer, access, verifier=w.issuer.did)


@pytest.mark.parametrize(
    ("fields", "status", "error", "reason"),
    [
        ({"client_secret": "s" * 23}, 401, "invalid_client", "client id or secret"),
        ({"client_id": "someone"}, 401, "invalid_client", "client id or secret"),
        ({"client_secret": "", "grant_type": "password"}, 400, "invalid_request", "lacks client_secret"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", "client_credentials only"),
        ({"audience": "https://verifier.example"}, 400, "invalid_scope", "verifier's DID"),
        ({"audience": "did:web:a b"}, 400, "invalid_scope", "verifier's DID"),
        (
            {"bearer_access_scope": "org.eclipse.dspace.dcp.vc.type:X:write"},
            400,
            "invalid_scope",
            "not a read scope",
        ),
        ({"bearer_access_scope": "openid profile"}, 400, "invalid_scope", "not a read scope"),
        (
            {"bearer_access_scope": " ".join([type_scope(f"T{i}") for i in range(33)])},
            400,
            "invalid_scope",
            "1 to 32",
        ),
    ],
)
def test_refusals(
    w: World, sts: SecureTokenService, fields: dict[str, str], status: int, error: str, reason: str
) -> None:
    with pytest.raises(AgoraError, match=reason) as info:
        sts.token(form(w, **fields), FORM)
    assert (info.value.status, info.value.extra.get("error")) == (status, error)


def test_a_wrong_secret_is_refused_before_the_grant_is_read(w: World, sts: SecureTokenService) -> None:
    with pytest.raises(AgoraError, match="client id or secret") as info:
        sts.token(form(w, client_secret="x" * 24, audience="nonsense", bearer_access_scope="x"), FORM)
    assert info.value.status == 401


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "reason"),
    [
        (b"grant_type=client_credentials", "application/json", 415, "is a form"),
        (b"grant_type=client_credentials", None, 415, "is a form"),
        (b"a=" + b"x" * MAX_FORM_BYTES, FORM, 400, "limited to"),
        (b"\xff\xfe=1", FORM, 400, "not a readable form"),
        (b"&&&", FORM, 400, "not a readable form"),
        (b"&".join(b"f%d=1" % i for i in range(20)), FORM, 400, "not a readable form"),
        (b"", FORM, 400, "lacks grant_type"),
    ],
)
def test_malformed_requests(
    sts: SecureTokenService, raw: bytes, content_type: str | None, status: int, reason: str
) -> None:
    with pytest.raises(AgoraError, match=reason) as info:
        sts.token(raw, content_type)
    assert info.value.status == status


def test_a_repeated_field_is_refused(w: World, sts: SecureTokenService) -> None:
    raw = form(w) + b"&client_id=other"
    with pytest.raises(AgoraError, match="repeats client_id"):
        sts.token(raw, f"{FORM}; charset=utf-8")


def test_settings_need_both_and_a_long_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("AGORA_DCP_STS_CLIENT_ID", "tck")
    with pytest.raises(ValidationError, match="both dcp_sts_client_id and dcp_sts_client_secret"):
        Settings(home=tmp_path)
    monkeypatch.setenv("AGORA_DCP_STS_CLIENT_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 24 characters"):
        Settings(home=tmp_path)
    monkeypatch.setenv("AGORA_DCP_STS_CLIENT_SECRET", SECRET)
    assert Settings(home=tmp_path).dcp_sts_client_secret.get_secret_value() == SECRET
    with pytest.raises(ValueError, match="at least 24"):
        SecureTokenService(identity=None, signer=None, client_id="tck", client_secret="short")  # type: ignore[arg-type]


def test_settings_load_the_credential_side_only_when_it_is_configured(tmp_path: Path) -> None:
    """Every command builds Settings: unless the token service or membership scopes are set,
    building them must not import the credential modules (0.4 s of joserfc and the verifier)."""
    import os
    import subprocess
    import sys

    probe = (
        "import sys; from node.settings import Settings; Settings(home=sys.argv[1]); "
        "print(sorted(m for m in ('connector.dcp.sts', 'connector.dcp.tokens') if m in sys.modules))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    plain = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert plain.returncode == 0 and plain.stdout.strip() == "[]", plain.stderr[-500:]
    configured = {**env, "AGORA_DCP_STS_CLIENT_ID": CLIENT, "AGORA_DCP_STS_CLIENT_SECRET": SECRET}
    loaded = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], env=configured, capture_output=True, text=True
    )
    assert loaded.returncode == 0 and "connector.dcp.sts" in loaded.stdout, loaded.stderr[-500:]
