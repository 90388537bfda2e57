"""Workers that take queued jobs from the database and run them.

``agora serve`` starts a pool inside the node (``AGORA_JOBS_WORKERS`` threads); ``agora worker``
runs the same pool as its own process, so several machines sharing the PostgreSQL database
and object store run jobs side by side — each job is claimed by exactly one worker.
While a job runs its worker sends a heartbeat every few seconds and picks up cancel requests.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from kernel.worker import BackgroundWorker
from training_jobs.runner import JobRunner
from training_jobs.states import JobStates

log = logging.getLogger("agora.jobs")
HEARTBEAT_SECONDS = 2.0
RECOVER_EVERY = 15.0


class JobWorker(BackgroundWorker):
    """One worker thread: claims a job, runs it to a final state, claims the next."""

    def __init__(
        self,
        runner: JobRunner,
        states: JobStates,
        name: str,
        *,
        poll: float = 1.0,
        on_idle: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(poll)
        self._on_idle = on_idle
        self.runner = runner
        self.states = states
        self.worker_name = name
        self.name = f"agora-job-{name}"

    def tick(self) -> float | None:
        job_id = self.states.claim(self.worker_name)
        if job_id is None:
            self._on_idle()
            return None
        cancel = threading.Event()
        done = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job_id, cancel, done), daemon=True)
        beat.start()
        try:
            log.info("%s runs job %s", self.worker_name, job_id)
            self.runner.run(job_id, cancel)
        finally:
            done.set()
            beat.join()
        return 0.0  # look for the next job at once

    def _beat(self, job_id: str, cancel: threading.Event, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            try:
                if self.states.heartbeat(job_id):
                    cancel.set()
            except Exception:  # the database may blip; the next beat tries again
                log.exception("heartbeat of job %s failed", job_id)


class JobPool:
    """``size`` workers plus the recovery of jobs whose worker died."""

    def __init__(self, runner: JobRunner, states: JobStates, size: int, *, label: str = "") -> None:
        host = label or f"{socket.gethostname()}:{os.getpid()}"
        self.states = states
        self.workers = [
            JobWorker(runner, states, f"{host}/{i}", on_idle=self._recover_if_due) for i in range(size)
        ]
        self._recovered_at = 0.0

    def start(self) -> None:
        self.recover()
        for worker in self.workers:
            worker.start()

    def wake(self) -> None:
        for worker in self.workers:
            worker.wake()

    def _recover_if_due(self) -> None:
        if time.monotonic() - self._recovered_at > RECOVER_EVERY:
            self.recover()

    def recover(self) -> int:
        self._recovered_at = time.monotonic()
        moved = self.states.recover_stale()
        if moved:
            log.warning("%d job(s) whose worker stopped were queued again or failed", moved)
            for worker in self.workers:
                worker.wake()
        return moved

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs. A job still running is left to die with the process (its sandbox
        dies with its parent) and is queued again by the next start's recovery."""
        for worker in self.workers:
            worker.stop(timeout=timeout / max(len(self.workers), 1))
