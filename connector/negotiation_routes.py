"""HTTP routes of negotiations, agreements and transfers.

Management (``/api/v1``, bearer tokens): start, list and show negotiations, approve or
reject (provider), counter-offer (provider), accept (consumer), terminate; agreements; a
transfer under an agreement, its bytes with their provenance, and suspending, resuming,
completing or terminating it. The Dataspace Protocol's own routes are :mod:`connector.dsp.routes`.
"""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream
from pydantic import BaseModel, ConfigDict, Field, model_validator

from connector.agreements import AgreementService
from connector.downloads import DownloadService
from connector.negotiation import NegotiationService
from connector.services import ParticipantService
from connector.transfers import TransferService
from kernel.errors import FieldError, InvalidInput
from kernel.hashing import repr_digest
from kernel.validation import validate


class NegotiationStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offering_id: str = Field(min_length=1, max_length=64)
    provider: str = Field(pattern=r"^https?://", max_length=500, description="the provider node's URL")
    purpose: str = Field(min_length=1, max_length=200)
    access_mode: str = Field(default="download", pattern=r"^(download|compute|federate)$")
    alias: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,63}$",
        description="agree on the version this alias names when the provider agrees (e.g. champion)",
    )
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="agree on this version")
    accept_offers: bool = Field(
        default=False, description="accept the provider's offer at once (DSP leaves it to the consumer)"
    )

    @model_validator(mode="after")
    def _one_version(self) -> NegotiationStart:
        if self.alias is not None and self.version is not None:
            raise ValueError("ask for an alias or a version, not both")
        return self


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, min_length=1, max_length=1000)


class CounterOffer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: dict[str, Any]


class TransferStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agreement_id: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$")


async def _body(request: Request[Any, Any, Any], model: type[BaseModel]) -> Any:
    return validate(model, await request.body(), what=model.__name__)


async def _end(
    request: Request[Any, Any, Any], negotiation_id: str, service: NegotiationService, default: str
) -> dict[str, Any]:
    """Reject or terminate, with the reason given in the body (optional) or ``default``."""
    body: Reason = await _body(request, Reason) if await request.body() else Reason()
    return await to_thread.run_sync(
        service.terminate, negotiation_id, body.reason or default, request.user.subject
    )


class NegotiationController(Controller):
    path = "/negotiations"
    tags = ["negotiations"]

    @post("", opt={"scope": "negotiations:write"}, status_code=201)
    async def start(
        self,
        request: Request[Any, Any, Any],
        negotiation_service: NamedDependency[NegotiationService],
        participant_service: NamedDependency[ParticipantService],
    ) -> dict[str, Any]:
        """Ask a provider (a known peer) for an agreement on one of its offerings."""
        body: NegotiationStart = await _body(request, NegotiationStart)
        peer = next(
            (p for p in participant_service.peers() if p.endpoint.rstrip("/") == body.provider.rstrip("/")),
            None,
        )
        if peer is None:
            raise InvalidInput(
                f"{body.provider} is not a known peer: add it first (agora peers add)",
                errors=[FieldError("provider", "unknown peer")],
            )
        return await to_thread.run_sync(
            lambda: negotiation_service.start(
                offering_id=body.offering_id,
                provider=peer,
                purpose=body.purpose,
                access_mode=body.access_mode,
                actor=request.user.subject,
                alias=body.alias,
                version=body.version,
                options={"on_offer": "accept"} if body.accept_offers else None,
            )
        )

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_negotiations(
        self,
        negotiation_service: NamedDependency[NegotiationService],
        in_state: Annotated[str | None, QueryParameter(name="state")] = None,
    ) -> list[dict[str, Any]]:
        """Newest first; ``?state=REQUESTED`` lists what waits (e.g. for approval)."""
        return negotiation_service.list_all(in_state)

    @get("/{negotiation_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(
        self, negotiation_id: FromPath[str], negotiation_service: NamedDependency[NegotiationService]
    ) -> dict[str, Any]:
        """State, the full history with reasons, the agreement, and undelivered messages."""
        return negotiation_service.get(negotiation_id)

    @post(
        "/{negotiation_id:str}/approve",
        opt={"scope": "negotiations:write"},
        status_code=200,
        sync_to_thread=True,
    )
    def approve(
        self,
        request: Request[Any, Any, Any],
        negotiation_id: FromPath[str],
        negotiation_service: NamedDependency[NegotiationService],
    ) -> dict[str, Any]:
        return negotiation_service.approve(negotiation_id, request.user.subject)

    @post("/{negotiation_id:str}/reject", opt={"scope": "negotiations:write"}, status_code=200)
    async def reject(
        self,
        request: Request[Any, Any, Any],
        negotiation_id: FromPath[str],
        negotiation_service: NamedDependency[NegotiationService],
    ) -> dict[str, Any]:
        return await _end(request, negotiation_id, negotiation_service, "rejected")

    @post("/{negotiation_id:str}/terminate", opt={"scope": "negotiations:write"}, status_code=200)
    async def terminate(
        self,
        request: Request[Any, Any, Any],
        negotiation_id: FromPath[str],
        negotiation_service: NamedDependency[NegotiationService],
    ) -> dict[str, Any]:
        return await _end(request, negotiation_id, negotiation_service, "terminated")

    @post("/{negotiation_id:str}/offer", opt={"scope": "negotiations:write"}, status_code=200)
    async def counter_offer(
        self,
        request: Request[Any, Any, Any],
        negotiation_id: FromPath[str],
        negotiation_service: NamedDependency[NegotiationService],
    ) -> dict[str, Any]:
        """Provider: answer with changed terms."""
        from marketplace.services import check_policy

        body: CounterOffer = await _body(request, CounterOffer)
        check_policy(body.policy)
        return await to_thread.run_sync(
            negotiation_service.counter_offer, negotiation_id, body.policy, request.user.subject
        )

    @post(
        "/{negotiation_id:str}/accept",
        opt={"scope": "negotiations:write"},
        status_code=200,
        sync_to_thread=True,
    )
    def accept(
        self,
        request: Request[Any, Any, Any],
        negotiation_id: FromPath[str],
        negotiation_service: NamedDependency[NegotiationService],
    ) -> dict[str, Any]:
        """Consumer: accept the provider's counter-offer."""
        return negotiation_service.accept_offer(negotiation_id, request.user.subject)


class AgreementController(Controller):
    path = "/agreements"
    tags = ["agreements"]

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_agreements(self, agreement_service: NamedDependency[AgreementService]) -> list[dict[str, Any]]:
        return agreement_service.list_all()

    @get("/{agreement_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(
        self, agreement_id: FromPath[str], agreement_service: NamedDependency[AgreementService]
    ) -> dict[str, Any]:
        """Terms, both signatures, the chain record and the usage log."""
        return agreement_service.get(agreement_id)


class TransferController(Controller):
    path = "/transfers"
    tags = ["transfers"]

    @post("", opt={"scope": "negotiations:write"}, status_code=201)
    async def start(
        self, request: Request[Any, Any, Any], download_service: NamedDependency[DownloadService]
    ) -> dict[str, Any]:
        """Consumer: fetch an offering under an agreement into this node, checked against the chain."""
        body: TransferStart = await _body(request, TransferStart)
        return await to_thread.run_sync(
            download_service.start, body.agreement_id.lower(), request.user.subject
        )

    @get("", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def list_transfers(self, transfer_service: NamedDependency[TransferService]) -> list[dict[str, Any]]:
        return transfer_service.list_all()

    @get("/{transfer_id:str}", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def show(
        self, transfer_id: FromPath[str], transfer_service: NamedDependency[TransferService]
    ) -> dict[str, Any]:
        return transfer_service.get(transfer_id)

    @get("/{transfer_id:str}/data", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def data(self, transfer_id: FromPath[str], download_service: NamedDependency[DownloadService]) -> Stream:
        row, chunks = download_service.received(transfer_id)
        return Stream(
            chunks,
            media_type="application/octet-stream",
            headers={"Content-Length": str(row.size), "Repr-Digest": repr_digest(row.sha256)},
        )

    @post(
        [
            "/{transfer_id:str}/suspend",
            "/{transfer_id:str}/resume",
            "/{transfer_id:str}/complete",
            "/{transfer_id:str}/terminate",
        ],
        opt={"scope": "negotiations:write"},
        status_code=200,
    )
    async def act(
        self,
        request: Request[Any, Any, Any],
        transfer_id: FromPath[str],
        transfer_service: NamedDependency[TransferService],
    ) -> dict[str, Any]:
        """Suspend, resume, complete or terminate a transfer from this side (either role); the
        other side is told, with the reason given (optional)."""
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        body: Reason = await _body(request, Reason) if await request.body() else Reason()
        return await to_thread.run_sync(
            transfer_service.act, transfer_id, action, body.reason or "", request.user.subject
        )

    @get("/{transfer_id:str}/provenance", opt={"scope": "catalog:read"}, sync_to_thread=True)
    def provenance(
        self, transfer_id: FromPath[str], download_service: NamedDependency[DownloadService]
    ) -> dict[str, Any]:
        row, _ = download_service.received(transfer_id)
        return row.provenance  # what the download checked against the chain


api_handlers = [NegotiationController, AgreementController, TransferController]
public_handlers: list[object] = []
