"""The object-store boundary: content-addressed, streaming blobs.

Every blob is addressed by the sha256 of its bytes, so the same bytes registered twice are
stored once. Writes go through a *staging* file on local disk that is hashed while it is
written; :meth:`ObjectStore.commit` then moves it into the store under its digest. Nothing
reads a whole object into memory: reads are iterators of chunks with optional byte ranges.

Implementations live in :mod:`node.storage` (local files, S3/MinIO); domains only see
this interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kernel.errors import NotFound

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    sha256: str
    size: int
    created: bool  # False when identical bytes were already stored


class StagedObject:
    """A temp file being written and hashed; removed on exit unless committed.

    With ``background=True`` the hashing and writing happen in a thread of their own, fed
    through a small bounded queue: an upload's receiving and parsing then overlap with the
    hashing and disk writes (both release the GIL), while memory stays bounded.
    """

    QUEUE_CHUNKS = 16

    def __init__(self, directory: Path, *, background: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._hash = hashlib.sha256()
        self.size = 0
        self.committed = False
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=self.QUEUE_CHUNKS)
            self._thread = threading.Thread(target=self._drain, name="agora-staging", daemon=True)
            self._thread.start()

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._queue is None:
            self._write_now(data)
            return
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def _write_now(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self._file.write(data)

    def _drain(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write_now(item)
                except BaseException as exc:  # e.g. a full disk: raised to the writer
                    self._error = exc

    def _settle(self) -> None:
        """Wait until everything queued is hashed and written; re-raise a writer error."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread, self._queue = None, None  # later writes (if any) go straight through
        if self._error is not None:
            raise self._error

    @property
    def sha256(self) -> str:
        self._settle()
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Flush and fsync: after this the bytes survive a crash."""
        self._settle()
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def discard(self) -> None:
        with contextlib.suppress(BaseException):  # discarding anyway: a writer error no longer matters
            self._settle()
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> StagedObject:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.discard()


class ObjectStore(ABC):
    """Content-addressed blob storage."""

    kind: str = "abstract"

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir

    def stage(self, *, background: bool = False) -> StagedObject:
        """Start a write; use as a context manager so a failure leaves nothing behind."""
        return StagedObject(self.staging_dir, background=background)

    def commit(self, staged: StagedObject, media_type: str = "application/octet-stream") -> ObjectInfo:
        """Move a finished staged file into the store under its digest."""
        staged.finish()
        info = self._commit(staged, media_type)
        staged.committed = True
        staged.path.unlink(missing_ok=True)
        return info

    def local_path(self, sha256: str) -> Path | None:
        """Where the object lies on this machine's disk, when the store keeps it there (a reader
        that needs a file may then skip a copy); None for remote stores."""
        return None

    def stage_file(self, path: Path) -> StagedObject:
        """A local file copied into staging (hashed on the way); the caller commits or discards."""
        staged = self.stage()
        try:
            with path.open("rb", buffering=0) as src:
                while chunk := src.read(CHUNK):
                    staged.write(chunk)
        except BaseException:
            staged.discard()
            raise
        return staged

    def put_file(self, path: Path, media_type: str = "application/octet-stream") -> ObjectInfo:
        """Copy a local file into the store (hashing it on the way)."""
        with self.stage_file(path) as staged:
            return self.commit(staged, media_type)

    def put_bytes(self, data: bytes, media_type: str = "application/octet-stream") -> ObjectInfo:
        with self.stage() as staged:
            staged.write(data)
            return self.commit(staged, media_type)

    def sweep_staging(self) -> int:
        """Remove staging files left by a crash; returns how many were removed."""
        if not self.staging_dir.exists():
            return 0
        removed = 0
        for part in self.staging_dir.glob("upload-*.part"):
            part.unlink(missing_ok=True)
            removed += 1
        return removed

    @abstractmethod
    def _commit(self, staged: StagedObject, media_type: str) -> ObjectInfo: ...

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """Stored size in bytes; :class:`NotFound` when absent."""

    @abstractmethod
    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Chunks of bytes ``[start, end)``; :class:`NotFound` when absent."""

    @abstractmethod
    def delete(self, sha256: str) -> None: ...

    @abstractmethod
    def digests(self) -> Iterator[str]:
        """Every stored digest (for garbage collection and audits)."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`ServiceUnavailable` when the store cannot be reached."""


def missing(sha256: str) -> NotFound:
    return NotFound(f"object sha256:{sha256} is not in the store")
