"""Transfer processes as the Dataspace Protocol has them, on both sides, and their records.

::

    REQUESTED ── start ──▶ STARTED ── completion ──▶ COMPLETED
        │                   │  ▲
        │        suspension │  │ start (resumption)
        │                   ▼  │
        └── termination ──▶ SUSPENDED ─ termination ─▶ TERMINATED   (from any state not final)

The provider answers a ``TransferRequestMessage`` with 201 and the process in REQUESTED once
the request is checked against the agreement (the asker's, final, in force, download
allowed, a use left, a ``callbackAddress`` on the asker's verified origin); the
``TransferStartMessage`` follows through the outbox to ``<callbackAddress>/transfers/<pid>/start``,
with an ``HttpData-PULL`` data address whose short-lived token is bound to the transfer and
the consumer (:meth:`TransferService.authorize` checks it on every data request; the data
endpoint honours ``Range``). Either side may suspend, resume (a start message), complete or
terminate; each move is checked by :data:`LIFECYCLE` (the same state machine as jobs and
federations) and logged in the record's ``history``. A suspended transfer's token opens
nothing; resuming issues a new one.

The consumer's side — requesting, waiting for the start, downloading, verifying, completing —
is :class:`connector.downloads.DownloadService`; the messages it receives are handled here.
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
from connector.dispatcher import queue_message
from connector.dsp import DSP_CONTEXT
from connector.dsp.client import PeerClients
from connector.dsp.jsonld import for_plain_peer
from connector.models import Agreement, TransferProcess
from kernel.addresses import foreign_origin
from kernel.db import as_utc, fetch, transaction
from kernel.errors import (
    AgoraError,
    ConfigurationError,
    Conflict,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from kernel.lifecycle import Lifecycle
from kernel.storage import ObjectStore

TOKEN_TTL = 600
PULL = "HttpData-PULL"
FORMATS = (PULL, "HttpData_PULL", "Http-PULL")  # how connectors spell the one format served here
LIFECYCLE = Lifecycle.of(
    "transfer",
    {
        "REQUESTED": ["STARTED", "TERMINATED"],
        "STARTED": ["SUSPENDED", "COMPLETED", "TERMINATED"],
        "SUSPENDED": ["STARTED", "TERMINATED"],
        "COMPLETED": [],
        "TERMINATED": [],
    },
    initial="REQUESTED",
)
MESSAGES = {
    "start": "TransferStartMessage",
    "completion": "TransferCompletionMessage",
    "suspension": "TransferSuspensionMessage",
    "termination": "TransferTerminationMessage",
}
TARGETS = {
    "start": "STARTED",
    "completion": "COMPLETED",
    "suspension": "SUSPENDED",
    "termination": "TERMINATED",
}


class TransferRefused(AgoraError):
    type_slug = "transfer-refused"
    status = 403
    title = "Transfer refused"


def new_pid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def pids(row: TransferProcess) -> dict[str, str]:
    if row.role == "provider":
        return {"providerPid": row.id, "consumerPid": row.peer_pid or ""}
    return {"providerPid": row.peer_pid or "", "consumerPid": row.id}


def process_message(row: TransferProcess) -> dict[str, Any]:
    """The DSP ``TransferProcess`` of ``row``."""
    return {"@context": DSP_CONTEXT, "@type": "TransferProcess", **pids(row), "state": row.state}


class TransferService:
    """Both sides' transfer records, the provider's side and the messages either receives."""

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
        plain: Callable[[str], bool] = lambda _address: False,
        wake_dispatcher: Callable[[], None] = lambda: None,
        options: Callable[[str], dict[str, str]] = lambda _agreement: {},
        peers: PeerClients | None = None,
    ) -> None:
        self.engine = engine
        self.public_url = public_url.rstrip("/")
        self._token_key = token_key
        self.store = store
        self.agreements = agreements
        self._offering_modes = offering_modes
        self._provenance = provenance
        self._plain = plain
        self._wake = wake_dispatcher
        self._options = options
        self.peers = peers  # connector.dsp.client.PeerClients: the consumer's requests

    # Moves and messages -------------------------------------------------------------------

    def wake(self) -> None:
        """Have the dispatcher deliver what was queued now."""
        self._wake()

    @staticmethod
    def move(session: Session, row: TransferProcess, target: str, reason: str) -> None:
        """Move ``row`` (held in ``session``) along :data:`LIFECYCLE`, logged in its history."""
        if row.history is None:
            row.history = []
        LIFECYCLE.move(row, target, reason)

    def send(self, session: Session, row: TransferProcess, kind: str, **fields: Any) -> None:
        """Queue a message of ``kind`` (start, completion, suspension, termination) to the other
        side: to its ``callbackAddress`` (the consumer's) or its DSP base (the provider's)."""
        body = {"@context": DSP_CONTEXT, "@type": MESSAGES[kind], **pids(row), **fields}
        peer_pid = row.peer_pid or ""
        queue_message(
            session,
            recipient=row.counterparty,
            url=f"{row.callback}/transfers/{peer_pid}/{kind}",
            body=for_plain_peer(body) if self._plain(row.counterparty) else body,
            negotiation_id=row.id,
        )

    # Provider --------------------------------------------------------------------------

    def on_request(self, sender: str, sender_endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """A ``TransferRequestMessage``: 201 with the process in REQUESTED, or refused (4xx)
        with the reason and recorded TERMINATED; the start message follows."""
        consumer_pid, agreement_ref = body.get("consumerPid"), body.get("agreementId")
        if not isinstance(consumer_pid, str) or not consumer_pid or not isinstance(agreement_ref, str):
            raise InvalidInput(
                "a transfer request needs consumerPid and agreementId",
                errors=[FieldError("agreementId", "required")],
            )
        fmt = body.get("format", PULL)
        if fmt not in FORMATS:
            raise InvalidInput(
                f"unsupported format {str(fmt)[:80]!r}; this node serves {PULL}",
                errors=[FieldError("format", "unsupported")],
            )
        callback = body.get("callbackAddress")
        if not isinstance(callback, str) or not callback:
            raise InvalidInput(
                "a transfer request names its callbackAddress",
                errors=[FieldError("callbackAddress", "required")],
            )
        agreement = self._agreement(agreement_ref)
        row = TransferProcess(
            id=new_pid(),
            role="provider",
            peer_pid=consumer_pid[:64],
            counterparty=sender,
            agreement_id=agreement.id,
            state="REQUESTED",
            sha256=str(agreement.terms.get("sha256", "")),
            callback=callback.rstrip("/"),
            format=PULL,
            history=[],
        )
        refusal = foreign_origin(callback, sender_endpoint, "callbackAddress", f"{sender}'s verified")
        refusal = refusal or self._refusal(agreement, sender)
        with transaction(self.engine) as session:
            session.add(row)
            if refusal:
                self.move(session, row, "TERMINATED", refusal)
            else:
                requested = process_message(row)
                action = self._options(agreement.id).get("on_request", "start")
                if action == "start":
                    self._start(session, row, "access granted under the agreement")
                elif action == "terminate":
                    self.move(session, row, "TERMINATED", "the provider declines (its setting)")
                    self.send(session, row, "termination", code="declined", reason=["the provider declines"])
                else:
                    row.reason = "waiting for a person at the provider to start it"
        if refusal:
            raise TransferRefused(refusal)
        self._wake()
        return requested

    def _agreement(self, reference: str) -> Agreement:
        """The agreement a request names: its id, as this node sent it in the agreement."""
        agreement_id = reference.removeprefix("urn:agora:agreement:")
        try:
            return self.agreements.as_provider(agreement_id)
        except NotFound:
            raise TransferRefused(f"no agreement {reference[:120]} with this node as provider") from None

    def _refusal(self, agreement: Agreement, sender: str) -> str | None:
        """Why the transfer is refused (a use of the agreement is taken when it is not)."""
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

    def _start(self, session: Session, row: TransferProcess, reason: str) -> None:
        """STARTED, and the start message with a fresh data address to the consumer."""
        self.move(session, row, "STARTED", reason)
        self.send(session, row, "start", dataAddress=self._data_address(row), **{"agora:sha256": row.sha256})

    def _data_address(self, row: TransferProcess) -> dict[str, Any]:
        return {
            "@type": "DataAddress",
            "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
            "endpoint": f"{self.public_url}/dsp/transfers/{row.id}/data",
            "endpointProperties": [
                {"@type": "EndpointProperty", "name": "authorization", "value": self._issue_token(row)},
                {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
            ],
        }

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
            "jti": uuid.uuid4().hex,  # a new token per start: one of a suspended start opens nothing
        }
        token = str(
            jwt.encode(
                {"alg": "ES256", "kid": self._token_key.kid}, claims, self._token_key, algorithms=["ES256"]
            )
        )
        row.data_address = {"token_id": claims["jti"]}
        return token

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
                where=lambda t: t.role == "provider" and t.state == "STARTED",
            )
        if str(claims.get("aud", "")).lower() != row.counterparty.lower():
            raise Forbidden("the token was issued to another participant")
        if claims.get("jti") != (row.data_address or {}).get("token_id"):
            raise Unauthorized("the token is of an earlier start of this transfer (it was suspended since)")
        return row

    # Consumer ---------------------------------------------------------------------------

    def request(self, agreement_id: str, actor: str, *, format: str = PULL) -> dict[str, Any]:
        """Ask the provider of a consumer agreement for a transfer and record it; what follows
        (start, suspension, completion, termination) arrives as messages. Downloading is
        :meth:`connector.downloads.DownloadService.start`'s."""
        with Session(self.engine) as session:
            agreement = fetch(
                session,
                Agreement,
                agreement_id,
                f"no agreement {agreement_id} with this node as consumer",
                where=lambda a: a.role == "consumer",
            )
        if self.peers is None:
            raise ConfigurationError("this transfer service sends no requests (no peer clients)")
        client = self.peers.to(agreement.provider)
        row = TransferProcess(
            id=new_pid(),
            role="consumer",
            counterparty=agreement.provider,
            agreement_id=agreement.id,
            state="REQUESTED",
            sha256=str(agreement.terms.get("sha256") or ""),
            callback=client.base_url,
            format=format,
            history=[],
        )
        with transaction(self.engine) as session:
            session.add(row)
        message = {
            "@context": DSP_CONTEXT,
            "@type": "TransferRequestMessage",
            "consumerPid": row.id,
            "agreementId": agreement.peer_agreement_id or agreement.id,
            "format": format,
            "callbackAddress": f"{self.public_url}/dsp",
        }
        try:
            reply, _ = client.post("/transfers/request", message)
        except AgoraError as exc:
            with transaction(self.engine) as session:
                fresh = session.get(TransferProcess, row.id, with_for_update=True)
                if fresh is not None and fresh.state not in LIFECYCLE.final:
                    self.move(session, fresh, "TERMINATED", f"the provider refused: {exc.detail}")
            raise
        with transaction(self.engine) as session:
            fresh = session.get(TransferProcess, row.id, with_for_update=True)
            if fresh is not None and not fresh.peer_pid and isinstance(reply.get("providerPid"), str):
                fresh.peer_pid = reply["providerPid"][:64]
            if fresh is not None:
                fresh.reason = f"requested by {actor}"
        return self.get(row.id)

    # Messages about a transfer (either side) -----------------------------------------------

    def on_message(self, sender: str, pid: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """A start, completion, suspension or termination message for transfer ``pid``."""
        if kind not in MESSAGES:
            raise NotFound(f"no transfer message {kind}")
        with transaction(self.engine) as session:
            row = _theirs(session, pid, sender, lock=True)
            if body.get("@type") not in (MESSAGES[kind], None):
                raise InvalidInput(f"expected a {MESSAGES[kind]}, got {str(body.get('@type'))[:80]!r}")
            other = "providerPid" if row.role == "consumer" else "consumerPid"
            if isinstance(body.get(other), str) and row.peer_pid and body[other] != row.peer_pid:
                raise InvalidInput(f"the message names {other} {body[other][:80]}, not {row.peer_pid}")
            if row.role == "consumer" and not row.peer_pid and isinstance(body.get("providerPid"), str):
                row.peer_pid = body["providerPid"][:64]
            self._on(session, row, kind, body)
            reply = process_message(row)
        self._wake()
        return reply

    def _on(self, session: Session, row: TransferProcess, kind: str, body: dict[str, Any]) -> None:
        who = "the provider" if row.role == "consumer" else "the consumer"
        target = TARGETS[kind]
        LIFECYCLE.check(row.state, target)
        if kind == "start" and row.role == "provider":  # the consumer resumes a suspended transfer
            if (row.data_address or {}).get("suspended_by") != "consumer":
                raise Conflict("the provider suspended this transfer: only the provider resumes it")
            refusal = self.agreements.still_holds(row.agreement_id, "download")
            if refusal:
                raise TransferRefused(f"the transfer cannot resume: {refusal}")
            self._start(session, row, f"resumed by {who}")
            return
        reason = f"{MESSAGES[kind]} from {who}"
        if kind in ("suspension", "termination"):
            reason += f": {_reason(body)}"
        if kind == "suspension" and row.role == "provider":
            row.data_address = {**(row.data_address or {}), "suspended_by": "consumer"}
        if kind == "start":
            address = body.get("dataAddress")
            if not isinstance(address, dict):
                raise InvalidInput("a TransferStartMessage for a pull transfer carries its dataAddress")
            row.data_address = address
        self.move(session, row, target, reason)

    def state(self, sender: str, pid: str) -> dict[str, Any]:
        """``GET /transfers/{pid}``: the process, for the other party of the transfer only."""
        with Session(self.engine) as session:
            return process_message(_theirs(session, pid, sender))

    # This side's own moves (management API) ---------------------------------------------

    def act(self, transfer_id: str, action: str, reason: str, actor: str) -> dict[str, Any]:
        """Suspend, resume, complete or terminate a transfer from this side; the peer is told."""
        kinds = {
            "suspend": "suspension",
            "resume": "start",
            "complete": "completion",
            "terminate": "termination",
        }
        kind = kinds.get(action)
        if kind is None:
            raise InvalidInput(f"unknown action {action!r}; one of {', '.join(kinds)}")
        with transaction(self.engine) as session:
            row = fetch(session, TransferProcess, transfer_id, f"no transfer {transfer_id}", lock=True)
            target = TARGETS[kind]
            LIFECYCLE.check(row.state, target)
            if kind == "start" and row.role == "provider":
                refusal = self.agreements.still_holds(row.agreement_id, "download")
                if refusal:
                    raise TransferRefused(f"the transfer cannot resume: {refusal}")
                self._start(session, row, f"resumed by {actor}")
            else:
                if kind == "suspension" and row.role == "provider":
                    row.data_address = {**(row.data_address or {}), "suspended_by": "provider"}
                self.move(session, row, target, f"{reason or action} (by {actor})")
                extra = (
                    {"code": action, "reason": [reason or action]}
                    if kind in ("suspension", "termination")
                    else {}
                )
                self.send(session, row, kind, **extra)
        self._wake()
        return self.get(transfer_id)

    def on_given_up(self, transfer_id: str | None, error: str) -> None:
        """The dispatcher could not deliver a transfer's message: terminate with the reason."""
        if transfer_id is None:
            return
        with transaction(self.engine) as session:
            row = session.get(TransferProcess, transfer_id, with_for_update=True)
            if row is not None and row.state not in LIFECYCLE.final:
                self.move(session, row, "TERMINATED", f"could not reach the peer: {error}")

    # Records of both sides -------------------------------------------------------------

    def get(self, transfer_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            return transfer_out(fetch(session, TransferProcess, transfer_id, f"no transfer {transfer_id}"))

    def list_all(self) -> list[dict[str, Any]]:
        """The newest 500 transfers."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(TransferProcess).order_by(col(TransferProcess.created_at).desc()).limit(500)
            ).all()
        return [transfer_out(r) for r in rows]

    def provenance_for(self, row: TransferProcess) -> dict[str, Any]:
        return row.provenance if row.role == "consumer" else self._provenance(row.sha256)


def _theirs(session: Session, pid: str, sender: str, *, lock: bool = False) -> TransferProcess:
    """This node's transfer ``pid``, if ``sender`` is its other party (else not found, alike)."""
    return fetch(
        session,
        TransferProcess,
        pid,
        f"no transfer {pid} here",
        where=lambda t: t.counterparty.lower() == sender.lower(),
        lock=lock,
    )


def _reason(body: dict[str, Any]) -> str:
    reasons = body.get("reason") or []
    words = [
        str(r.get("@value", r) if isinstance(r, dict) else r)
        for r in (reasons if isinstance(reasons, list) else [reasons])
    ]
    code = body.get("code")
    text = "; ".join(words)[:1000] or "no reason given"
    return f"{str(code)[:80]}: {text}" if code else text


def transfer_out(row: TransferProcess) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "peer_pid": row.peer_pid,
        "counterparty": row.counterparty,
        "agreement_id": row.agreement_id,
        "state": row.state,
        "format": row.format,
        "sha256": row.sha256,
        "size": row.size,
        "reason": row.reason,
        "history": row.history or [],
        "created_at": as_utc(row.created_at).isoformat(),
        "updated_at": as_utc(row.updated_at).isoformat(),
    }
