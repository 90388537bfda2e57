"""Request bodies held to their route's limits before any handler or parser sees them.

One middleware, run for every routed HTTP request once Litestar has picked the handler:

* the declared ``Content-Length`` is checked first, and the bytes are counted as they
  arrive, so a chunked body is cut off at the same limit (413 with the limit);
* a body that is buffered anyway (JSON, forms) is read whole here, with no pause over
  ``AGORA_REQUEST_TIMEOUT`` and at :data:`MIN_RATE` on average (408 otherwise), and a JSON
  one is scanned for depth, number and string sizes (:mod:`kernel.limits`, 400 with the
  bound) before Litestar, msgspec or pydantic parse it — whatever the content type,
  because the protocol routes read JSON from any body;
* an upload (a ``multipart/form-data`` body on a handler that streams, declared with
  ``request_max_body_size=None``) passes on chunk by chunk, counted against
  ``AGORA_MAX_UPLOAD_BYTES``, and may pause at most ``AGORA_REQUEST_TIMEOUT`` between two
  chunks;
* a NUL character in the path or the query string is refused (400): no identifier or
  search holds one, and PostgreSQL text columns cannot.

Guards that read no body (the API's bearer-token check, ``early_guards``) run before a
body is buffered: a client without a valid token gets its 401 before the node holds a byte
of what it sends.

Limits per handler: its ``request_max_body_size`` (the app's default is
``AGORA_MAX_JSON_BYTES``); a streaming handler's JSON variant may raise it with
``opt={"max_json_bytes": N}``; forms are held to :data:`FORM_BYTES`; a handler taking signed
messages with bytes (``opt={"signed_blob": True}``) gets them unscanned and bounds their
envelope itself (:func:`connector.blobs.split`). Requests for no route
never reach a handler: the server closes a connection whose body was not read
(:mod:`node.server`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
from anyio import to_thread
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPRequestEvent, Receive, ReceiveMessage, Scope, Send

from kernel.errors import InvalidInput, PayloadTooLarge, RequestTimeout
from kernel.limits import JSON, JsonLimits, check_json

SIGNED_BLOB = b"application/vnd.agora.signed-blob"  # connector.blobs: an envelope line, then bytes
FORM_BYTES = 64 * 1024  # the web UI's forms: a token, a reason
UPLOAD_OVERHEAD = 1024 * 1024  # multipart boundaries and the metadata part
SCAN_IN_THREAD = 256 * 1024  # larger bodies are scanned off the event loop
MIN_RATE = 64 * 1024  # bytes/s a buffered body must average, after AGORA_REQUEST_TIMEOUT
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
EarlyGuard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


@dataclass(frozen=True)
class BodyRule:
    """How one request's body is received: at most ``max_bytes``; ``stream``: passed on as
    it arrives (else read whole first); ``json``: the bounds it is scanned against."""

    max_bytes: int
    stream: bool
    json: JsonLimits | None


class RequestLimits(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(
        self,
        *,
        max_json_bytes: int,
        max_upload_bytes: int,
        timeout: float,
        early_guards: tuple[EarlyGuard, ...] = (),
    ) -> None:
        self.max_json_bytes = max_json_bytes
        self.max_upload_bytes = max_upload_bytes
        self.timeout = timeout
        self.early_guards = early_guards

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b""):
            raise InvalidInput("the path or query string holds a NUL character (%00)")
        headers = _headers(scope)
        declared = _content_length(headers.get(b"content-length"))
        if not declared and b"transfer-encoding" not in headers:
            await next_app(scope, receive, send)  # no body at all: the common case, untouched
            return
        rule = self.rule(scope, headers.get(b"content-type", b""))
        if declared is not None and declared > rule.max_bytes:
            raise _too_large(rule.max_bytes)
        if rule.stream:
            await next_app(scope, self._counting(receive, rule.max_bytes), send)
            return
        handler = scope["route_handler"]
        guards = handler.resolve_guards()
        for guard in self.early_guards:
            if guard in guards:  # who asks, before the node holds what they send
                await guard(ASGIConnection(scope, receive, send), handler)
        body = await self._read(receive, rule.max_bytes)
        if body is None:
            return  # the client hung up: there is no one to answer
        if rule.json is not None and body:
            bounds = rule.json
            if len(body) > SCAN_IN_THREAD:
                await to_thread.run_sync(lambda: check_json(body, bounds, what="the request body"))
            else:
                check_json(body, bounds, what="the request body")
        await next_app(scope, _replay(body, receive), send)

    def rule(self, scope: Scope, content_type: bytes) -> BodyRule:
        """The rule for this request: by its handler's declared limits and its content type."""
        handler = cast(HTTPRouteHandler, scope["route_handler"])  # the middleware runs for HTTP only
        media = content_type.split(b";", 1)[0].strip().lower()
        declared = handler.resolve_request_max_body_size()
        if cast(str, scope.get("method")) in _NO_BODY_METHODS:
            # nothing reads it: count it on its way past (the server closes the connection)
            return BodyRule(declared or self.max_json_bytes, stream=True, json=None)
        if media == b"application/x-www-form-urlencoded":
            return BodyRule(min(declared or FORM_BYTES, FORM_BYTES), stream=False, json=None)
        if declared is None:  # a handler that streams uploads itself
            if media == b"multipart/form-data":
                return BodyRule(self.max_upload_bytes + UPLOAD_OVERHEAD, stream=True, json=None)
            declared = int(handler.opt.get("max_json_bytes", self.max_json_bytes))
        if media == b"multipart/form-data" or (media == SIGNED_BLOB and handler.opt.get("signed_blob")):
            return BodyRule(declared, stream=False, json=None)  # the handler bounds its JSON part
        return BodyRule(declared, stream=False, json=JSON.with_max_string(declared))

    async def _read(self, receive: Receive, max_bytes: int) -> bytes | None:
        """The whole body (``None`` when the client left): no pause longer than the timeout,
        and all of it within the timeout plus the time the limit takes at :data:`MIN_RATE`
        (a slow link can still send a large job; a trickle cannot hold the node)."""
        chunks: list[bytes] = []
        size = 0
        allowed = self.timeout + max_bytes / MIN_RATE
        deadline = anyio.current_time() + allowed
        while True:
            left = deadline - anyio.current_time()
            try:
                with anyio.fail_after(min(self.timeout, max(left, 0))):
                    message = await receive()
            except TimeoutError:
                if left <= self.timeout:
                    raise RequestTimeout(f"the request body did not arrive within {allowed:g} s") from None
                raise RequestTimeout(f"no part of the request body arrived for {self.timeout:g} s") from None
            if message["type"] == "http.disconnect":
                return None
            chunk = cast(bytes, message.get("body", b""))
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _counting(self, receive: Receive, max_bytes: int) -> Receive:
        """``receive`` that refuses more than ``max_bytes`` and a pause over the timeout."""
        size = 0

        async def counted() -> ReceiveMessage:
            nonlocal size
            try:
                with anyio.fail_after(self.timeout):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"no part of the request body arrived for {self.timeout:g} s (AGORA_REQUEST_TIMEOUT)"
                ) from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > max_bytes:
                    raise _too_large(max_bytes)
            return message

        return counted


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope["headers"]}


def _content_length(value: bytes | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise InvalidInput(f"Content-Length must be a number of bytes, not {value[:40]!r}")
    return int(value)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body exceeds this route's limit of {max_bytes} bytes", limit=max_bytes
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the buffered body once, then whatever the client does next."""
    sent = False

    async def replayed() -> ReceiveMessage:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return HTTPRequestEvent(type="http.request", body=body, more_body=False)

    return replayed
