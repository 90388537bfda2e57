"""Schema migrations (Alembic) driven from the node: ``agora db upgrade`` and ``serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData
from sqlmodel import SQLModel

from kernel.db import make_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Full-text search objects the migrations create outside the SQLModel metadata.
SEARCH_OBJECTS = ("catalog_fts", "search_vector", "ix_catalog_entry_search")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic hook: leave the full-text search objects out of comparisons."""
    return not (name and (name in SEARCH_OBJECTS or name.startswith("catalog_fts")))


def target_metadata() -> MetaData:
    """The metadata of every domain's tables (importing the models registers them)."""
    import connector.dcp.models
    import connector.models  # noqa: F401
    import contracts.models  # noqa: F401
    import federation.models  # noqa: F401
    import kernel.audit  # noqa: F401
    import marketplace.models  # noqa: F401
    import training_jobs.models  # noqa: F401

    return SQLModel.metadata


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade(url: str, revision: str = "head") -> str | None:
    """Bring the database at ``url`` to ``revision``; returns the revision now current."""
    from alembic import command

    engine = make_engine(url, pool=False)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return current(url)
    finally:
        engine.dispose()


def current(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, pool=False)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def pending_changes(url: str) -> list[Any]:
    """What autogenerate would add to a new revision (empty when models match migrations)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, pool=False)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "compare_server_default": True, "include_name": include_name},
            )
            return list(compare_metadata(ctx, target_metadata()))
    finally:
        engine.dispose()
