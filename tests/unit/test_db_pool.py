"""SQLite under many writers: the one that holds the write lock can still read through a
second connection while the others queue behind the lock, each holding a connection."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session

from kernel.db import make_engine, transaction
from kernel.errors import ServiceUnavailable

WAITERS = 30  # more than anyio's default pool of threads would leave idle


def test_a_writer_holding_the_lock_reads_while_thirty_writers_wait(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pool.db'}")
    with transaction(engine) as session:
        session.execute(text("CREATE TABLE t (x INTEGER)"))
    failures: list[str] = []
    holding = threading.Event()

    def waiter(n: int) -> None:
        holding.wait()
        try:
            with transaction(engine) as session:
                session.execute(text("INSERT INTO t VALUES (:x)"), {"x": n})
        except ServiceUnavailable as exc:
            failures.append(exc.detail)

    threads = [threading.Thread(target=waiter, args=(n,)) for n in range(WAITERS)]
    for thread in threads:
        thread.start()
    read_back: list[int] = []
    with transaction(engine) as session:
        session.execute(text("INSERT INTO t VALUES (-1)"))  # this connection now holds the write lock
        holding.set()
        time.sleep(1.0)  # the others take their connections and queue behind the lock
        with Session(engine) as second:  # a second connection, as a lookup inside a transaction takes
            read_back.append(int(second.execute(text("SELECT count(*) FROM t")).scalar_one()))
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert read_back == [0]  # the second connection sees what was committed, not the open insert
    with Session(engine) as session:
        assert session.execute(text("SELECT count(*) FROM t")).scalar_one() == WAITERS + 1
