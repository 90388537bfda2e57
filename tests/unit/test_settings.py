"""Settings: explicit arguments > AGORA_* environment > $home/config.toml > defaults."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from kernel.errors import ConfigurationError
from node.settings import CONFIG_FILE, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No AGORA_* variable of the developer's shell may leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("AGORA_"):
            monkeypatch.delenv(name)


def write_config(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / CONFIG_FILE).write_text(text, encoding="utf-8")


# Defaults ----------------------------------------------------------------------------------


def test_defaults_without_config_file(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.home == tmp_path
    assert s.name == ""
    assert s.public_url == "http://127.0.0.1:8000"
    assert s.token_issuer == "http://127.0.0.1:8000"
    assert s.import_dirs == []
    assert s.sandbox == "bwrap"
    assert s.key_passphrase is None
    assert s.token is None
    assert not s.oidc_enabled
    assert s.max_upload_bytes == 8 * 1024**3


def test_default_database_is_sqlite_in_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.database_url == ""
    assert s.effective_database_url == f"sqlite:///{tmp_path}/agora.db"


def test_default_storage_is_a_directory_in_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.effective_storage_url == f"file://{tmp_path}/objects"


def test_explicit_database_and_storage_urls_win_over_derived_ones(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, database_url="postgresql+psycopg://u@h/db", storage_url="s3://bucket")
    assert s.effective_database_url == "postgresql+psycopg://u@h/db"
    assert s.effective_storage_url == "s3://bucket"


def test_default_home_is_dot_agora_in_the_users_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings()
    assert s.home == tmp_path / ".agora"
    assert s.effective_database_url == f"sqlite:///{tmp_path}/.agora/agora.db"


def test_home_is_expanded_and_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings(home=Path("~/node")).home == tmp_path / "node"
    monkeypatch.chdir(tmp_path)
    rel = Settings(home=Path("rel"))
    assert rel.home.is_absolute()
    assert rel.home == tmp_path / "rel"


def test_derived_paths_live_in_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.keystore_path == tmp_path / "keystore.json"
    assert s.passphrase_path == tmp_path / "keystore.passphrase"
    assert s.token_key_path == tmp_path / "token-key.jwk"
    assert s.staging_dir == tmp_path / "staging"


def test_token_issuer_drops_a_trailing_slash(tmp_path: Path) -> None:
    assert Settings(home=tmp_path, public_url="https://node.example/").token_issuer == "https://node.example"


# config.toml ---------------------------------------------------------------------------------


def test_config_file_overrides_defaults(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        'name = "ACME"\npublic_url = "https://acme.example"\ndatabase_url = "sqlite:////data/x.db"\n'
        'max_upload_bytes = 1024\nimport_dirs = ["/srv/a", "/srv/b"]\n',
    )
    s = Settings(home=tmp_path)
    assert s.name == "ACME"
    assert s.public_url == "https://acme.example"
    assert s.effective_database_url == "sqlite:////data/x.db"
    assert s.max_upload_bytes == 1024
    assert s.import_dirs == [Path("/srv/a"), Path("/srv/b")]


def test_config_file_of_agora_home_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path / "n", 'name = "From file"\n')
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "n"))
    s = Settings()
    assert s.home == tmp_path / "n"
    assert s.name == "From file"


def test_explicit_home_picks_its_own_config_not_agora_homes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path / "env-home", 'name = "env home"\n')
    write_config(tmp_path / "flag-home", 'name = "flag home"\n')
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "env-home"))
    s = Settings.load(home=tmp_path / "flag-home")
    assert s.home == tmp_path / "flag-home"
    assert s.name == "flag home"


def test_unknown_keys_in_config_file_are_ignored(tmp_path: Path) -> None:
    write_config(tmp_path, 'name = "x"\nnot_a_setting = 3\n')
    s = Settings(home=tmp_path)
    assert s.name == "x"
    assert not hasattr(s, "not_a_setting")


def test_invalid_toml_is_a_configuration_error_naming_the_file(tmp_path: Path) -> None:
    write_config(tmp_path, 'name = "unterminated\n')
    with pytest.raises(ConfigurationError) as info:
        Settings(home=tmp_path)
    assert str(tmp_path / CONFIG_FILE) in info.value.detail
    assert "TOML" in info.value.detail


def test_config_file_is_read_as_utf8(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes('name = "Zürich Ø 😀"\n'.encode())
    assert Settings(home=tmp_path).name == "Zürich Ø 😀"


# Environment ---------------------------------------------------------------------------------


def test_environment_overrides_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(tmp_path, 'name = "From file"\npublic_url = "https://file.example"\n')
    monkeypatch.setenv("AGORA_HOME", str(tmp_path))
    monkeypatch.setenv("AGORA_NAME", "From env")
    s = Settings()
    assert s.name == "From env"
    assert s.public_url == "https://file.example"  # not in the environment: the file still counts


def test_environment_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path))
    monkeypatch.setenv("AGORA_DATABASE_URL", "postgresql+psycopg://agora@db/agora")
    monkeypatch.setenv("AGORA_STORAGE_URL", "s3://objects")
    monkeypatch.setenv("AGORA_MAX_UPLOAD_BYTES", "4096")
    monkeypatch.setenv("AGORA_S3_SECURE", "true")
    monkeypatch.setenv("AGORA_SANDBOX", "podman")
    monkeypatch.setenv("AGORA_OIDC_ISSUER", "https://idp.example")
    s = Settings()
    assert s.effective_database_url == "postgresql+psycopg://agora@db/agora"
    assert s.effective_storage_url == "s3://objects"
    assert s.max_upload_bytes == 4096
    assert s.s3_secure is True
    assert s.sandbox == "podman"
    assert s.oidc_enabled


def test_secrets_from_environment_are_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_KEY_PASSPHRASE", "hunter2-passphrase")
    monkeypatch.setenv("AGORA_TOKEN", "bearer-value")
    s = Settings(home=tmp_path)
    assert isinstance(s.key_passphrase, SecretStr)
    assert s.key_passphrase.get_secret_value() == "hunter2-passphrase"
    assert s.token is not None and s.token.get_secret_value() == "bearer-value"
    assert "hunter2" not in repr(s)
    assert "bearer-value" not in repr(s)


def test_import_dirs_from_environment_are_colon_separated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("AGORA_IMPORT_DIRS", f"{a}:{b}::")
    s = Settings(home=tmp_path)
    assert s.import_dirs == [a, b]


def test_import_dirs_are_expanded_and_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGORA_IMPORT_DIRS", "~/data:rel/../other")
    s = Settings(home=tmp_path)
    assert s.import_dirs == [tmp_path / "data", tmp_path / "other"]


def test_import_dirs_in_environment_override_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, 'import_dirs = ["/from/file"]\n')
    monkeypatch.setenv("AGORA_IMPORT_DIRS", "/from/env")
    assert Settings(home=tmp_path).import_dirs == [Path("/from/env")]


# Explicit arguments --------------------------------------------------------------------------


def test_explicit_arguments_override_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(tmp_path, 'public_url = "https://file.example"\n')
    monkeypatch.setenv("AGORA_PUBLIC_URL", "https://env.example")
    s = Settings.load(home=tmp_path, public_url="https://flag.example")
    assert s.public_url == "https://flag.example"


def test_load_ignores_none_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_HOME", str(tmp_path))
    monkeypatch.setenv("AGORA_URL", "https://env.example")
    s = Settings.load(home=None, url=None)
    assert s.home == tmp_path
    assert s.url == "https://env.example"


def test_load_reports_an_invalid_environment_value_as_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGORA_MAX_UPLOAD_BYTES", "lots")
    with pytest.raises(ConfigurationError) as info:
        Settings.load(home=tmp_path)
    assert "AGORA_MAX_UPLOAD_BYTES" in info.value.detail


@pytest.mark.parametrize(
    ("var", "value"),
    [("AGORA_MAX_UPLOAD_BYTES", "0"), ("AGORA_SANDBOX", "chroot"), ("AGORA_S3_SECURE", "perhaps")],
)
def test_load_rejects_out_of_range_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError) as info:
        Settings.load(home=tmp_path)
    assert var in info.value.detail


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    with pytest.raises(ValidationError):
        s.name = "changed"  # type: ignore[misc]
