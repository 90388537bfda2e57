"""Transfers of an offering's bytes under an agreement (``download`` mode only): the
provider's side, and the transfer records of both sides.

A signed ``TransferRequestMessage`` is checked against the agreement (the asker's,
finalized, in force, download allowed, a use left, a callback on the asker's verified
origin), then answered with a ``TransferStartMessage`` whose data address carries a
short-lived token bound to the transfer and the consumer (:meth:`TransferService.authorize`
checks it on every data request). The data endpoint honours ``Range`` so a broken download
resumes.

The consumer's side — requesting, downloading, verifying against the terms and the chain,
confirming — is :class:`connector.downloads.DownloadService`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.agreements import AgreementService
from connector.dsp import DSP_CONTEXT
from connector.models import Agreement, TransferProcess
from kernel.addresses import foreign_origin
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import AgoraError, FieldError, Forbidden, InvalidInput, Unauthorized
from kernel.storage import ObjectStore

TOKEN_TTL = 600


class TransferRefused(AgoraError):
    type_slug = "transfer-refused"
    status = 403
    title = "Transfer refused"


class TransferService:
    """The provider's side of transfers and every transfer record; one instance serves all."""

    def __init__(
        self,
        engine: Engine,
        *,
        public_url: str,
        token_key: Any,
        store: ObjectStore,
        agreements: AgreementService,
        offering_modes: Callable[[str], list[str]],
        provenance: Callable[[str], dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.public_url = public_url.rstrip("/")
        self._token_key = token_key
        self.store = store
        self.agreements = agreements
        self._offering_modes = offering_modes
        self._provenance = provenance

    # Provider --------------------------------------------------------------------------

    def on_request(self, sender: str, sender_endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        consumer_pid = str(body.get("consumerPid") or "")
        agreement_id = str(body.get("agreementId") or "")
        if not consumer_pid or not agreement_id:
            raise InvalidInput(
                "a transfer request needs consumerPid and agreementId",
                errors=[FieldError("agreementId", "required")],
            )
        if body.get("format") not in (None, "HttpData-PULL"):
            raise InvalidInput(f"unsupported format {body.get('format')!r}; this node serves HttpData-PULL")
        agreement = self.agreements.as_provider(agreement_id)
        row = TransferProcess(
            id=f"urn:uuid:{uuid.uuid4()}",
            role="provider",
            peer_pid=consumer_pid,
            counterparty=sender,
            agreement_id=agreement_id,
            state="REQUESTED",
            sha256=str(agreement.terms.get("sha256", "")),
        )
        refusal = self._refusal(agreement, sender, sender_endpoint, body)
        row.state, row.reason = ("TERMINATED", refusal) if refusal else ("STARTED", "access granted")
        with transaction(self.engine) as session:
            session.add(row)
        if refusal:
            raise TransferRefused(refusal)
        token = self._issue_token(row)
        return {
            "@context": DSP_CONTEXT,
            "@type": "TransferStartMessage",
            "providerPid": row.id,
            "consumerPid": consumer_pid,
            "dataAddress": {
                "@type": "DataAddress",
                "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
                "endpoint": f"{self.public_url}/dsp/transfers/{row.id}/data",
                "endpointProperties": [
                    {"@type": "EndpointProperty", "name": "authorization", "value": token},
                    {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
                ],
            },
            "agora:sha256": row.sha256,
        }

    def _refusal(
        self, agreement: Agreement, sender: str, sender_endpoint: str, body: dict[str, Any]
    ) -> str | None:
        """Why the transfer is refused (a use of the agreement is taken when it is not)."""
        if "callbackAddress" in body:
            foreign = foreign_origin(
                body["callbackAddress"], sender_endpoint, "callbackAddress", f"{sender}'s verified"
            )
            if foreign:
                return foreign
        if agreement.consumer.lower() != sender.lower():
            return f"agreement {agreement.id} is not {sender}'s"
        modes = self._offering_modes(agreement.offering_id)
        if "download" not in modes:
            offered = ", ".join(modes)
            return f"the offering is not offered for download (its access modes: {offered}); use compute"
        try:
            self.agreements.use(agreement.id, consumer=sender, mode="download")
        except AgoraError as exc:
            return exc.detail
        return None

    def _issue_token(self, row: TransferProcess) -> str:
        now = int(time.time())
        claims = {
            "iss": self.public_url,
            "aud": row.counterparty,
            "sub": row.id,
            "iat": now,
            "exp": now + TOKEN_TTL,
            "agreement": row.agreement_id,
            "sha256": row.sha256,
        }
        return str(
            jwt.encode(
                {"alg": "ES256", "kid": self._token_key.kid}, claims, self._token_key, algorithms=["ES256"]
            )
        )

    def authorize(self, transfer_id: str, authorization: str | None) -> TransferProcess:
        """The transfer a data request's token opens, or :class:`Unauthorized` with the reason."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not token:
            raise Unauthorized("the data address needs its bearer token")
        try:
            claims = jwt.decode(token, self._token_key, algorithms=["ES256"]).claims
        except (JoseError, ValueError):
            raise Unauthorized("the transfer token is not valid") from None
        if claims.get("sub") != transfer_id or int(claims.get("exp", 0)) < time.time():
            raise Unauthorized("the transfer token is expired or for another transfer")
        with Session(self.engine) as session:
            row = fetch(
                session,
                TransferProcess,
                transfer_id,
                f"no transfer {transfer_id} in progress",
                where=lambda t: t.role == "provider" and t.state in ("STARTED", "COMPLETED"),
            )
        if str(claims.get("aud", "")).lower() != row.counterparty.lower():
            raise Forbidden("the token was issued to another participant")
        return row

    def on_completion(self, sender: str, transfer_id: str) -> dict[str, Any]:
        with transaction(self.engine) as session:
            row = fetch(
                session,
                TransferProcess,
                transfer_id,
                f"no transfer {transfer_id} with {sender}",
                where=lambda t: t.counterparty.lower() == sender.lower(),
                lock=True,
            )
            if row.state != "STARTED":
                raise InvalidInput(f"transfer {transfer_id} is {row.state}, not STARTED")
            row.state, row.reason, row.updated_at = "COMPLETED", "the consumer confirmed receipt", utcnow()
            return self._state(row)

    def _state(self, row: TransferProcess) -> dict[str, Any]:
        pids = (
            {"providerPid": row.id, "consumerPid": row.peer_pid}
            if row.role == "provider"
            else {"providerPid": row.peer_pid, "consumerPid": row.id}
        )
        return {"@context": DSP_CONTEXT, "@type": "TransferProcess", **pids, "state": row.state}

    # Records of both sides -------------------------------------------------------------

    def get(self, transfer_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            return _transfer_out(fetch(session, TransferProcess, transfer_id, f"no transfer {transfer_id}"))

    def list_all(self) -> list[dict[str, Any]]:
        """The newest 500 transfers."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(TransferProcess).order_by(col(TransferProcess.created_at).desc()).limit(500)
            ).all()
        return [_transfer_out(r) for r in rows]

    def provenance_for(self, row: TransferProcess) -> dict[str, Any]:
        return row.provenance if row.role == "consumer" else self._provenance(row.sha256)


def _transfer_out(row: TransferProcess) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "peer_pid": row.peer_pid,
        "counterparty": row.counterparty,
        "agreement_id": row.agreement_id,
        "state": row.state,
        "sha256": row.sha256,
        "size": row.size,
        "reason": row.reason,
        "created_at": as_utc(row.created_at).isoformat(),
    }
