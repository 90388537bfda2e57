"""The HTTP server: uvicorn with the limits it lacks on its own.

uvicorn's fast parser (httptools) keeps a request line and headers of any size, and waits
for them without end: one client could fill the node's memory with a header that never
finishes, or hold connections open by sending nothing. (``h11_max_incomplete_event_size``
bounds only the slower h11 parser.) :func:`guarded_protocol` adds, per connection:

* the request line plus headers may hold at most ``AGORA_MAX_HEADER_BYTES`` and
  :data:`MAX_HEADERS` fields (431 problem+json, connection closed);
* they must be complete within ``AGORA_REQUEST_TIMEOUT`` of their first byte, and a new
  connection must start a request within that time (408, or simply closed if it sent
  nothing);
* a connection whose request body was not read to its end when the answer went out (a
  refusal before the body, a route that takes none, an unknown path) is closed, so a
  body that never ends costs nothing after the answer.

Bodies themselves are held to their limits by :mod:`node.request_limits`. uvicorn's
``limit_concurrency`` stays unset on purpose: it counts idle connections too, so a few
hundred slow clients would turn every other request into a 503; put a reverse proxy in
front for per-client connection limits.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kernel.errors import AgoraError, HeadersTooLarge, InvalidInput, RequestTimeout
from node.headers import COMMON, NOTHING_POLICY

MAX_HEADERS = 100
KEEP_ALIVE_SECONDS = 5


def problem_response(error: AgoraError) -> bytes:
    """A complete HTTP/1.1 response carrying ``error`` as problem+json; the connection closes."""
    body = json.dumps(error.problem()).encode()
    security = "".join(
        f"{name}: {value}\r\n"
        for name, value in {**COMMON, "content-security-policy": NOTHING_POLICY}.items()
    )
    head = (
        f"HTTP/1.1 {error.status} {error.title}\r\n"
        "content-type: application/problem+json\r\n"
        f"{security}"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _GuardedHttpTools(HttpToolsProtocol):
    """httptools with bounded, timed request heads (see the module docstring)."""

    max_head_bytes = 64 * 1024
    head_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = self._head_size = 0
        self._refused: AgoraError | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._arm_head_timer()
            self._head_bytes += len(data)
        super().data_received(data)
        # a head still unfinished after this many bytes: the parser holds them all
        if self._reading_head and self._head_bytes > self.max_head_bytes:
            self._refuse(self._too_large())

    def _too_large(self) -> HeadersTooLarge:
        limit = self.max_head_bytes
        return HeadersTooLarge(f"the request line and headers exceed {limit} bytes", limit=limit)

    def _check_head(self) -> None:
        """A head that arrived whole in one read is measured field by field."""
        if self._head_size > self.max_head_bytes:
            self._stop(self._too_large())

    def _stop(self, error: AgoraError) -> None:
        """Stop the parser from inside a callback; uvicorn then calls send_400_response."""
        self._refused = error
        raise ValueError(error.detail)

    # parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._header_count = self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        self._check_head()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > MAX_HEADERS:
            self._stop(HeadersTooLarge(f"the request has more than {MAX_HEADERS} header fields"))
        self._check_head()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True  # what comes next on this connection is a new request

    def on_response_complete(self) -> None:
        super().on_response_complete()
        unread = self.cycle is not None and self.cycle.more_body and not self.pipeline
        if unread and not self.transport.is_closing():
            self.transport.close()

    # refusals --------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser rejects, as problem+json."""
        self._refuse(self._refused or InvalidInput("the request is not valid HTTP/1.1"))

    def _refuse(self, error: AgoraError) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.write(problem_response(error))
            self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._reading_head:
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing was asked: nothing to answer
        else:
            seconds = self.head_timeout
            self._refuse(RequestTimeout(f"the request headers did not arrive within {seconds:g} s"))


def guarded_protocol(max_head_bytes: int, head_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class uvicorn should use (``http=``) for these limits."""
    return type(
        "GuardedHttpTools",
        (_GuardedHttpTools,),
        {"max_head_bytes": max_head_bytes, "head_timeout": head_timeout},
    )


def serve(app: Any, *, host: str, port: int, log_level: str, max_header_bytes: int, timeout: float) -> None:
    """Serve ``app`` until a signal stops it."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=guarded_protocol(max_header_bytes, timeout),
        ws="none",  # the node serves no WebSocket: upgrades are not even parsed
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=5,
    )
