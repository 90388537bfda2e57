"""HTTP routes of the connector: participants (``/api/v1/participants``), the node's DID
document and DSP version metadata (``/.well-known/…``), and the catalog endpoints of the
DSP binding (``/dsp/catalog/…``, the caller's DCP token in ``Authorization``)."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery

from connector.dsp import catalog_request_since, open_request
from connector.dsp.binding import version_metadata
from connector.dsp.gate import ProtocolGate
from connector.dsp.jsonld import for_plain_peer
from connector.schemas import ParticipantOut, PeerAdd
from connector.services import ParticipantService
from kernel.validation import validate
from marketplace.catalog import CatalogService


class ParticipantController(Controller):
    path = "/participants"
    tags = ["participants"]

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_participants(
        self, participant_service: NamedDependency[ParticipantService]
    ) -> list[ParticipantOut]:
        """The participants this node knows (itself first)."""
        return participant_service.list()

    @post("", opt={"scope": "admin"}, status_code=201)
    async def add_peer(
        self, request: Request[Any, Any, Any], participant_service: NamedDependency[ParticipantService]
    ) -> ParticipantOut:
        """Add a peer by URL (and, for another connector, its DID): its DID document names its
        keys, its version metadata its DSP base."""
        body = validate(PeerAdd, await request.body(), what="peer")
        return await to_thread.run_sync(
            lambda: participant_service.add_peer(body.url, request.user.subject, did=body.did, name=body.name)
        )


@get(["/.well-known/did.json", "/did.json"], tags=["protocol"], sync_to_thread=False)
def did_document(did_document: NamedDependency[Any]) -> Response[Any]:
    """This node's DID document (did:web): its key, on-chain address and services."""
    return Response(did_document(), media_type="application/did+json")


@get("/.well-known/dspace-version", tags=["protocol"], sync_to_thread=False)
def dspace_version() -> dict[str, Any]:
    """Where this node serves the Dataspace Protocol, per version and binding."""
    return version_metadata()


@post("/dsp/catalog/request", tags=["protocol"], status_code=200)
async def catalog_request(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    catalog_service: NamedDependency[CatalogService],
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int] = 100,
) -> Response[Any]:
    """This node's catalog for the signed requester: only what its policies could grant it."""
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


api_handlers = [ParticipantController]
public_handlers: list[object] = [did_document, dspace_version, catalog_request, catalog_dataset]
