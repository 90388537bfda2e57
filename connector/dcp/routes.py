"""HTTP routes of the credential side: the DCP Credential Service (public, under ``/dcp``,
callers named by their self-issued tokens) and the management API ``/api/v1/credentials``
(scope ``admin``).

Credential Service (the base its DID document advertises as ``CredentialService``):
``POST /dcp/presentations/query``, ``POST /dcp/credentials`` (Storage API),
``POST /dcp/offers``. Management: ``GET|POST /credentials`` (list, import a JWT),
``DELETE /credentials/{id}``, ``POST /credentials/issue`` (sign one as this node),
``POST /credentials/access-tokens`` (an access token a verifier reads this node's
credentials with: the holder's token service), ``GET|POST|DELETE /credentials/trusted-issuers``.
"""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from pydantic import BaseModel, ConfigDict, Field

from connector.dcp.service import DcpService
from connector.dcp.sts import check_grant, unconfigured
from connector.dcp.tokens import ACCESS_TTL, MAX_SCOPES, mint_access_token
from kernel.errors import InvalidInput, PayloadTooLarge
from kernel.limits import JSON, loads
from kernel.validation import validate

MAX_MESSAGE_BYTES = 1024 * 1024


async def _message(request: Request[Any, Any, Any]) -> tuple[bytes, Any]:
    raw = await request.body()
    if len(raw) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(f"DCP messages are limited to {MAX_MESSAGE_BYTES} bytes")
    if not raw.strip():
        raise InvalidInput("a DCP message is a JSON object")
    return raw, loads(raw, JSON.with_max_string(MAX_MESSAGE_BYTES), what="the DCP message")


@post("/dcp/presentations/query", tags=["credentials"], status_code=200)
async def presentation_query(
    request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
) -> Any:
    """A verifier asks for this node's credentials (PresentationQueryMessage) with an access
    token this node issued it; the answer is a PresentationResponseMessage."""
    raw, body = await _message(request)
    authorization = request.headers.get("authorization")
    return await to_thread.run_sync(dcp_service.credentials.query, authorization, raw, body)


@post("/dcp/credentials", tags=["credentials"], status_code=200)
async def credential_message(
    request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
) -> Any:
    """A trusted issuer delivers credentials (CredentialMessage, Storage API)."""
    raw, body = await _message(request)
    authorization = request.headers.get("authorization")
    return await to_thread.run_sync(dcp_service.credentials.receive, authorization, raw, body)


@post("/dcp/offers", tags=["credentials"], status_code=200)
async def credential_offer(request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]) -> Any:
    """A trusted issuer offers credentials (CredentialOfferMessage); recorded for the operator."""
    raw, body = await _message(request)
    authorization = request.headers.get("authorization")
    return await to_thread.run_sync(dcp_service.credentials.offer, authorization, raw, body)


@post("/dcp/sts/token", tags=["credentials"], status_code=200)
async def sts_token(request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]) -> Any:
    """The holder's Secure Token Service (:mod:`connector.dcp.sts`): an OAuth 2.0
    client-credentials request answered with an ID token carrying an access token for the
    ``audience`` verifier; 404 unless the operator configured its client."""
    sts = dcp_service.sts
    if sts is None:
        raise unconfigured()
    raw = await request.body()
    return await to_thread.run_sync(sts.token, raw, request.headers.get("content-type"))


class CredentialImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwt: str = Field(min_length=1, max_length=64 * 1024, description="the credential as its issuer signed it")


class CredentialIssue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=5, max_length=500, description="the subject's DID")
    type: str = Field(min_length=1, max_length=100, description="e.g. MembershipCredential")
    claims: dict[str, Any] = Field(default_factory=dict, max_length=64)
    days: float | None = Field(default=365, gt=0, le=3650, description="days it lives; null: never expires")


class AccessTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verifier: str = Field(min_length=5, max_length=500, description="the DID of the verifier it is bound to")
    scopes: list[str] = Field(
        min_length=1,
        max_length=MAX_SCOPES,
        description="what it grants, e.g. org.eclipse.dspace.dcp.vc.type:MembershipCredential:read",
    )


class TrustedIssuerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    did: str = Field(min_length=5, max_length=500)
    type: str | None = Field(
        default=None, max_length=100, description="one credential type; none: every type"
    )


class CredentialController(Controller):
    path = "/credentials"
    tags = ["credentials"]

    @get("", opt={"scope": "admin"}, sync_to_thread=True)
    def list_credentials(self, dcp_service: NamedDependency[DcpService]) -> list[dict[str, Any]]:
        """The credentials this node holds."""
        return dcp_service.held()

    @post("", opt={"scope": "admin"}, status_code=201)
    async def import_credential(
        self, request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
    ) -> dict[str, Any]:
        """Keep a credential issued to this node (a JWT): its issuer's signature, its dates and
        its subject are checked."""
        body = validate(CredentialImport, await request.body(), what="credential")
        actor = request.user.subject
        return await to_thread.run_sync(lambda: dcp_service.import_credential(body.jwt, actor=actor))

    @post("/issue", opt={"scope": "admin"}, status_code=201)
    async def issue_credential(
        self, request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
    ) -> dict[str, Any]:
        """Sign a credential as this node (the data space's issuer); nothing is stored."""
        body = validate(CredentialIssue, await request.body(), what="credential")
        jwt = await to_thread.run_sync(
            lambda: dcp_service.issue(body.subject, body.type, body.claims, days=body.days)
        )
        return {"jwt": jwt}

    @post("/access-tokens", opt={"scope": "admin"}, status_code=201)
    async def access_token(
        self, request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
    ) -> dict[str, Any]:
        """An access token letting one verifier read, once and within minutes, this node's
        credentials of the scopes given (what the node puts into its self-issued tokens'
        ``token`` claim; here for a verifier the operator serves by hand)."""
        body = validate(AccessTokenIn, await request.body(), what="access token request")
        check_grant(body.verifier, body.scopes)
        token = await to_thread.run_sync(
            lambda: mint_access_token(dcp_service.signer, body.verifier, body.scopes)
        )
        return {"token": token, "verifier": body.verifier, "scopes": body.scopes, "expires_in": ACCESS_TTL}

    @delete("/{credential_id:str}", opt={"scope": "admin"}, status_code=200, sync_to_thread=True)
    def remove_credential(
        self,
        request: Request[Any, Any, Any],
        credential_id: FromPath[str],
        dcp_service: NamedDependency[DcpService],
    ) -> dict[str, Any]:
        """Forget a held credential."""
        dcp_service.holder.remove(credential_id, actor=request.user.subject)
        return {"removed": credential_id}

    @get("/trusted-issuers", opt={"scope": "admin"}, sync_to_thread=True)
    def list_trusted(self, dcp_service: NamedDependency[DcpService]) -> list[dict[str, Any]]:
        """The issuers this node accepts credentials from (type null: every type)."""
        return dcp_service.trust.entries()

    @post("/trusted-issuers", opt={"scope": "admin"}, status_code=201)
    async def add_trusted(
        self, request: Request[Any, Any, Any], dcp_service: NamedDependency[DcpService]
    ) -> dict[str, Any]:
        """Trust an issuer's credentials (of one type, or of every type)."""
        body = validate(TrustedIssuerIn, await request.body(), what="trusted issuer")
        actor = request.user.subject
        row = await to_thread.run_sync(lambda: dcp_service.trust.add(body.did, body.type or "", actor=actor))
        return {"did": row.did, "type": row.credential_type or None}

    @delete("/trusted-issuers", opt={"scope": "admin"}, status_code=200, sync_to_thread=True)
    def remove_trusted(
        self,
        request: Request[Any, Any, Any],
        dcp_service: NamedDependency[DcpService],
        did: FromQuery[str],
        type: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """Stop trusting an issuer (for one type, or its every-type entry)."""
        dcp_service.trust.remove(did, type or "", actor=request.user.subject)
        return {"removed": did, "type": type}


api_handlers = [CredentialController]
public_handlers = [presentation_query, credential_message, credential_offer, sts_token]
