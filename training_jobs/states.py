"""Job states in the database: the queue, legal transitions, cancellation and recovery.

The legal moves and the transition log are :data:`training_jobs.models.JOB_LIFECYCLE`, the
one :class:`kernel.lifecycle.Lifecycle` every long-running record uses.

Every change is one conditional ``UPDATE`` (or a row locked ``FOR UPDATE``), so two workers,
a cancel and a worker, or two replicas on PostgreSQL never both move one job. Workers take
jobs with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite the conditional
update alone decides. A job whose worker stopped sending heartbeats is queued again once,
then failed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.lifecycle import entry
from training_jobs.models import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    JOB_LIFECYCLE,
    PROVISIONING,
    QUEUED,
    Job,
)

STALE_AFTER = timedelta(seconds=60)
MAX_ATTEMPTS = 2
CLAIM_ATTEMPTS = 20


__all__ = ["JobStates", "entry"]


class JobStates:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, job_id: str) -> Job:
        with Session(self.engine) as session:
            return fetch(session, Job, job_id, f"no job {job_id}")

    def claim(self, worker: str) -> str | None:
        """Take the oldest queued provider job for ``worker`` (state PROVISIONING), or None
        when none is queued. Losing a race to another worker means trying the next job."""
        for _ in range(CLAIM_ATTEMPTS):
            taken, job_id = self._claim_one(worker)
            if taken or job_id is None:
                return job_id
        return None

    def _claim_one(self, worker: str) -> tuple[bool, str | None]:
        with transaction(self.engine) as session:
            query = (
                select(Job.id)
                .where(Job.role == "provider", Job.state == QUEUED)
                .order_by(col(Job.created_at))
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            job_id = session.exec(query).first()
            if job_id is None:
                return False, None
            job = session.get(Job, job_id)
            assert job is not None
            JOB_LIFECYCLE.check(QUEUED, PROVISIONING)
            taken = session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state) == QUEUED)
                .values(
                    state=PROVISIONING,
                    worker=worker,
                    heartbeat_at=utcnow(),
                    attempts=col(Job.attempts) + 1,
                    progress=0.0,
                    reason="preparing the sandbox",
                    history=[*job.history, entry(PROVISIONING, f"taken by worker {worker}")],
                    updated_at=utcnow(),
                )
            )
            if getattr(taken, "rowcount", 0) != 1:
                return False, str(job_id)
        return True, str(job_id)

    def advance(self, job_id: str, state: str, reason: str, *, progress: float) -> bool:
        """Move a running job on; False when it was cancelled (or ended) meanwhile."""
        with transaction(self.engine) as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None or job.state in FINAL_STATES or job.cancel_requested:
                return False
            JOB_LIFECYCLE.move(job, state, reason)
            job.progress = progress
            job.heartbeat_at = utcnow()
        return True

    def progress(self, job_id: str, value: float) -> None:
        with transaction(self.engine) as session:
            session.execute(
                update(Job)
                .where(col(Job.id) == job_id, col(Job.state).in_(ACTIVE_STATES))
                .values(progress=value, updated_at=utcnow())
            )

    def heartbeat(self, job_id: str) -> bool:
        """Tell the others this job's worker lives; True when a cancel was asked for."""
        with transaction(self.engine) as session:
            session.execute(update(Job).where(col(Job.id) == job_id).values(heartbeat_at=utcnow()))
            job = session.get(Job, job_id)
            return bool(job is None or job.cancel_requested)

    def finish(self, job_id: str, state: str, reason: str, *, result: dict[str, Any] | None = None) -> bool:
        with transaction(self.engine) as session:
            return self.finish_in(session, job_id, state, reason, result=result)

    def finish_in(
        self, session: Session, job_id: str, state: str, reason: str, *, result: dict[str, Any] | None = None
    ) -> bool:
        """End a job in the caller's transaction; False when it had already ended."""
        assert state in FINAL_STATES
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state in FINAL_STATES:
            return False
        if job.cancel_requested and state != CANCELLED:
            state, reason = CANCELLED, f"cancelled on request (the job had reached: {reason})"
        JOB_LIFECYCLE.move(job, state, reason)
        job.progress = 1.0 if state == "COMPLETED" else job.progress
        if result is not None:
            job.result = {**job.result, **result}
        job.worker = None
        session.add(job)
        return True

    def request_cancel(self, job_id: str, reason: str) -> Job:
        """Cancel a queued job at once; a running one is stopped by its worker."""
        with transaction(self.engine) as session:
            job = fetch(session, Job, job_id, f"no job {job_id}", lock=True)
            if job.state in FINAL_STATES:
                return job
            job.cancel_requested = True
            if job.state == QUEUED:
                JOB_LIFECYCLE.move(job, CANCELLED, reason)
            job.updated_at = utcnow()
            session.add(job)
            session.flush()
            session.refresh(job)
            session.expunge(job)
            return job

    def recover_stale(self) -> int:
        """Requeue (once) or fail jobs whose worker stopped sending heartbeats."""
        cutoff = utcnow() - STALE_AFTER
        moved = 0
        with transaction(self.engine) as session:
            rows = session.exec(
                select(Job)
                .where(Job.role == "provider", col(Job.state).in_(ACTIVE_STATES))
                .with_for_update(skip_locked=True)
            ).all()
            for job in rows:
                if job.heartbeat_at is not None and as_utc(job.heartbeat_at) > cutoff:
                    continue
                lost = f"its worker {job.worker or '?'} stopped (node restart or crash)"
                if job.attempts < MAX_ATTEMPTS and not job.cancel_requested:
                    JOB_LIFECYCLE.move(job, QUEUED, f"queued again: {lost}")
                elif job.cancel_requested:
                    JOB_LIFECYCLE.move(job, CANCELLED, "cancelled on request")
                else:
                    JOB_LIFECYCLE.move(job, FAILED, f"{lost}, {job.attempts} times")
                job.worker = None
                session.add(job)
                moved += 1
        return moved
