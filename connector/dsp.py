"""Dataspace Protocol 2025-1 messages as this node reads them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from kernel.db import as_utc
from kernel.errors import FieldError, InvalidInput, PayloadTooLarge
from kernel.limits import JSON, loads
from marketplace.catalog import DSP_CONTEXT as DSP_CONTEXT_URL

if TYPE_CHECKING:
    from litestar import Request

    from connector.envelope import Opened
    from connector.protocol import ProtocolGate

MAX_MESSAGE_BYTES = 1024 * 1024
DSP_CONTEXT = [DSP_CONTEXT_URL]  # the "@context" of every protocol message


async def open_request(
    request: Request[Any, Any, Any], gate: ProtocolGate, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Opened:
    """The verified envelope of a protocol request: size first, then the JSON's bounds
    (depth, numbers, strings up to ``max_bytes``) before it is parsed, then the form and
    signature, and only then the sender and nonce (database)."""
    body = await request.body()
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"protocol messages are limited to {max_bytes} bytes")
    envelope = loads(body, JSON.with_max_string(max_bytes), what="the protocol message")
    return await to_thread.run_sync(gate.accept, envelope)


async def open_blob_request(
    request: Request[Any, Any, Any], gate: ProtocolGate, *, max_bytes: int
) -> tuple[Opened, bytes]:
    """A signed message with bytes (:mod:`connector.blobs`): the envelope is bounded and
    verified first, then the bytes must be exactly those the sender signed."""
    from connector import blobs

    envelope, blob = blobs.split(await request.body(), max_bytes=max_bytes)
    opened = await to_thread.run_sync(gate.accept, envelope)
    return opened, blobs.check(opened.body, blob)


def catalog_request_since(body: dict[str, Any]) -> datetime | None:
    """Check a ``CatalogRequestMessage``; the ``agora:modifiedSince`` filter, if any."""
    if body.get("@type") != "CatalogRequestMessage":
        raise InvalidInput(
            f"expected a CatalogRequestMessage, got {body.get('@type')!r}",
            errors=[FieldError("@type", "wrong type")],
        )
    filters = body.get("filter", [])
    if not isinstance(filters, list):
        raise InvalidInput("filter must be an array", errors=[FieldError("filter", "not an array")])
    for item in filters:
        if isinstance(item, dict) and "agora:modifiedSince" in item:
            try:
                return as_utc(datetime.fromisoformat(str(item["agora:modifiedSince"])))
            except ValueError:
                raise InvalidInput(
                    "agora:modifiedSince must be an ISO 8601 time", errors=[FieldError("filter", "bad time")]
                ) from None
    return None
