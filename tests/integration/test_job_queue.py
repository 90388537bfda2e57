"""The job queue on SQLite and on PostgreSQL: several workers, each job claimed exactly once;
cancel; recovery of jobs whose worker died."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col

from kernel.db import make_engine, transaction, utcnow
from node import db
from tests import services
from training_jobs.models import CANCELLED, FAILED, QUEUED, RUNNING, Job
from training_jobs.states import JobStates, entry

JOBS = 60
WORKERS = 6


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'queue.db'}"
    else:
        pg: services.Postgres = request.getfixturevalue("postgres")
        url = pg.new_database()
    db.upgrade(url)
    yield url


def queue_jobs(engine: Engine, count: int) -> list[str]:
    ids = [f"urn:uuid:00000000-0000-0000-0000-{i:012d}" for i in range(count)]
    with transaction(engine) as session:
        for job_id in ids:
            session.add(
                Job(
                    id=job_id,
                    role="provider",
                    counterparty="0x" + "1" * 40,
                    name="q",
                    agreement_id="0x" + "2" * 64,
                    offering_id="o",
                    history=[entry(QUEUED, "waiting")],
                )
            )
    return ids


def test_every_job_is_claimed_by_exactly_one_worker(database_url: str) -> None:
    ids = queue_jobs(make_engine(database_url), JOBS)
    claimed: list[tuple[str, str]] = []
    lock = threading.Lock()
    start = threading.Barrier(WORKERS)

    errors: list[BaseException] = []

    def worker(n: int) -> None:
        states = JobStates(make_engine(database_url))  # one engine each, like separate processes
        start.wait()
        try:
            while (job_id := states.claim(f"w{n}")) is not None:
                with lock:
                    claimed.append((job_id, f"w{n}"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            states.engine.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    counts = Counter(job_id for job_id, _ in claimed)
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}, [j for j, c in counts.items() if c > 1]
    assert len({w for _, w in claimed}) > 1  # the work was shared, not taken by one worker
    states = JobStates(make_engine(database_url))
    job = states.get(ids[0])
    assert job.state == "PROVISIONING" and job.attempts == 1 and job.worker is not None
    assert [h["state"] for h in job.history] == [QUEUED, "PROVISIONING"]


def test_cancel_and_recovery(database_url: str) -> None:
    engine = make_engine(database_url)
    states = JobStates(engine)
    queued, running, lost, twice = queue_jobs(engine, 4)
    # a queued job is cancelled at once
    assert states.request_cancel(queued, "cancelled by test").state == CANCELLED
    assert states.claim("w") == running  # the cancelled one is never taken
    # a running job is only flagged: its worker stops it and ends it CANCELLED
    assert states.advance(running, RUNNING, "running", progress=0.1)
    assert states.request_cancel(running, "cancelled by test").cancel_requested
    assert states.heartbeat(running) is True
    assert not states.advance(running, "VERIFYING", "verifying", progress=0.7)
    assert states.finish(running, FAILED, "the sandbox was killed")
    assert states.get(running).state == CANCELLED
    # a worker that stopped sending heartbeats: its job is queued again once, then failed
    assert states.claim("dead") == lost
    with transaction(engine) as session:
        session.execute(update(Job).where(col(Job.id) == twice).values(attempts=1))
    assert states.claim("dead") == twice
    stale = utcnow() - timedelta(minutes=5)
    with transaction(engine) as session:
        session.execute(update(Job).where(col(Job.id).in_([lost, twice])).values(heartbeat_at=stale))
    assert states.recover_stale() == 2
    assert states.get(lost).state == QUEUED and "stopped" in states.get(lost).reason
    assert states.get(twice).state == FAILED and "2 times" in states.get(twice).reason
    assert states.claim("alive") == lost
    engine.dispose()
