"""HTTP routes of notarization: provenance documents and the embedded chain's JSON-RPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anyio import to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath

from contracts import rpc
from contracts.chain import Chain, EmbeddedChain
from contracts.provenance import ProvenanceService
from kernel.errors import NotFound
from kernel.limits import loads

MAX_RPC_BYTES = 256 * 1024  # read-only calls a verifier makes: a few hundred bytes each


class ProvenanceController(Controller):
    path = "/provenance"
    tags = ["provenance"]

    @get("/{key:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def provenance(
        self, key: FromPath[str], provenance_service: NamedDependency[ProvenanceService]
    ) -> dict[str, Any]:
        """Everything needed to verify an asset (by asset id or sha256) against the chain alone."""
        return provenance_service.document(key)


@post("/chain/rpc", tags=["chain"], status_code=200, request_max_body_size=MAX_RPC_BYTES)
async def chain_rpc(
    request: Request[Any, Any, Any], chain_getter: NamedDependency[Callable[[], Chain]]
) -> Any:
    """The embedded chain, read-only, over Ethereum JSON-RPC: for ``agora verify --chain``."""
    chain = await to_thread.run_sync(chain_getter)
    if not isinstance(chain, EmbeddedChain):
        raise NotFound("this node uses an external chain: verify against AGORA_CHAIN_URL instead")
    body = loads(await request.body(), what="the JSON-RPC request")
    return await to_thread.run_sync(lambda: rpc.handle(chain, body, read_only=True))


api_handlers = [ProvenanceController]
public_handlers = [chain_rpc]
