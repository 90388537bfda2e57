"""Transfers of an offering's bytes under an agreement (``download`` mode only).

Provider: a signed ``TransferRequestMessage`` is checked against the agreement (the asker's,
finalized, in force, download allowed, a use left), then answered with a
``TransferStartMessage`` whose data address carries a short-lived token bound to the
transfer and the consumer. The data endpoint honours ``Range`` so a broken download resumes.

Consumer: the node requests the transfer, downloads into its own object store (resuming
on a broken connection), checks the bytes' sha256 against the agreed terms and, through the
provenance document, against the chain, then tells the provider it is complete. The file
and its provenance sidecar are then served to the node's own users. The data address must
be on the origin of the provider's verified endpoint, and no more than the agreed size is
taken from it (the download is cut off past it), through the node's outbound client.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.agreements import AgreementService
from connector.client import PeerClient, chain_refusal
from connector.dsp import DSP_CONTEXT
from connector.models import Agreement, Negotiation, TransferProcess
from kernel.addresses import foreign_origin
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import (
    AgoraError,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from kernel.limits import loads
from kernel.outbound import OutboundClient, OutboundRefused
from kernel.storage import ObjectStore

TOKEN_TTL = 600
RESUME_ATTEMPTS = 5


class TransferRefused(AgoraError):
    type_slug = "transfer-refused"
    status = 403
    title = "Transfer refused"


class TransferService:
    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        public_url: str,
        private_key: Callable[[], bytes],
        outbound: OutboundClient,
        chain_rpc_url: str,
        token_key: Any,
        store: ObjectStore,
        agreements: AgreementService,
        offering_modes: Callable[[str], list[str]],
        provenance: Callable[[str], dict[str, Any]],
        verify: Callable[[dict[str, Any], str], str | None],
    ) -> None:
        self.engine = engine
        self.address = address
        self.public_url = public_url.rstrip("/")
        self._private_key = private_key
        self.outbound = outbound
        self.chain_rpc_url = chain_rpc_url
        self._token_key = token_key
        self.store = store
        self.agreements = agreements
        self._offering_modes = offering_modes
        self._provenance = provenance
        self._verify = verify

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

    # Consumer --------------------------------------------------------------------------

    def start(self, agreement_id: str, actor: str) -> dict[str, Any]:
        """Request, download, check against terms and chain, confirm; returns the transfer."""
        with Session(self.engine) as session:
            agreement = session.get(Agreement, agreement_id)
            negotiation = session.get(Negotiation, agreement.negotiation_id) if agreement else None
        if agreement is None or agreement.role != "consumer" or negotiation is None:
            raise NotFound(f"no agreement {agreement_id} with this node as consumer")
        if not agreement.tx_hash:
            raise InvalidInput(f"agreement {agreement_id} is not finalized yet")
        row = TransferProcess(
            id=f"urn:uuid:{uuid.uuid4()}",
            role="consumer",
            counterparty=agreement.provider,
            agreement_id=agreement_id,
            state="REQUESTED",
            sha256=str(agreement.terms["sha256"]),
        )
        client = PeerClient(
            negotiation.counterparty_endpoint,
            outbound=self.outbound,
            private_key=self._private_key(),
            own_address=self.address,
            peer_address=agreement.provider,
        )
        try:
            cap = self._agreed_size(agreement)
            start, _ = client.post(
                "/dsp/transfers/request",
                {
                    "@context": DSP_CONTEXT,
                    "@type": "TransferRequestMessage",
                    "consumerPid": row.id,
                    "agreementId": agreement_id,
                    "format": "HttpData-PULL",
                    "callbackAddress": f"{self.public_url}/dsp",
                },
            )
            row.peer_pid = str(start.get("providerPid") or "")
            row.state = "STARTED"
            url, token = _data_address(start, negotiation.counterparty_endpoint, agreement.provider)
            self._download(row, url, token, cap)
            doc = self._fetch_provenance(url, token)
            refusal = chain_refusal(doc, negotiation.counterparty_endpoint, self.chain_rpc_url)
            if refusal:
                raise TransferRefused(refusal)
            problem = self._verify(doc, row.sha256)
            if problem is not None:
                raise TransferRefused(f"the bytes do not verify against the chain: {problem}")
            row.provenance = doc
            client.post(
                f"/dsp/transfers/{row.peer_pid}/completion",
                {
                    "@context": DSP_CONTEXT,
                    "@type": "TransferCompletionMessage",
                    "providerPid": row.peer_pid,
                    "consumerPid": row.id,
                },
            )
            row.state, row.reason = "COMPLETED", f"received and verified (requested by {actor})"
        except AgoraError as exc:
            row.state, row.reason = "TERMINATED", exc.detail
            raise
        finally:
            with transaction(self.engine) as session:
                session.merge(row)
        return self.get(row.id)

    def _agreed_size(self, agreement: Agreement) -> int:
        """The most bytes to take: the size in the agreed terms, within this node's cap."""
        limit = self.outbound.policy.max_download_bytes
        size = agreement.terms.get("size")
        if size is None:
            return limit  # terms agreed before sizes were part of them: the digest still decides
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise TransferRefused(f"the agreed size {size!r} is not a byte count")
        if size > limit:
            raise TransferRefused(f"the agreed size {size} is over this node's download cap of {limit} bytes")
        return size

    def _download(self, row: TransferProcess, url: str, token: str, cap: int) -> None:
        """Into a staging file, resuming with Range after a broken connection; never more
        than ``cap`` bytes."""
        with self.store.stage() as staged:
            for attempt in range(RESUME_ATTEMPTS):
                headers = {"Authorization": f"Bearer {token}"}
                if staged.size:
                    headers["Range"] = f"bytes={staged.size}-"
                try:
                    # cut off (and refused) past what is left of the agreed size
                    with self.outbound.stream(
                        "GET", url, headers=headers, max_bytes=cap - staged.size
                    ) as response:
                        if response.status_code >= 400:
                            raise TransferRefused(
                                f"the provider refused the data: HTTP {response.status_code}"
                            )
                        for chunk in response.iter_bytes(1024 * 1024):
                            staged.write(chunk)
                    break
                except OutboundRefused as exc:
                    raise TransferRefused(f"{exc.detail} (the agreed size is {cap} bytes)") from None
                except ServiceUnavailable as exc:
                    if attempt == RESUME_ATTEMPTS - 1:
                        raise ServiceUnavailable(
                            f"the download broke off {RESUME_ATTEMPTS} times: {exc.detail}"
                        ) from exc
            if staged.sha256 != row.sha256:
                raise TransferRefused(
                    f"received bytes hash to {staged.sha256}, the agreement says {row.sha256}"
                )
            info = self.store.commit(staged)
            row.size = info.size

    def _fetch_provenance(self, data_url: str, token: str) -> dict[str, Any]:
        url = data_url.rsplit("/", 1)[0] + "/provenance"
        response = self.outbound.request("GET", url, headers={"Authorization": f"Bearer {token}"})
        try:
            response.raise_for_status()
            doc = loads(response.content, what="the transfer's provenance")
        except (httpx.HTTPError, InvalidInput) as exc:
            raise ServiceUnavailable(f"cannot fetch the provenance of the transfer: {exc}") from exc
        if not isinstance(doc, dict):
            raise TransferRefused("the transfer's provenance is not a JSON object")
        return doc

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

    def received(self, transfer_id: str) -> tuple[TransferProcess, Iterator[bytes]]:
        """A completed transfer's bytes on the consumer's node (for its own users)."""
        with Session(self.engine) as session:
            row = fetch(
                session,
                TransferProcess,
                transfer_id,
                f"no completed transfer {transfer_id} on this node",
                where=lambda t: t.role == "consumer" and t.state == "COMPLETED",
            )
        return row, self.store.read(row.sha256)

    def provenance_for(self, row: TransferProcess) -> dict[str, Any]:
        return row.provenance if row.role == "consumer" else self._provenance(row.sha256)


def _data_address(start: dict[str, Any], provider_endpoint: str, provider: str) -> tuple[str, str]:
    """The data URL and its token from a ``TransferStartMessage``; the URL must be on the
    origin of the provider's verified endpoint."""
    try:
        address = start["dataAddress"]
        url = str(address["endpoint"])
        token = next(
            str(p["value"]) for p in address["endpointProperties"] if p.get("name") == "authorization"
        )
    except (KeyError, TypeError, AttributeError, StopIteration):
        raise TransferRefused(
            "the provider's TransferStartMessage lacks a data address with a token"
        ) from None
    refusal = foreign_origin(
        url, provider_endpoint, "the data address", f"the provider {provider}'s verified"
    )
    if refusal:
        raise TransferRefused(refusal)
    return url, token


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
