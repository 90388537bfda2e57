"""Shared fixtures: node homes and settings, an in-process app, and the real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests import services


@pytest.fixture(scope="session")
def postgres() -> Iterator[services.Postgres]:
    pg = services.start_postgres()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[services.S3Server]:
    server = services.start_s3()
    yield server
    server.stop()


@pytest.fixture
def settings_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings for a fresh, initialised node home (SQLite + local files unless overridden)."""
    from node.identity import init_home
    from node.settings import Settings

    counter = 0

    def make(**overrides: object) -> Settings:
        nonlocal counter
        counter += 1
        home = overrides.pop("home", tmp_path / f"node{counter}")
        settings = Settings(
            home=home, key_passphrase=SecretStr("test-passphrase"), name=f"Org {counter}", **overrides
        )
        init_home(settings, settings.name)
        return settings

    return make


@pytest.fixture
def settings(settings_factory):  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
def runtime(settings):  # type: ignore[no-untyped-def]
    from node import db
    from node.runtime import build_runtime

    db.upgrade(settings.effective_database_url)
    rt = build_runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def client(runtime):  # type: ignore[no-untyped-def]
    """Litestar's test client around a real app (SQLite file, local object store)."""
    from litestar.testing import TestClient

    from node.app import create_app

    with TestClient(app=create_app(runtime)) as tc:
        yield tc


@pytest.fixture
def auth(runtime):  # type: ignore[no-untyped-def]
    """``auth("scope", …)`` → Authorization headers with a node-signed token."""

    def headers(*scopes: str, ttl: int = 600) -> dict[str, str]:
        token = runtime.issuer.issue(list(scopes) or ["admin"], ttl)
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def live_node(tmp_path: Path) -> Iterator[services.LiveNode]:
    node = services.start_node(tmp_path / "live")
    yield node
    node.stop()


@pytest.fixture(scope="session")
def anvil() -> Iterator[services.Anvil]:
    node = services.start_anvil()
    yield node
    node.stop()
