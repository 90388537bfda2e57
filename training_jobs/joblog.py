"""A job's log: what its code printed and what the node did about it, stored as it comes."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from kernel.db import as_utc, transaction
from training_jobs.models import JobLog

FLUSH_SECONDS = 0.5
FLUSH_LINES = 200
MAX_LINE = 4096


class JobLogSink:
    """Buffers lines and writes them in small batches (a chatty job must not hold the
    database); thread-safe, flushed on close."""

    def __init__(self, engine: Engine, job_id: str) -> None:
        self.engine = engine
        self.job_id = job_id
        self._lines: list[JobLog] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()

    def job(self, line: str) -> None:
        self._add("job", line)

    def export(self, line: str) -> None:
        """A line of the export run, which loaded the consumer's model: consumer code's output."""
        self._add("export", line)

    def audit(self, line: str) -> None:
        """A line of the node's audit run (node code, on the consumer's graph)."""
        self._add("audit", line)

    def private(self, line: str) -> None:
        """What only the provider reads: the full detail behind a failure the consumer sees in
        the node's own words."""
        self._add("node-private", line)

    def node(self, line: str) -> None:
        self._add("node", line)
        self.flush()

    def _add(self, stage: str, line: str) -> None:
        with self._lock:
            self._lines.append(JobLog(job_id=self.job_id, stage=stage, line=line[:MAX_LINE]))
            due = len(self._lines) >= FLUSH_LINES or time.monotonic() - self._last_flush >= FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._last_flush = time.monotonic()
        if lines:
            with transaction(self.engine) as session:
                session.add_all(lines)

    def close(self) -> None:
        self.flush()


def read_log(engine: Engine, job_id: str, *, after: int = 0, limit: int = 1000) -> dict[str, Any]:
    """Lines after sequence number ``after``; ``next`` is where the next read starts."""
    with Session(engine) as session:
        rows = session.exec(
            select(JobLog)
            .where(JobLog.job_id == job_id, col(JobLog.id) > after)
            .order_by(col(JobLog.id))
            .limit(min(max(limit, 1), 5000))
        ).all()
    lines = [
        {"seq": row.id, "at": as_utc(row.at).isoformat(), "stage": row.stage, "line": row.line}
        for row in rows
    ]
    return {"lines": lines, "next": lines[-1]["seq"] if lines else after}
