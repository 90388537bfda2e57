"""The node's identity (``init_home``) and the ``agora init`` / ``agora token create`` commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import is_checksum_address
from joserfc import jwt
from joserfc.jwk import ECKey
from pydantic import SecretStr

from kernel.errors import ConfigurationError, Conflict
from node.auth import TokenVerifier
from node.identity import (
    init_home,
    org_private_key,
    participant_address,
    token_signing_key,
)
from node.settings import CONFIG_FILE, Settings

PASSPHRASE = "correct horse battery staple"
AGORA = str(Path(sys.executable).with_name("agora"))
IDENTITY_FILES = ("keystore.json", "token-key.jwk", CONFIG_FILE)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("AGORA_"):
            monkeypatch.delenv(name)


def make_settings(home: Path, passphrase: str | None = PASSPHRASE, **kw: object) -> Settings:
    secret = SecretStr(passphrase) if passphrase is not None else None
    return Settings(home=home, key_passphrase=secret, **kw)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(home: Path) -> dict[str, bytes]:
    return {name: (home / name).read_bytes() for name in sorted(os.listdir(home))}


# init_home -------------------------------------------------------------------------------------


def test_init_creates_a_web3_keystore_the_passphrase_decrypts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = init_home(make_settings(home), "ACME")
    keystore = json.loads((home / "keystore.json").read_text())
    assert keystore["version"] == 3
    assert keystore["crypto"]["kdf"] == "scrypt"
    key = Account.decrypt(keystore, PASSPHRASE)
    assert Account.from_key(key).address == result.address
    with pytest.raises(ValueError):
        Account.decrypt(keystore, "not the passphrase")


def test_init_address_is_checksummed_and_matches_the_keystore(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    result = init_home(settings, "ACME")
    assert is_checksum_address(result.address)
    assert result.address != result.address.lower()  # mixed case: the checksum is really applied
    keystore = json.loads(settings.keystore_path.read_text())
    assert ("0x" + keystore["address"]).lower() == result.address.lower()
    assert participant_address(settings) == result.address
    assert result.home == settings.home


def test_init_writes_private_files_with_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home), "ACME")
    assert mode(home / "token-key.jwk") == 0o600
    assert mode(home / "keystore.json") == 0o600
    assert mode(home) == 0o700


def test_token_key_is_a_private_p256_key_with_a_kid(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    init_home(settings, "ACME")
    data = json.loads(settings.token_key_path.read_text())
    assert data["kty"] == "EC"
    assert data["crv"] == "P-256"
    assert data["alg"] == "ES256"
    assert "d" in data and data["kid"]
    key = token_signing_key(settings)
    assert isinstance(key, ECKey)
    assert key.kid == data["kid"]
    assert key.is_private


def test_init_writes_the_name_and_public_url_into_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home), "  ACME Corp  ", public_url="https://acme.example:8443")
    reloaded = Settings(home=home)
    assert reloaded.name == "ACME Corp"
    assert reloaded.public_url == "https://acme.example:8443"


@pytest.mark.parametrize(
    "name",
    ['Quote " and \\ backslash', "Emoji 😀 outside the BMP", "Zürich Ø", "tab\tand\x7fdel"],
)
def test_any_name_round_trips_through_config_toml(tmp_path: Path, name: str) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home), name)
    assert Settings(home=home).name == name


def test_blank_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(ConfigurationError, match="name"):
        init_home(make_settings(home), "   ")
    assert not (home / "keystore.json").exists()


def test_second_init_is_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = init_home(make_settings(home), "ACME")
    before = snapshot(home)
    with pytest.raises(Conflict) as info:
        init_home(make_settings(home, passphrase="other"), "Another name", public_url="https://x.example")
    assert "already holds an identity" in info.value.detail
    assert snapshot(home) == before
    assert participant_address(make_settings(home)) == first.address


def test_given_passphrase_writes_no_passphrase_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    result = init_home(settings, "ACME")
    assert result.passphrase_file is None
    assert not settings.passphrase_path.exists()


def test_without_passphrase_one_is_generated_into_a_private_file(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", passphrase=None)
    result = init_home(settings, "ACME")
    assert result.passphrase_file == settings.passphrase_path
    assert mode(settings.passphrase_path) == 0o600
    passphrase = settings.passphrase_path.read_text().strip()
    assert len(passphrase) >= 32
    key = org_private_key(settings)
    assert Account.from_key(key).address == result.address
    keystore = json.loads(settings.keystore_path.read_text())
    assert Account.decrypt(keystore, passphrase) == key


def test_org_private_key_with_the_right_passphrase(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home")
    result = init_home(settings, "ACME")
    assert Account.from_key(org_private_key(settings)).address == result.address


def test_wrong_passphrase_is_a_configuration_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home), "ACME")
    with pytest.raises(ConfigurationError, match="cannot decrypt"):
        org_private_key(make_settings(home, passphrase="wrong"))


def test_env_passphrase_wins_over_the_generated_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home, passphrase=None), "ACME")
    with pytest.raises(ConfigurationError, match="cannot decrypt"):
        org_private_key(make_settings(home, passphrase="not the generated one"))


def test_no_passphrase_anywhere_is_a_configuration_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(make_settings(home), "ACME")
    with pytest.raises(ConfigurationError, match="AGORA_KEY_PASSPHRASE"):
        org_private_key(make_settings(home, passphrase=None))


@pytest.mark.parametrize("reader", [participant_address, org_private_key, token_signing_key])
def test_reading_an_uninitialised_home_says_to_run_init(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match="agora init"):
        reader(make_settings(tmp_path / "empty"))


def test_an_interrupted_init_can_be_run_again(tmp_path: Path) -> None:
    """Leftovers of an init that died before writing the keystore must not block a rerun."""
    settings = make_settings(tmp_path / "home", passphrase=None)
    settings.home.mkdir(mode=0o700)
    settings.passphrase_path.write_text("stale passphrase of the interrupted run")
    (settings.home / CONFIG_FILE).write_text('name = "half"\n')
    result = init_home(settings, "ACME")
    assert Account.from_key(org_private_key(settings)).address == result.address
    assert Settings(home=settings.home).name == "ACME"
    assert mode(settings.passphrase_path) == 0o600


def test_concurrent_inits_create_exactly_one_consistent_identity(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", passphrase=None)
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(init_home(settings, "ACME").address)
        except Conflict as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    addresses = [o for o in outcomes if isinstance(o, str)]
    assert len(outcomes) == 3
    assert len(addresses) == 1
    assert Account.from_key(org_private_key(settings)).address == addresses[0]


# The command line ------------------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AGORA_")}
    env["AGORA_KEY_PASSPHRASE"] = PASSPHRASE
    env["COLUMNS"] = "500"  # rich would wrap long messages at 80 columns
    env.update(extra)
    return env


def agora(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGORA, *args], capture_output=True, text=True, env=env or cli_env(), timeout=60)


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_cli_init_prints_the_checksummed_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = agora("init", "--name", "ACME", "--home", str(home))
    assert result.returncode == 0, result.stderr
    address = result.stdout.strip().splitlines()[-1]
    assert is_checksum_address(address)
    assert address == participant_address(make_settings(home))
    assert Settings(home=home).name == "ACME"


def test_cli_second_init_fails_with_a_reason_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert agora("init", "--name", "ACME", "--home", str(home)).returncode == 0
    before = snapshot(home)
    result = agora("init", "--name", "Other", "--home", str(home))
    assert result.returncode == 1
    assert "already holds an identity" in one_line(result.stderr)
    assert "0x" not in result.stdout
    assert snapshot(home) == before


def test_cli_init_without_passphrase_generates_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env()
    del env["AGORA_KEY_PASSPHRASE"]
    result = agora("init", "--name", "ACME", "--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    assert "keystore.passphrase" in one_line(result.stderr)
    settings = make_settings(home, passphrase=None)
    address = result.stdout.strip().splitlines()[-1]
    assert Account.from_key(org_private_key(settings)).address == address


@pytest.fixture(scope="module")
def cli_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One home initialised by the CLI (public URL with a trailing slash) for the token tests."""
    home = tmp_path_factory.mktemp("cli") / "home"
    result = agora("init", "--name", "ACME", "--home", str(home), "--public-url", "http://node.test:9000/")
    assert result.returncode == 0, result.stderr
    return home, result.stdout.strip().splitlines()[-1]


def public_key_of(home: Path) -> ECKey:
    data = json.loads((home / "token-key.jwk").read_text())
    public = ECKey.import_key({k: v for k, v in data.items() if k != "d"})
    assert not public.is_private
    return public


def test_cli_token_create_prints_a_jwt_with_the_expected_claims(cli_home: tuple[Path, str]) -> None:
    home, address = cli_home
    result = agora("token", "create", "--scope", "catalog:read", "--ttl", "15m", "--home", str(home))
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2
    decoded = jwt.decode(token, public_key_of(home), algorithms=["ES256"])
    claims = decoded.claims
    assert decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] == public_key_of(home).kid
    assert claims["scope"] == "catalog:read"
    assert claims["iss"] == "http://node.test:9000"
    assert claims["aud"] == address
    assert claims["sub"] == "operator"
    assert abs(claims["exp"] - (time.time() + 15 * 60)) < 30
    assert claims["exp"] - claims["iat"] == 15 * 60


def test_cli_token_is_accepted_by_the_nodes_verifier(cli_home: tuple[Path, str]) -> None:
    home, address = cli_home
    result = agora(
        "token",
        "create",
        "--scope",
        "catalog:read",
        "--scope",
        "jobs:write",
        "--subject",
        "ci-bot",
        "--home",
        str(home),
    )
    assert result.returncode == 0, result.stderr
    settings = Settings(home=home)
    verifier = TokenVerifier(settings.token_issuer, address, public_key_of(home))
    principal = verifier.verify(result.stdout.strip())
    assert principal.subject == "ci-bot"
    assert principal.scopes == {"catalog:read", "jobs:write"}


def test_cli_token_unknown_scope_fails_with_the_reason(cli_home: tuple[Path, str]) -> None:
    home, _ = cli_home
    result = agora("token", "create", "--scope", "catalog:destroy", "--home", str(home))
    assert result.returncode == 1
    assert result.stdout.strip() == ""
    assert "unknown scope(s) catalog:destroy" in one_line(result.stderr)


@pytest.mark.parametrize("ttl", ["1.5h", "0"])
def test_cli_token_bad_ttl_fails(cli_home: tuple[Path, str], ttl: str) -> None:
    home, _ = cli_home
    result = agora("token", "create", "--scope", "admin", f"--ttl={ttl}", "--home", str(home))
    assert result.returncode == 1
    assert result.stdout.strip() == ""
    assert "ttl" in result.stderr


def test_cli_token_ttl_over_the_maximum_fails(cli_home: tuple[Path, str]) -> None:
    home, _ = cli_home
    env = cli_env(AGORA_TOKEN_TTL_MAX_SECONDS="60")
    result = agora("token", "create", "--scope", "admin", "--ttl", "2m", "--home", str(home), env=env)
    assert result.returncode == 1
    assert "exceeds" in one_line(result.stderr)


def test_cli_token_on_an_uninitialised_home_says_to_run_init(tmp_path: Path) -> None:
    result = agora("token", "create", "--scope", "admin", "--home", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "agora init" in one_line(result.stderr)
