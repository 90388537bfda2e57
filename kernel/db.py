"""Database plumbing shared by every domain: engines, sessions, time.

SQLite (the embedded default) runs in WAL mode with foreign keys enforced; PostgreSQL is
reached through psycopg 3. Domains receive a :class:`sqlalchemy.orm.sessionmaker` (or a
session) from the node; nothing here reads configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from kernel.errors import NotFound, ServiceUnavailable

Row = TypeVar("Row")


def utcnow() -> datetime:
    """Timezone-aware now; stored as UTC in every database."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def backend_name(url: str) -> str:
    """``sqlite`` or ``postgresql`` (the dialect part of a SQLAlchemy URL)."""
    return make_url(url).get_backend_name()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str, *, pool: bool = True) -> Engine:
    """An engine for ``url`` with the per-backend settings Agora relies on."""
    backend = backend_name(url)
    kwargs: dict[str, Any] = {}
    if not pool:
        kwargs["poolclass"] = NullPool
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        if pool:
            # more connections than request threads (anyio's 40) and workers: requests queued
            # behind SQLite's one write lock each hold a connection, and a pool they empty
            # would stall the writer that holds the lock until the busy timeout
            kwargs.update(pool_size=10, max_overflow=50)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if pool:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    return create_engine(url, **kwargs)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error.

    A database that cannot be reached becomes :class:`ServiceUnavailable` so the caller
    gets a 503 with the reason instead of a stack trace.
    """
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except OperationalError as exc:
        raise ServiceUnavailable(f"database unavailable: {exc.orig}") from exc


def fetch(
    session: Session,
    model: type[Row],
    key: Any,
    missing: str,
    *,
    where: Callable[[Row], bool] = lambda _row: True,
    lock: bool = False,
) -> Row:
    """The row of ``model`` with primary key ``key``, or :class:`NotFound` with ``missing``.

    ``where`` narrows what counts as found (a role, a state, a counterparty), so a row the
    caller may not see is reported exactly like one that does not exist.
    """
    row = session.get(model, key, with_for_update=lock)
    if row is None or not where(row):
        raise NotFound(missing)
    return row
