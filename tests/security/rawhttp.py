"""A bare HTTP/1.1 client on a socket, for requests no well-behaved client library sends.

It writes a request head and then body chunks until the server answers or hangs up (a node
may refuse a body long before it ends), and reads one response. Nothing here trusts the
server to be well-behaved either: every read has a deadline.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Answer:
    """What came back: ``status`` is None when the server closed without answering."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    sent: int = 0  # body bytes written before the server answered or closed

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def exchange(
    port: int,
    request_head: bytes,
    body: Iterable[bytes] = (),
    *,
    timeout: float = 30.0,
    close_after_body: bool = False,
) -> Answer:
    """Send ``request_head`` and ``body`` (stopping early when the server answers), then read
    the answer. ``close_after_body``: hang up right after the body, reading nothing."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request_head)
            for chunk in body:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable or time.monotonic() - started > timeout:
                    break  # the server has answered, or hung up
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server stopped reading: its answer, if any, is waiting
        if close_after_body:
            return Answer(None, seconds=time.monotonic() - started, sent=sent)
        raw = _read(sock, started + timeout)
    answer = _parse(raw)
    answer.seconds, answer.sent = time.monotonic() - started, sent
    return answer


def _read(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
        if _complete(data):
            break
    return data


def _complete(data: bytes) -> bool:
    if b"\r\n\r\n" not in data:
        return False
    head_part, _, rest = data.partition(b"\r\n\r\n")
    for line in head_part.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip() or 0)
    return False  # chunked or until close: read on


def _parse(raw: bytes) -> Answer:
    if not raw.startswith(b"HTTP/"):
        return Answer(None, body=raw)
    head_part, _, body = raw.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, body)


def chunked(chunk: bytes, total: int) -> Iterable[bytes]:
    """A chunked body of ``chunk`` repeated up to ``total`` bytes, never terminated."""
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    for _ in range(max(1, total // len(chunk))):
        yield frame


def trickle(data: bytes, pause: float) -> Iterable[bytes]:
    """``data`` a byte at a time, ``pause`` seconds apart."""
    for i in range(len(data)):
        time.sleep(pause)
        yield data[i : i + 1]
