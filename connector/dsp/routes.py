"""The routes of the Dataspace Protocol's HTTPS binding (2025-1), under the DSP base ``/dsp``
this node advertises at ``/.well-known/dspace-version``, and its DID document.

Every route reads the caller's token first (:func:`~connector.dsp.binding.open_request`);
refusals are DSP error messages (``CatalogError``, ``ContractNegotiationError``,
``TransferError`` with ``code`` and ``reason``; see :mod:`node.problems`). Catalog:
``POST /catalog/request``, ``GET /catalog/datasets/{id}``. Negotiations, both roles:
``POST /negotiations/request``, ``GET /negotiations/{pid}``, ``POST /negotiations/{pid}/``
``request | offers | agreement | agreement/verification | events | termination``. Transfers,
both roles: ``POST /transfers/request``, ``GET /transfers/{pid}``, ``POST /transfers/{pid}/``
``start | completion | suspension | termination``, and the pull data address
``GET /transfers/{pid}/data`` (with its provenance, an Agora extension).
"""

from __future__ import annotations

import logging
from typing import Any

from anyio import to_thread
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from connector.dsp.binding import catalog_request_since, open_request, version_metadata
from connector.dsp.gate import ProtocolGate
from connector.dsp.jsonld import for_plain_peer
from connector.negotiation import NegotiationService
from connector.transfers import TransferService
from kernel.hashing import repr_digest
from kernel.ranges import parse_range
from marketplace.catalog import CatalogService

log = logging.getLogger("agora.usage")


@get(["/.well-known/did.json", "/did.json"], tags=["protocol"], sync_to_thread=False)
def did_document(did_document: NamedDependency[Any]) -> Response[Any]:
    """This node's DID document (did:web): its key, on-chain address and services."""
    return Response(did_document(), media_type="application/did+json")


@get("/.well-known/dspace-version", tags=["protocol"], sync_to_thread=False)
def dspace_version() -> dict[str, Any]:
    """Where this node serves the Dataspace Protocol, per version and binding."""
    return version_metadata()


# Catalog -----------------------------------------------------------------------------------


@post("/dsp/catalog/request", tags=["protocol"], status_code=200)
async def catalog_request(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    catalog_service: NamedDependency[CatalogService],
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> Response[Any]:
    """This node's catalog for the requester: only what its policies could grant it."""
    opened = await open_request(request, protocol_gate)
    since = catalog_request_since(opened.body)
    # a registered participant's name is its own claim: participantName constraints see it not
    name = opened.sender_name if opened.sender_trusted else ""

    def render() -> tuple[dict[str, Any], str | None]:
        return catalog_service.dcat_catalog(
            opened.sender, requester_name=name, since=since, cursor=cursor, limit=limit
        )

    catalog, next_cursor = await to_thread.run_sync(render)
    headers = {}
    if next_cursor:
        headers["Link"] = f'<{request.url.path}?cursor={next_cursor}&limit={limit}>; rel="next"'
    if opened.sender_kind != "agora":
        catalog = for_plain_peer({**catalog, "participantId": protocol_gate.identity.did})
    return Response(catalog, headers=headers)


@get("/dsp/catalog/datasets/{dataset_id:str}", tags=["protocol"])
async def catalog_dataset(
    request: Request[Any, Any, Any],
    dataset_id: str,
    protocol_gate: NamedDependency[ProtocolGate],
    catalog_service: NamedDependency[CatalogService],
) -> dict[str, Any]:
    """One dataset of this node's catalog, for a requester whose policies could grant it."""
    opened = await open_request(request, protocol_gate)
    name = opened.sender_name if opened.sender_trusted else ""
    dataset = await to_thread.run_sync(
        lambda: catalog_service.dcat_dataset(dataset_id, opened.sender, requester_name=name)
    )
    return dataset if opened.sender_kind == "agora" else for_plain_peer(dataset)


# Negotiations ------------------------------------------------------------------------------


@post("/dsp/negotiations/request", tags=["protocol"], status_code=201)
async def negotiation_request(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    negotiation_service: NamedDependency[NegotiationService],
    dcp_service: NamedDependency[Any],
) -> dict[str, Any]:
    """A consumer starts a negotiation: 201 with the ContractNegotiation in REQUESTED. An
    offering whose policy names credentials has them verified (the requester's presentation,
    fetched with the access token its token carries)."""
    opened = await open_request(request, protocol_gate)

    def credentials(types: list[str]) -> dict[str, dict[str, Any]]:
        # the membership presentation the gate verified counts; only what it lacks is fetched
        missing = [t for t in types if t not in opened.credentials]
        if not missing:
            return dict(opened.credentials)
        verified: dict[str, dict[str, Any]] = dcp_service.verified(opened.claims, opened.sender_did, missing)
        return {**opened.credentials, **verified}

    reply: dict[str, Any] = await to_thread.run_sync(
        lambda: negotiation_service.on_request(
            opened.sender, opened.sender_endpoint, opened.body, credentials=credentials
        )
    )
    return _for(opened.sender_kind, reply)


NEGOTIATION_MESSAGES = {
    "request": "request",
    "offers": "offers",
    "agreement": "agreement",
    "verification": "agreement/verification",
    "events": "events",
    "termination": "termination",
}


@post(
    [f"/dsp/negotiations/{{pid:str}}/{suffix}" for suffix in NEGOTIATION_MESSAGES.values()],
    tags=["protocol"],
    status_code=200,
)
async def negotiation_message(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    negotiation_service: NamedDependency[NegotiationService],
) -> dict[str, Any]:
    """Offers, agreements, verifications, events and terminations for one negotiation."""
    kind = next(k for k, suffix in NEGOTIATION_MESSAGES.items() if request.url.path.endswith("/" + suffix))
    opened = await open_request(request, protocol_gate)
    reply: dict[str, Any] = await to_thread.run_sync(
        negotiation_service.on_message, opened.sender, pid, kind, opened.body
    )
    return _for(opened.sender_kind, reply)


@get("/dsp/negotiations/{pid:str}", tags=["protocol"])
async def negotiation_state(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    negotiation_service: NamedDependency[NegotiationService],
) -> dict[str, Any]:
    """The ContractNegotiation, for the other party of the negotiation only."""
    opened = await open_request(request, protocol_gate)
    reply: dict[str, Any] = await to_thread.run_sync(negotiation_service.state_for, opened.sender, pid)
    return _for(opened.sender_kind, reply)


# Transfers ---------------------------------------------------------------------------------


@post("/dsp/transfers/request", tags=["protocol"], status_code=201)
async def transfer_request(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    transfer_service: NamedDependency[TransferService],
) -> dict[str, Any]:
    """A consumer asks for a transfer: 201 with the TransferProcess in REQUESTED."""
    opened = await open_request(request, protocol_gate)
    reply = await to_thread.run_sync(
        transfer_service.on_request, opened.sender, opened.sender_endpoint, opened.body
    )
    return _for(opened.sender_kind, reply)


@post(
    [f"/dsp/transfers/{{pid:str}}/{kind}" for kind in ("start", "completion", "suspension", "termination")],
    tags=["protocol"],
    status_code=200,
)
async def transfer_message(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    transfer_service: NamedDependency[TransferService],
) -> dict[str, Any]:
    """Start (or resume), completion, suspension and termination of one transfer, either role."""
    kind = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    opened = await open_request(request, protocol_gate)
    reply = await to_thread.run_sync(transfer_service.on_message, opened.sender, pid, kind, opened.body)
    return _for(opened.sender_kind, reply)


@get("/dsp/transfers/{pid:str}", tags=["protocol"])
async def transfer_state(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    transfer_service: NamedDependency[TransferService],
) -> dict[str, Any]:
    """The TransferProcess, for the other party of the transfer only."""
    opened = await open_request(request, protocol_gate)
    reply = await to_thread.run_sync(transfer_service.state, opened.sender, pid)
    return _for(opened.sender_kind, reply)


@get("/dsp/transfers/{pid:str}/data", tags=["protocol"], sync_to_thread=True)
def transfer_data(
    request: Request[Any, Any, Any], pid: FromPath[str], transfer_service: NamedDependency[TransferService]
) -> Response[Any]:
    """The bytes of a started transfer, for the holder of its token; honours ``Range``."""
    row = transfer_service.authorize(pid, request.headers.get("authorization"))
    size = transfer_service.store.size(row.sha256)
    span = parse_range(request.headers.get("range"), size)
    start, end = span or (0, size)
    headers = {
        "Content-Length": str(end - start),
        "Accept-Ranges": "bytes",
        "Repr-Digest": repr_digest(row.sha256),
    }
    if span:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return Stream(
        transfer_service.store.read(row.sha256, start, end),
        media_type="application/octet-stream",
        status_code=206 if span else 200,
        headers=headers,
    )


@get("/dsp/transfers/{pid:str}/provenance", tags=["protocol"], sync_to_thread=True)
def transfer_provenance(
    request: Request[Any, Any, Any], pid: FromPath[str], transfer_service: NamedDependency[TransferService]
) -> dict[str, Any]:
    """Agora's extension: the provenance of a started transfer's bytes, for its token's holder."""
    row = transfer_service.authorize(pid, request.headers.get("authorization"))
    return transfer_service.provenance_for(row)


@post("/dsp/notifications", tags=["protocol"], status_code=200)
async def notification(
    request: Request[Any, Any, Any], protocol_gate: NamedDependency[ProtocolGate]
) -> dict[str, Any]:
    """Agora's extension: usage notifications (the notify duty) addressed to this node, logged."""
    opened = await open_request(request, protocol_gate)
    log.info("usage notification from %s: %s", opened.sender, opened.body)
    return {"received": True}


def _for(kind: str, reply: dict[str, Any]) -> dict[str, Any]:
    """A reply as the caller reads it: Agora's terms as full IRIs for a plain DSP connector."""
    return reply if kind == "agora" else for_plain_peer(reply)


api_handlers: list[object] = []
public_handlers: list[object] = [
    did_document,
    dspace_version,
    catalog_request,
    catalog_dataset,
    negotiation_request,
    negotiation_message,
    negotiation_state,
    transfer_request,
    transfer_message,
    transfer_state,
    transfer_data,
    transfer_provenance,
    notification,
]
