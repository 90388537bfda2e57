"""The Dataspace Protocol's HTTPS binding as this node reads it: a request's JSON-LD body
and its sender's token, and the version metadata a peer finds the node's DSP base by.

Every protocol request is bounded before it is parsed (size, then JSON depth, numbers and
strings), and only then is the sender's token checked (:class:`~connector.dsp.gate.ProtocolGate`,
which needs the database). Agora's own messages that carry bytes (model weights) use the
same token over a JSON line followed by the bytes (:mod:`connector.blobs`).
"""

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

    from connector.dsp.gate import Opened, ProtocolGate

MAX_MESSAGE_BYTES = 1024 * 1024
DSP_CONTEXT = [DSP_CONTEXT_URL]  # the "@context" of every protocol message
VERSION = "2025-1"
DSPACE = "https://w3id.org/dspace/2025/1/"  # the namespace of DSP's terms
BASE_PATH = "/dsp"  # where this node serves the binding (advertised, never assumed of a peer)


_ERRORS = {
    "catalog": "CatalogError",
    "negotiations": "ContractNegotiationError",
    "transfers": "TransferError",
}
PIDS = "dsp_pids"  # request state: the pids the message named (for its error message)


def error_message(path: str, pids: dict[str, str], code: str, reason: str) -> dict[str, Any] | None:
    """The DSP error message answering a refused request on a binding route (``code`` the
    problem's type, ``reason`` its words), or None for a path the binding does not define."""
    parts = path.removeprefix(BASE_PATH).strip("/").split("/")
    if not path.startswith(BASE_PATH + "/") or parts[0] not in _ERRORS:
        return None
    message: dict[str, Any] = {"@context": DSP_CONTEXT, "@type": _ERRORS[parts[0]]}
    if parts[0] != "catalog":
        message["providerPid"] = pids.get("providerPid", "")
        message["consumerPid"] = pids.get("consumerPid", "")
    return {**message, "code": code, "reason": [reason]}


def version_metadata(base_path: str = BASE_PATH) -> dict[str, Any]:
    """What ``GET /.well-known/dspace-version`` answers."""
    return {
        "protocolVersions": [
            {
                "version": VERSION,
                "path": base_path,
                "binding": "HTTPS",
                "identifierType": "did:web",
                "auth": {"protocol": "DCP", "version": "1.0", "profile": ["vc11-sl2021/jwt"]},
            }
        ]
    }


async def open_request(
    request: Request[Any, Any, Any], gate: ProtocolGate, *, max_bytes: int = MAX_MESSAGE_BYTES
) -> Opened:
    """The checked request: size first, then the JSON's bounds (depth, numbers, strings up to
    ``max_bytes``) before it is parsed, then the sender's token (database)."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"protocol messages are limited to {max_bytes} bytes")
    body = loads(raw, JSON.with_max_string(max_bytes), what="the protocol message") if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidInput("a protocol message is a JSON object")
    request.state[PIDS] = {k: body[k] for k in ("providerPid", "consumerPid") if isinstance(body.get(k), str)}
    authorization = request.headers.get("authorization")
    return await to_thread.run_sync(gate.accept, authorization, raw, body, _request_line(request))


async def open_blob_request(
    request: Request[Any, Any, Any], gate: ProtocolGate, *, max_bytes: int
) -> tuple[Opened, bytes]:
    """A message with bytes (:mod:`connector.blobs`): the JSON line is bounded, the token
    (which binds the whole body) checked, then the bytes must be those the line names."""
    from connector import blobs

    raw = await request.body()
    body, blob = blobs.split(raw, max_bytes=max_bytes)
    if not isinstance(body, dict):
        raise InvalidInput("a protocol message is a JSON object")
    opened = await to_thread.run_sync(
        gate.accept, request.headers.get("authorization"), raw, body, _request_line(request)
    )
    return opened, blobs.check(opened.body, blob)


def _request_line(request: Request[Any, Any, Any]) -> tuple[str, str]:
    """The method and path a token's ``agora:request`` must name."""
    return request.method, request.url.path


def catalog_request_since(body: dict[str, Any]) -> datetime | None:
    """Check a ``CatalogRequestMessage``; the ``agora:modifiedSince`` filter, if any. The
    message may also come expanded, without a context (``@type`` and ``filter`` as their
    ``https://w3id.org/dspace/2025/1/`` IRIs, a single filter as an object), as the DCP
    conformance suite sends it."""
    kind = body.get("@type")
    if kind not in (
        "CatalogRequestMessage",
        "dspace:CatalogRequestMessage",
        DSPACE + "CatalogRequestMessage",
    ):
        raise InvalidInput(
            f"expected a CatalogRequestMessage, got {kind!r}",
            errors=[FieldError("@type", "wrong type")],
        )
    filters = body.get("filter", body.get(DSPACE + "filter", []))
    if isinstance(filters, dict):
        filters = [filters]
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
