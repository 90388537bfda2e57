"""The HTTP client the command line uses to talk to a node.

Problem documents come back as the same :class:`~kernel.errors.AgoraError` the node
raised, so the CLI prints the node's reason. Uploads and downloads stream with a progress
callback; downloads resume from a ``.part`` file and are checked against the sha256 the
node announces.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from kernel.errors import AgoraError, InvalidInput, ServiceUnavailable, from_problem
from kernel.hashing import repr_digest_hex, sha256_file
from kernel.limits import loads

Progress = Callable[[int], None]


class _CountingReader:
    """A file wrapper that reports each read to a progress callback (for httpx uploads)."""

    def __init__(self, f: BinaryIO, progress: Progress | None) -> None:
        self._f = f
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if self._progress and data:
            self._progress(len(data))
        return data

    def fileno(self) -> int:
        return self._f.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()


class NodeClient:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=max(timeout, 300.0)),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"cannot reach the node at {self.base_url}: {exc}") from exc
        raise_for_problem(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self._send("GET", path, params=clean).json()

    def post_json(self, path: str, body: Any) -> Any:
        return self._send("POST", path, json=body).json()

    def put_json(self, path: str, body: Any) -> Any:
        return self._send("PUT", path, json=body).json()

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path).json()

    def upload(self, path: str, file: Path, fields: dict[str, str], progress: Progress | None = None) -> Any:
        with file.open("rb") as f:
            files = {"file": (file.name, _CountingReader(f, progress), "application/octet-stream")}
            return self._send("POST", path, data=fields, files=files).json()

    def post_files(self, path: str, fields: dict[str, str], files: dict[str, Path]) -> Any:
        """Multipart POST of small fields and several files, each streamed from disk."""
        handles = {name: p.open("rb") for name, p in files.items()}
        try:
            parts = [(name, (files[name].name, f, "application/octet-stream")) for name, f in handles.items()]
            return self._send("POST", path, data=fields, files=parts).json()
        finally:
            for f in handles.values():
                f.close()

    def download(
        self,
        path: str,
        dest: Path,
        *,
        expected_sha256: str | None = None,
        progress: Progress | None = None,
        on_size: Callable[[int], None] | None = None,
    ) -> tuple[str, int]:
        """Stream ``path`` into ``dest`` (resuming ``dest.part``); returns (sha256, size)."""
        part = dest.with_name(dest.name + ".part")
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with self.http.stream("GET", path, headers=headers) as response:
                if response.status_code == 416:
                    offset = 0
                    part.unlink(missing_ok=True)
                    return self.download(path, dest, expected_sha256=expected_sha256, progress=progress)
                if response.status_code >= 400:
                    response.read()
                    raise_for_problem(response)
                if response.status_code != 206:
                    offset = 0
                total = offset + int(response.headers.get("content-length", "0"))
                if on_size:
                    on_size(total)
                if progress and offset:
                    progress(offset)
                expected_sha256 = expected_sha256 or repr_digest_hex(response.headers.get("repr-digest"))
                with part.open("ab" if offset else "wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"download from {self.base_url} interrupted ({exc}); run the command again to resume"
            ) from exc
        digest, size = sha256_file(part)
        if expected_sha256 and digest != expected_sha256:
            part.unlink()
            raise InvalidInput(f"downloaded bytes hash to sha256:{digest}, expected sha256:{expected_sha256}")
        os.replace(part, dest)
        return digest, size


def raise_for_problem(response: httpx.Response) -> None:
    """An error response as the :class:`AgoraError` its problem document names (read first)."""
    if response.status_code < 400:
        return
    try:
        body = loads(response.content, what="the error document")
    except InvalidInput:  # not JSON, or JSON past the bounds (a hostile peer's)
        body = {"detail": response.text[:500] or response.reason_phrase}
    if not isinstance(body, dict):
        body = {"detail": str(body)}
    raise from_problem(body, response.status_code)


__all__ = ["AgoraError", "NodeClient", "raise_for_problem"]
