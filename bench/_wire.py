"""A counting proxy on loopback: what two systems really send each other, byte for byte.

Each route listens on one port and forwards every TCP connection to a target port unchanged;
the bytes are counted as they pass. The proxy runs in a process of its own, so its work takes
no GIL time from the bench process (which serves the devchain) or from the systems measured.

Two modes:

* ``http``: HTTP/1.1 is followed message by message (keep-alive, ``Content-Length`` or chunked
  bodies), so each exchange is one :class:`Exchange`: method, path, bytes of the request and of
  the response as they crossed the socket (start line, headers and body), and for a signed
  protocol message the fields that say what it was (``sender``, ``recipient`` from its token
  and, from its body, ``type``, ``round``, ``evaluate_only``, ``blob_bytes``).
* ``tcp``: every chunk forwarded is a :class:`Chunk` (time, direction, bytes): for gRPC over
  HTTP/2, where one long-lived stream carries all the messages, and the caller attributes the
  chunks to phases by time.

Counted is the TCP payload (what the application wrote), not IP and TCP headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

ENVELOPE_PEEK = 1024**2  # a signed message's envelope (its JSON, or the line before its bytes)


@dataclass(frozen=True)
class Exchange:
    route: str
    started: float
    ended: float
    method: str
    path: str
    status: int
    request_bytes: int
    response_bytes: int
    message: dict[str, Any]

    @property
    def total(self) -> int:
        return self.request_bytes + self.response_bytes


@dataclass(frozen=True)
class Chunk:
    route: str
    at: float
    upstream: bool  # client -> server
    size: int


class _Message:
    """One HTTP/1.1 message read incrementally: its head, then a fixed or chunked body."""

    def __init__(self, is_request: bool) -> None:
        self.is_request = is_request
        self.head = b""
        self.head_done = False
        self.size = 0
        self.start_line = ""
        self.headers: dict[str, str] = {}
        self.remaining = 0
        self.chunked = False
        self.until_close = False
        self.chunk_state = "size"  # size | data | crlf | trailer
        self.line = b""
        self.body_peek = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Consume what belongs to this message; the rest (the next message) is returned."""
        pos = 0
        if not self.head_done:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                self.size += len(data)
                return b""
            rest = self.head[end + 4 :]
            self.size += len(data) - len(rest)
            self._parse_head(self.head[:end].decode("latin-1"))
            self.head_done = True
            data, pos = rest, 0
            if self.done:
                return data
        while pos < len(data) and not self.done:
            pos = self._body(data, pos)
        return data[pos:]

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        self.start_line = lines[0]
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.chunked = True
        elif "content-length" in self.headers:
            self.remaining = int(self.headers["content-length"])
            self.done = self.remaining == 0
        elif self.is_request or self.status in (204, 304) or 100 <= self.status < 200:
            self.done = True
        else:
            self.until_close = True

    @property
    def status(self) -> int:
        parts = self.start_line.split(" ")
        return int(parts[1]) if not self.is_request and len(parts) > 1 and parts[1].isdigit() else 0

    def _take(self, data: bytes, pos: int, count: int) -> int:
        piece = data[pos : pos + count]
        if len(self.body_peek) < ENVELOPE_PEEK:
            self.body_peek += piece[: ENVELOPE_PEEK - len(self.body_peek)]
        self.size += len(piece)
        return pos + len(piece)

    def _body(self, data: bytes, pos: int) -> int:
        if self.until_close:
            return self._take(data, pos, len(data) - pos)
        if not self.chunked:
            new = self._take(data, pos, self.remaining)
            self.remaining -= new - pos
            self.done = self.remaining == 0
            return new
        if self.chunk_state == "data":
            new = self._take(data, pos, self.remaining)
            self.remaining -= new - pos
            if self.remaining == 0:
                self.chunk_state = "crlf"
            return new
        # a line: the chunk size, the CRLF after a chunk's data, or a trailer line
        end = data.find(b"\n", pos)
        if end < 0:
            self.line += data[pos:]
            self.size += len(data) - pos
            return len(data)
        self.line += data[pos : end + 1]
        self.size += end + 1 - pos
        line, self.line = self.line.strip(), b""
        if self.chunk_state == "size":
            self.remaining = int(line.split(b";")[0], 16)
            self.chunk_state = "data" if self.remaining else "trailer"
        elif self.chunk_state == "crlf":
            self.chunk_state = "size"
        elif not line:  # the empty line that ends the trailers
            self.done = True
        return end + 1

    def envelope(self) -> dict[str, Any]:
        """What a protocol message says it is (its JSON, the line before its bytes), and who sent
        it to whom (the ``iss`` and ``aud`` of its token, read unchecked), else {}."""
        data = self.body_peek
        if "signed-blob" in self.headers.get("content-type", ""):
            data = data.split(b"\n", 1)[0]
        try:
            body = json.loads(data)
        except ValueError:
            return {}
        if not isinstance(body, dict):
            return {}
        fields = {k: body[k] for k in ("type", "round", "evaluate_only", "blob_bytes") if k in body}
        return fields | _token_parties(self.headers.get("authorization", ""))


def _token_parties(authorization: str) -> dict[str, Any]:
    import base64

    try:
        payload = authorization.removeprefix("Bearer ").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return {"sender": claims.get("iss"), "recipient": claims.get("aud")} if isinstance(claims, dict) else {}


class _Proxy:
    def __init__(self, routes: dict[str, tuple[int, int]], mode: str) -> None:
        self.routes = routes
        self.mode = mode
        self.exchanges: list[Exchange] = []
        self.chunks: list[Chunk] = []

    async def serve(self) -> list[asyncio.Server]:
        servers = []
        for name, (listen, target) in self.routes.items():

            async def handle(
                reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter,
                name: str = name,
                target: int = target,
            ) -> None:
                await self._connection(name, target, reader, writer)

            servers.append(await asyncio.start_server(handle, "127.0.0.1", listen))
        return servers

    async def _connection(
        self, name: str, target: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        pending: list[tuple[float, _Message]] = []
        await asyncio.gather(
            self._pump(name, reader, up_writer, True, pending),
            self._pump(name, up_reader, writer, False, pending),
        )

    async def _pump(
        self,
        name: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: bool,
        pending: list[tuple[float, _Message]],
    ) -> None:
        message: _Message | None = None
        try:
            while data := await reader.read(256 * 1024):
                now = time.time()
                writer.write(data)
                await writer.drain()
                if self.mode == "tcp":
                    self.chunks.append(Chunk(name, now, upstream, len(data)))
                    continue
                while data:
                    if message is None:
                        message = _Message(is_request=upstream)
                        if upstream:
                            pending.append((now, message))
                    data = message.feed(data)
                    if message.done:
                        if not upstream:
                            self._answered(name, now, pending, message)
                        message = None
        except (ConnectionError, OSError):
            pass
        finally:
            if message is not None and message.until_close and not upstream:
                self._answered(name, time.time(), pending, message)
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    def _answered(
        self, name: str, now: float, pending: list[tuple[float, _Message]], response: _Message
    ) -> None:
        if response.status and response.status < 200:
            return  # an interim response: the final one follows
        if not pending:
            return
        started, request = pending.pop(0)
        method, _, rest = request.start_line.partition(" ")
        self.exchanges.append(
            Exchange(
                route=name,
                started=started,
                ended=now,
                method=method,
                path=rest.rsplit(" ", 1)[0],
                status=response.status,
                request_bytes=request.size,
                response_bytes=response.size,
                message=request.envelope(),
            )
        )


def _run(routes: dict[str, tuple[int, int]], mode: str, conn: Connection) -> None:
    """The proxy process: serve until told to stop; hand over what was counted on request."""

    async def main() -> None:
        proxy = _Proxy(routes, mode)
        servers = await proxy.serve()
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "take":
                conn.send((proxy.exchanges, proxy.chunks))
                proxy.exchanges, proxy.chunks = [], []
            else:
                break
        for server in servers:
            server.close()

    asyncio.run(main())


class Tap:
    """The counting proxy in its own process. ``routes``: name -> (listen port, target port)."""

    def __init__(self, routes: dict[str, tuple[int, int]], mode: str = "http") -> None:
        if mode not in ("http", "tcp"):
            raise ValueError(f"mode is http or tcp, not {mode}")
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_run, args=(routes, mode, child), daemon=True, name="bench-tap")
        self.routes = routes

    def start(self) -> Tap:
        self._proc.start()
        if not self._conn.poll(60) or self._conn.recv() != "ready":
            self.stop()
            raise RuntimeError("the counting proxy did not start")
        return self

    def take(self) -> tuple[list[Exchange], list[Chunk]]:
        """Everything counted since the last call."""
        self._conn.send("take")
        exchanges, chunks = self._conn.recv()
        return list(exchanges), list(chunks)

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send("stop")
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)

    def __enter__(self) -> Tap:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
