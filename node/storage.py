"""Object-store implementations and the factory that picks one from the settings.

* ``file://DIR`` (the default): one file per digest under ``DIR/ab/<hex>``, written to a
  staging file in ``DIR/.staging``, fsynced, then atomically renamed into place.
* ``s3://BUCKET``: any S3-compatible server (MinIO, Ceph, AWS) through the ``minio`` SDK;
  the bucket is created when missing. Uploads are staged on local disk first, so the
  digest is known before the object is named.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from kernel.errors import ConfigurationError, ServiceUnavailable
from kernel.hashing import parse_digest
from kernel.storage import CHUNK, ObjectInfo, ObjectStore, StagedObject, missing
from node.settings import Settings


class LocalObjectStore(ObjectStore):
    kind = "file"

    def __init__(self, root: Path) -> None:
        super().__init__(root / ".staging")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        digest = parse_digest(sha256)
        return self.root / digest[:2] / digest

    def local_path(self, sha256: str) -> Path | None:
        return self._path(sha256)

    def _commit(self, staged: StagedObject, media_type: str) -> ObjectInfo:
        target = self._path(staged.sha256)
        if target.exists():
            return ObjectInfo(staged.sha256, staged.size, created=False)
        target.parent.mkdir(exist_ok=True)
        os.replace(staged.path, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return ObjectInfo(staged.sha256, staged.size, created=True)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise missing(sha256) from None

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(sha256)
        try:
            f = path.open("rb", buffering=0)
        except FileNotFoundError:
            raise missing(sha256) from None
        return _read_file(f, start, end)

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for path in self.root.glob("[0-9a-f][0-9a-f]/*"):
            if path.is_file():
                yield path.name

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise ServiceUnavailable(f"object directory {self.root} is not writable")


def _read_file(f: Any, start: int, end: int | None) -> Iterator[bytes]:
    with f:
        f.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            chunk = f.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


class S3ObjectStore(ObjectStore):
    kind = "s3"

    def __init__(self, client: Any, bucket: str, staging_dir: Path, prefix: str = "sha256/") -> None:
        super().__init__(staging_dir)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        with _s3_errors(f"bucket {bucket}"):
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)

    def _key(self, sha256: str) -> str:
        digest = parse_digest(sha256)
        return f"{self.prefix}{digest[:2]}/{digest}"

    def _commit(self, staged: StagedObject, media_type: str) -> ObjectInfo:
        if self.exists(staged.sha256):
            return ObjectInfo(staged.sha256, staged.size, created=False)
        with _s3_errors("upload"):
            self.client.fput_object(
                self.bucket,
                self._key(staged.sha256),
                str(staged.path),
                content_type=media_type,
                metadata={"sha256": staged.sha256},
                part_size=64 * 1024 * 1024,
            )
        return ObjectInfo(staged.sha256, staged.size, created=True)

    def _stat(self, sha256: str) -> Any:
        from minio.error import S3Error

        try:
            with _s3_errors("stat"):
                return self.client.stat_object(self.bucket, self._key(sha256))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return None
            raise ServiceUnavailable(f"S3 error: {exc.code}: {exc.message}") from exc

    def exists(self, sha256: str) -> bool:
        return self._stat(sha256) is not None

    def size(self, sha256: str) -> int:
        stat = self._stat(sha256)
        if stat is None:
            raise missing(sha256)
        return int(stat.size)

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if not self.exists(sha256):
            raise missing(sha256)
        length = 0 if end is None else end - start
        if end is not None and length <= 0:
            return iter(())
        with _s3_errors("download"):
            response = self.client.get_object(self.bucket, self._key(sha256), offset=start, length=length)
        return _read_response(response)

    def delete(self, sha256: str) -> None:
        with _s3_errors("delete"):
            self.client.remove_object(self.bucket, self._key(sha256))

    def digests(self) -> Iterator[str]:
        with _s3_errors("list"):
            for obj in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True):
                yield obj.object_name.rsplit("/", 1)[-1]

    def check(self) -> None:
        with _s3_errors(f"bucket {self.bucket}"):
            if not self.client.bucket_exists(self.bucket):
                raise ServiceUnavailable(f"S3 bucket {self.bucket} does not exist")


def _read_response(response: Any) -> Iterator[bytes]:
    try:
        yield from response.stream(CHUNK)
    finally:
        response.close()
        response.release_conn()


class _s3_errors:
    """Translate connection failures of the S3 server into :class:`ServiceUnavailable`."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        from urllib3.exceptions import HTTPError

        if isinstance(exc, HTTPError | OSError):
            raise ServiceUnavailable(f"S3 server unreachable ({self.what}): {exc}") from exc
        return False


def make_object_store(settings: Settings) -> ObjectStore:
    """The store ``AGORA_STORAGE_URL`` names."""
    url = urlparse(settings.effective_storage_url)
    if url.scheme == "file":
        return LocalObjectStore(Path(url.path))
    if url.scheme == "s3":
        from minio import Minio

        if not url.netloc:
            raise ConfigurationError("AGORA_STORAGE_URL=s3://BUCKET needs a bucket name")
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value() or None,
            secret_key=settings.s3_secret_key.get_secret_value() or None,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        prefix = url.path.strip("/")
        return S3ObjectStore(
            client, url.netloc, settings.staging_dir, prefix=f"{prefix}/sha256/" if prefix else "sha256/"
        )
    raise ConfigurationError(
        f"AGORA_STORAGE_URL must start with file:// or s3://, got {settings.effective_storage_url!r}"
    )
