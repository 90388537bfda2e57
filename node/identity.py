"""The organisation's identity: a secp256k1 key in an encrypted keystore, and the node's
token-signing key.

``agora init`` creates both. The org key's checksummed Ethereum address is the
participant id; the keystore is the standard Web3 Secret Storage format (eth-account), so
any Ethereum tool can open it. The token-signing key is a P-256 JWK used to sign the
bearer tokens the node issues (``agora token create``); its public half is served at
``/.well-known/jwks.json``.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel.errors import ConfigurationError, Conflict
from node.settings import CONFIG_FILE, Settings

KEYSTORE_SCRYPT_N = 2**15


@dataclass(frozen=True)
class InitResult:
    address: str
    home: Path
    passphrase_file: Path | None


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (0600); fails with ``FileExistsError`` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _toml_str(value: str) -> str:
    """A TOML basic string. (``json.dumps`` is not one: it writes characters outside the
    BMP as surrogate pairs, ``\\ud83d\\ude00``, which TOML rejects.)"""
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@contextmanager
def _init_lock(home: Path) -> Iterator[None]:
    """Serialise concurrent ``agora init`` runs on one home (released if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    fd = os.open(home, os.O_RDONLY)  # lock the directory itself: no lock file left behind
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def init_home(settings: Settings, name: str, public_url: str | None = None) -> InitResult:
    """Create the data dir, org key, token key and config; refuse to overwrite an identity."""
    home = settings.home
    if settings.keystore_path.exists():
        raise Conflict(f"{home} already holds an identity ({settings.keystore_path.name}); not overwriting")
    if not name.strip():
        raise ConfigurationError("the organisation needs a name (--name)")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _init_lock(home):
        if settings.keystore_path.exists():  # another init finished meanwhile
            raise Conflict(
                f"{home} already holds an identity ({settings.keystore_path.name}); not overwriting"
            )
        return _init_identity(settings, name, public_url)


def _init_identity(settings: Settings, name: str, public_url: str | None) -> InitResult:
    from eth_account import Account
    from joserfc.jwk import ECKey

    home = settings.home
    # The keystore is written last: it marks the home as initialised, so an init that was
    # interrupted half-way can simply be run again (leftovers are replaced).
    passphrase_file: Path | None = None
    if settings.key_passphrase is not None:
        passphrase = settings.key_passphrase.get_secret_value()
    else:
        passphrase = secrets.token_urlsafe(32)
        settings.passphrase_path.unlink(missing_ok=True)  # left by an interrupted init
        _write_private(settings.passphrase_path, passphrase)
        passphrase_file = settings.passphrase_path

    account = Account.create()
    keystore = Account.encrypt(account.key, passphrase, kdf="scrypt", iterations=KEYSTORE_SCRYPT_N)

    token_key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, private=True)
    token_key.ensure_kid()
    if not settings.token_key_path.exists():
        _write_private(settings.token_key_path, json.dumps(token_key.as_dict(private=True)))

    config = home / CONFIG_FILE
    lines = [f"name = {_toml_str(name.strip())}"]
    if public_url:
        lines.append(f"public_url = {_toml_str(public_url)}")
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")

    _write_private(settings.keystore_path, json.dumps(keystore))
    return InitResult(address=account.address, home=home, passphrase_file=passphrase_file)


def participant_address(settings: Settings) -> str:
    """The checksummed address of the org key, read without decrypting the keystore."""
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address("0x" + _keystore(settings)["address"]))


def _keystore(settings: Settings) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(settings.keystore_path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"no node identity in {settings.home}: run `agora init --name NAME` first"
        ) from None
    return data


def org_private_key(settings: Settings) -> bytes:
    """Decrypt the org key (for signing protocol messages and transactions)."""
    from eth_account import Account

    if settings.key_passphrase is not None:
        passphrase = settings.key_passphrase.get_secret_value()
    elif settings.passphrase_path.exists():
        passphrase = settings.passphrase_path.read_text().strip()
    else:
        raise ConfigurationError("the keystore is encrypted: set AGORA_KEY_PASSPHRASE")
    try:
        return bytes(Account.decrypt(_keystore(settings), passphrase))
    except ValueError as exc:
        raise ConfigurationError(f"cannot decrypt the keystore: {exc}") from exc


def token_signing_key(settings: Settings) -> Any:
    """The node's private JWK (joserfc ``ECKey``)."""
    from joserfc.jwk import ECKey

    try:
        data = json.loads(settings.token_key_path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(
            f"no token-signing key in {settings.home}: run `agora init --name NAME` first"
        ) from None
    return ECKey.import_key(data)
