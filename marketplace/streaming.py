"""A request body as chunks, with a client hang-up turned into :class:`ClientGone`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Request
from litestar.exceptions import InternalServerException

from kernel.errors import ClientGone


async def body_chunks(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except InternalServerException as exc:
        raise ClientGone("the client disconnected before the upload finished; nothing was stored") from exc
