"""Alembic is the only way the schema changes: head must match the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from kernel.db import make_engine
from node import db

TABLES = {"participant", "asset", "offering", "offering_version", "audit_log", "alembic_version"}


def _check(url: str) -> None:
    assert db.current(url) is None
    revision = db.upgrade(url)
    assert revision is not None
    assert db.current(url) == revision
    engine = make_engine(url, pool=False)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()
    assert db.pending_changes(url) == [], "models and migrations differ: write a revision"
    assert db.upgrade(url) == revision, "a second upgrade is a no-op"


def test_sqlite_upgrade_head_has_no_drift(tmp_path: Path) -> None:
    _check(f"sqlite:///{tmp_path / 'agora.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_head_has_no_drift(postgres) -> None:  # type: ignore[no-untyped-def]
    _check(postgres.new_database())


def test_revisions_are_date_prefixed() -> None:
    names = [p.name for p in (db.MIGRATIONS_DIR / "versions").glob("*.py") if p.name != "__init__.py"]
    assert names
    for name in names:
        year, month, day = name.split("_")[:3]
        assert len(year) == 4 and year.isdigit() and month.isdigit() and day.isdigit(), name


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
