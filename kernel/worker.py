"""A background worker: a daemon thread that runs one pass every so often, or at once when
woken, and outlives any one failed pass (logged). The notary, the catalog crawler and the
protocol-message dispatcher are each one."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod

log = logging.getLogger("agora.worker")


class BackgroundWorker(ABC):
    name = "agora-worker"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @abstractmethod
    def tick(self) -> float | None:
        """One pass; returns the seconds until the next one (None: the usual interval)."""

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Work arrived: run a pass now rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = self.interval
            try:
                wanted = self.tick()
                if wanted is not None:
                    delay = wanted
            except Exception:  # the worker must outlive any one bad pass
                log.exception("%s: pass failed", self.name)
            self._wake.wait(delay)
            self._wake.clear()
