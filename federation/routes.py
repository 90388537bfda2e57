"""HTTP routes of federations.

Management (``/api/v1/federations``, bearer tokens; changes need ``federations:write``):
create, list, show, rounds, start, cancel, the final model (ONNX or safetensors) and its
provenance, the spec's JSON Schema. Protocol (``/dsp/federations``, signed messages): the
invitation, round starts and stops the coordinator sends a provider, and the updates a
provider pushes back; those with weights or code carry the bytes bound to the signed
envelope (:mod:`connector.blobs`). A securely aggregated round adds its stage messages
(:mod:`federation.secagg_rounds`): a provider's keys (``/secagg``) and masked update
(``/secagg/input``) to the coordinator, and the coordinator's keys, shares and unmask request
(``/secagg/stage``) to a provider.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any

from anyio import to_thread
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from pydantic import BaseModel, ConfigDict, Field

from connector.dsp import open_blob_request, open_request
from connector.dsp.gate import Opened, ProtocolGate
from federation.coordinator import Coordinator
from federation.provider import MAX_WEIGHTS_BYTES, ProviderFederations
from federation.spec import SCHEMA_FILE, FederationSpec
from kernel.errors import Conflict, FieldError, InvalidInput
from kernel.hashing import repr_digest
from kernel.limits import JSON
from kernel.validation import validate
from training_jobs.bundle import MAX_BUNDLE_BYTES

MAX_CREATE = (MAX_BUNDLE_BYTES + 64 * 1024**2) * 4 // 3 + 1024**2
CREATE_JSON = JSON.with_max_string(MAX_CREATE)
MAX_INVITE = MAX_BUNDLE_BYTES + 1024**2
MAX_WEIGHTS_MESSAGE = MAX_WEIGHTS_BYTES + 1024**2


class FederationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: FederationSpec
    bundle: str = Field(description="the packed bundle (.tar.gz), base64")
    initial_weights: str | None = Field(default=None, description="a .safetensors file, base64")


def _b64(text: str | None, field: str) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{field} is not base64", errors=[FieldError(field, "not base64")]) from None


class FederationController(Controller):
    path = "/federations"
    tags = ["federations"]

    @post("", opt={"scope": "federations:write"}, status_code=201, request_max_body_size=MAX_CREATE)
    async def create(
        self, request: Request[Any, Any, Any], coordinator: NamedDependency[Coordinator]
    ) -> dict[str, Any]:
        """Coordinator: invite the spec's providers (201 with each provider's answer)."""
        body = validate(FederationCreate, await request.body(), what="federation", limits=CREATE_JSON)
        bundle = _b64(body.bundle, "bundle")
        assert bundle is not None
        initial = _b64(body.initial_weights, "initial_weights")
        return await to_thread.run_sync(coordinator.create, body.spec, bundle, initial, request.user.subject)

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_federations(
        self,
        coordinator: NamedDependency[Coordinator],
        in_state: Annotated[str | None, QueryParameter(name="state")] = None,
    ) -> list[dict[str, Any]]:
        return coordinator.list_all(in_state)

    @get("/schema", opt={"scope": "catalog:read"}, sync_to_thread=False)
    def schema(self) -> Response[bytes]:
        """The federation spec's JSON Schema."""
        return Response(SCHEMA_FILE.read_bytes(), media_type="application/schema+json")

    @get("/{federation_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(self, federation_id: FromPath[str], coordinator: NamedDependency[Coordinator]) -> dict[str, Any]:
        return coordinator.get(federation_id)

    @get("/{federation_id:str}/rounds", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def rounds(
        self, federation_id: FromPath[str], coordinator: NamedDependency[Coordinator]
    ) -> list[dict[str, Any]]:
        """Every round: state, reason, global weights in and out, Merkle root, each provider's part."""
        return coordinator.rounds(federation_id)

    @post(
        "/{federation_id:str}/start", opt={"scope": "federations:write"}, status_code=200, sync_to_thread=True
    )
    def start(
        self,
        request: Request[Any, Any, Any],
        federation_id: FromPath[str],
        coordinator: NamedDependency[Coordinator],
    ) -> dict[str, Any]:
        return coordinator.start(federation_id, request.user.subject)

    @post(
        "/{federation_id:str}/cancel",
        opt={"scope": "federations:write"},
        status_code=200,
        sync_to_thread=True,
    )
    def cancel(
        self,
        request: Request[Any, Any, Any],
        federation_id: FromPath[str],
        coordinator: NamedDependency[Coordinator],
    ) -> dict[str, Any]:
        return coordinator.cancel(federation_id, request.user.subject)

    @get("/{federation_id:str}/model", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def model(
        self,
        federation_id: FromPath[str],
        coordinator: NamedDependency[Coordinator],
        artifact: Annotated[str, QueryParameter(pattern="^(onnx|weights)$")] = "onnx",
    ) -> Stream:
        """The final global model: ONNX (default) or the safetensors weights."""
        sha, size = coordinator.artifact(federation_id, artifact)
        return Stream(
            coordinator.store.read(sha),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size), "Repr-Digest": repr_digest(sha)},
        )

    @get("/{federation_id:str}/model/provenance", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def model_provenance(
        self,
        federation_id: FromPath[str],
        coordinator: NamedDependency[Coordinator],
        artifact: Annotated[str, QueryParameter(pattern="^(onnx|weights)$")] = "onnx",
    ) -> dict[str, Any]:
        return coordinator.provenance(federation_id, artifact)


# Protocol endpoints ------------------------------------------------------------------------


@post(
    "/dsp/federations",
    tags=["protocol"],
    status_code=201,
    request_max_body_size=MAX_INVITE,
    opt={"signed_blob": True},
)
async def federation_invite(
    request: Request[Any, Any, Any],
    protocol_gate: NamedDependency[ProtocolGate],
    federation_provider: NamedDependency[ProviderFederations],
) -> dict[str, Any]:
    opened, bundle = await open_blob_request(request, protocol_gate, max_bytes=MAX_INVITE)
    reply = await to_thread.run_sync(
        federation_provider.on_invite, opened.sender, opened.sender_endpoint, opened.body, bundle
    )
    return reply


@post(
    "/dsp/federations/{pid:str}/rounds",
    tags=["protocol"],
    status_code=200,
    request_max_body_size=MAX_WEIGHTS_MESSAGE,
    opt={"signed_blob": True},
)
async def federation_round(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    federation_provider: NamedDependency[ProviderFederations],
) -> dict[str, Any]:
    return await _answer(
        request, protocol_gate, pid, lambda o, blob: federation_provider.on_round(o.sender, pid, o.body, blob)
    )


@post(
    "/dsp/federations/{pid:str}/updates",
    tags=["protocol"],
    status_code=200,
    request_max_body_size=MAX_WEIGHTS_MESSAGE,
    opt={"signed_blob": True},
)
async def federation_update(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    coordinator: NamedDependency[Coordinator],
) -> dict[str, Any]:
    return await _answer(
        request, protocol_gate, pid, lambda o, blob: coordinator.on_update(o.sender, pid, o.body, blob)
    )


@post("/dsp/federations/{pid:str}/stop", tags=["protocol"], status_code=200)
async def federation_stop(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    federation_provider: NamedDependency[ProviderFederations],
) -> dict[str, Any]:
    return await _answer(
        request,
        protocol_gate,
        pid,
        lambda o, _: federation_provider.on_stop(o.sender, pid, o.body),
        blob=False,
    )


@post("/dsp/federations/{pid:str}/secagg", tags=["protocol"], status_code=200)
async def federation_secagg_advert(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    coordinator: NamedDependency[Coordinator],
) -> dict[str, Any]:
    """Secure aggregation, provider to coordinator: its signed keys for the round."""
    return await _answer(
        request,
        protocol_gate,
        pid,
        lambda o, _: coordinator.secagg.on_advert(o.sender, pid, o.body),
        blob=False,
    )


@post(
    "/dsp/federations/{pid:str}/secagg/input",
    tags=["protocol"],
    status_code=200,
    request_max_body_size=MAX_WEIGHTS_MESSAGE,
    opt={"signed_blob": True},
)
async def federation_secagg_input(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    coordinator: NamedDependency[Coordinator],
) -> dict[str, Any]:
    """Secure aggregation, provider to coordinator: its masked update (bytes)."""
    return await _answer(
        request, protocol_gate, pid, lambda o, blob: coordinator.secagg.on_input(o.sender, pid, o.body, blob)
    )


@post("/dsp/federations/{pid:str}/secagg/stage", tags=["protocol"], status_code=200)
async def federation_secagg_stage(
    request: Request[Any, Any, Any],
    pid: FromPath[str],
    protocol_gate: NamedDependency[ProtocolGate],
    federation_provider: NamedDependency[ProviderFederations],
) -> dict[str, Any]:
    """Secure aggregation, coordinator to provider: keys, shares or the unmask request."""
    return await _answer(
        request,
        protocol_gate,
        pid,
        lambda o, _: federation_provider.secagg.on_stage(o.sender, protocol_gate.address, pid, o.body),
        blob=False,
    )


async def _answer(
    request: Request[Any, Any, Any],
    gate: ProtocolGate,
    pid: str,
    handle: Callable[[Opened, bytes], dict[str, Any]],
    *,
    blob: bool = True,
) -> dict[str, Any]:
    """One protocol message about federation ``pid``: opened (with its bytes, when it carries
    some), refused unless its signed body names the federation of the path (a message is not
    replayed elsewhere), handled off the event loop, answered in plain JSON."""
    if blob:
        opened, data = await open_blob_request(request, gate, max_bytes=MAX_WEIGHTS_MESSAGE)
    else:
        opened, data = await open_request(request, gate), b""
    if opened.body.get("federation") != pid:
        raise Conflict("the signed message is about another federation than the path names")
    reply = await to_thread.run_sync(handle, opened, data)
    return reply


api_handlers = [FederationController]
public_handlers: list[object] = [
    federation_invite,
    federation_round,
    federation_update,
    federation_stop,
    federation_secagg_advert,
    federation_secagg_input,
    federation_secagg_stage,
]
