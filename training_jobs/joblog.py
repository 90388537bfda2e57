"""A job's log: what its code printed and what the node did about it, stored as it comes,
and the part of it a job's consumer may read.

Stages: ``node`` is the node's own account of the job (always shown to the consumer);
``node-private`` is what only the provider reads (failure detail, and the audit run's output,
which read the held-out rows); every other stage (``job``, ``export`` …) is output of a
sandbox that ran consumer code — the job's own output.
The provider's users read everything (:func:`read_log`). The consumer reads
:func:`read_released`: the node's lines, and the job's output only as far as the offering's
``job_logs`` term allows (see :mod:`marketplace.terms`), decided when the log is served.

The released log is numbered by its own positions (1, 2, 3 …), never by the stored rows'
ids: withheld lines leave no gaps, so the numbers say nothing about how much was held back.
It only ever grows at its end, so a reader following it with ``after`` never misses a line
(unless the terms change meanwhile: then the log is recomputed under the new terms).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from kernel.db import as_utc, transaction
from marketplace.terms import MAX_LINE_CHARS, MAX_RELEASED_LOG_CHARS, TAIL_LINES, JobLogs
from training_jobs.models import JobLog

FLUSH_SECONDS = 0.5
FLUSH_LINES = 200
MAX_LINE = 4096
MAX_PAGE = 5000
# What one job may leave in the database, whatever it prints (sandbox logs are capped per run
# in bytes; empty lines would still be rows). The node's own lines are always kept.
MAX_STORED_LINES = 100_000
NODE = "node"
PRIVATE = "node-private"
END = "end"  # written by JobLogSink.close(): the log of this run is complete
NOT_JOB_OUTPUT = frozenset({NODE, PRIVATE, END})
CUT = "…"
LOG_GRACE_SECONDS = 10.0  # how long an ended job's log may wait for its worker to close it


class JobLogSink:
    """Buffers lines and writes them in small batches (a chatty job must not hold the
    database); thread-safe, flushed on close."""

    def __init__(self, engine: Engine, job_id: str) -> None:
        self.engine = engine
        self.job_id = job_id
        self._lines: list[JobLog] = []
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._kept = 0
        self._dropping = False

    def job(self, line: str) -> None:
        self._add("job", line)

    def export(self, line: str) -> None:
        """A line of the export run, which loaded the consumer's model: consumer code's output."""
        self._add("export", line)

    def private(self, line: str) -> None:
        """What only the provider reads: the full detail behind a failure the consumer sees in
        the node's own words, and the audit run's output (it holds the held-out rows)."""
        self._add(PRIVATE, line)

    def node(self, line: str) -> None:
        self._add(NODE, line)
        self.flush()

    def _add(self, stage: str, line: str) -> None:
        with self._lock:
            if stage not in NOT_JOB_OUTPUT:
                if self._kept >= MAX_STORED_LINES:
                    if self._dropping:
                        return
                    self._dropping = True
                    stage, line = NODE, f"the job printed over {MAX_STORED_LINES} lines; the rest is not kept"
                else:
                    self._kept += 1
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
        """Flush, and mark the log complete (a consumer's tail is cut from a complete log)."""
        with self._lock:
            self._lines.append(JobLog(job_id=self.job_id, stage=END, line=""))
        self.flush()


def read_log(engine: Engine, job_id: str, *, after: int = 0, limit: int = 1000) -> dict[str, Any]:
    """Every line after sequence number ``after`` (the provider's own view); ``next`` is
    where the next read starts, ``complete`` whether the job's run has closed its log."""
    with Session(engine) as session:
        rows = session.exec(
            select(JobLog)
            .where(JobLog.job_id == job_id, col(JobLog.id) > after)
            .order_by(col(JobLog.id))
            .limit(_page(limit))
        ).all()
        complete = _complete(session, job_id)
    lines = [
        {"seq": row.id, "at": as_utc(row.at).isoformat(), "stage": row.stage, "line": row.line}
        for row in rows
        if row.stage != END
    ]
    last = rows[-1].id if rows else None
    return {"lines": lines, "next": last if last is not None else after, "complete": complete}


# The consumer's view -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One line of the released log: a stored row (``row_id``) or a line the node words here."""

    at: datetime
    stage: str = NODE
    row_id: int | None = None
    text: str = ""


def read_released(
    engine: Engine, job_id: str, job_logs: JobLogs, *, after: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """The log as the job's consumer may read it under ``job_logs``:

    * ``none``: the node's lines only;
    * ``tail``: the node's lines, and once the log is complete the last :data:`TAIL_LINES`
      lines of the job's output, appended at its end (a tail taken while the job still runs
      would move, and a reader following it would see every line);
    * ``full``: the node's lines and the job's output as it comes, each line cut at
      :data:`MAX_LINE_CHARS` characters, until :data:`MAX_RELEASED_LOG_CHARS` characters of
      output were released; one node line then says the rest is withheld.

    ``node-private`` lines are never released. Positions number the released lines.
    """
    with Session(engine) as session:
        query = select(JobLog.id, JobLog.stage, JobLog.at, func.length(JobLog.line)).where(
            JobLog.job_id == job_id
        )
        if job_logs == "none":
            query = query.where(col(JobLog.stage).in_([NODE, END]))
        rows = session.exec(query.order_by(col(JobLog.id))).all()
        stored = [(int(r[0] or 0), str(r[1]), r[2], int(r[3] or 0)) for r in rows]
        entries, complete = _released(stored, job_logs)
        start = max(after, 0)
        page = entries[start : start + _page(limit)]
        wanted = [e.row_id for e in page if e.row_id is not None]
        texts = (
            dict(
                session.exec(
                    select(JobLog.id, func.substr(JobLog.line, 1, MAX_LINE)).where(col(JobLog.id).in_(wanted))
                ).all()
            )
            if wanted
            else {}
        )
    lines = []
    for seq, entry in enumerate(page, start=start + 1):
        text = entry.text if entry.row_id is None else str(texts.get(entry.row_id) or "")
        if entry.stage != NODE:
            text = _cut(text)
        lines.append({"seq": seq, "at": as_utc(entry.at).isoformat(), "stage": entry.stage, "line": text})
    return {"lines": lines, "next": start + len(page) if page else max(after, 0), "complete": complete}


def _released(rows: list[tuple[int, str, datetime, int]], job_logs: JobLogs) -> tuple[list[_Entry], bool]:
    """The released entries (in order) and whether the log is complete, from the stored
    rows' (id, stage, time, length). Each entry depends only on the rows before it, except
    the tail, which is placed where the log ends: the released log only grows at its end."""
    entries: list[_Entry] = []
    if rows:
        entries.append(_Entry(rows[0][2], text=_HEADERS[job_logs]))
    output: list[tuple[int, str, datetime]] = []  # the job's output, for the tail
    budget, withheld, complete = MAX_RELEASED_LOG_CHARS, False, False
    for row_id, stage, at, length in rows:
        if stage == END:
            if not complete and job_logs == "tail":
                tail = output[-TAIL_LINES:]
                if tail:
                    entries.append(_Entry(at, text=f"the last {len(tail)} lines of the job's own output:"))
                    entries += [_Entry(when, stage, row_id=i) for i, stage, when in tail]
            complete = True
        elif stage == NODE:
            entries.append(_Entry(at, row_id=row_id))
        elif stage == PRIVATE or complete:
            continue
        elif job_logs == "tail":
            output.append((row_id, stage, at))
        elif job_logs == "full" and not withheld:
            size = min(length, MAX_LINE_CHARS) + 1
            if size > budget:
                withheld = True
                entries.append(
                    _Entry(
                        at,
                        text=f"the rest of the job's output is withheld: the offering's terms release "
                        f"at most {MAX_RELEASED_LOG_CHARS} characters of it",
                    )
                )
                continue
            budget -= size
            entries.append(_Entry(at, stage, row_id=row_id))
    return entries, complete


_HEADERS: dict[str, str] = {
    "none": "the offering's terms release none of the job's own output; the node's lines follow",
    "tail": f"the offering's terms release the last {TAIL_LINES} lines of the job's own output, "
    f"each cut at {MAX_LINE_CHARS} characters, once the job has ended",
    "full": f"the offering's terms release the job's own output, each line cut at {MAX_LINE_CHARS} "
    f"characters, up to {MAX_RELEASED_LOG_CHARS} characters in all",
}


def log_is_whole(state: str, updated_at: str, log: dict[str, Any], *, final_states: tuple[str, ...]) -> bool:
    """Whether a reader following a job's log may stop: the job has ended (``state``, last
    changed at ``updated_at``, ISO 8601) and its log is complete — or the job ended more than
    :data:`LOG_GRACE_SECONDS` ago without one (refused before it ran, or its worker died)."""
    if state not in final_states:
        return False
    if log.get("complete", True):
        return True
    ended = datetime.fromisoformat(updated_at)
    return (datetime.now(UTC) - ended).total_seconds() > LOG_GRACE_SECONDS


def _cut(text: str) -> str:
    return text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - len(CUT)] + CUT


def _page(limit: int) -> int:
    return min(max(limit, 1), MAX_PAGE)


def _complete(session: Session, job_id: str) -> bool:
    found = session.exec(select(JobLog.id).where(JobLog.job_id == job_id, JobLog.stage == END).limit(1))
    return found.first() is not None
