"""What both sides of a negotiation share: showing its record, moving it, logging, sending.

Every change of state goes through :meth:`NegotiationCore._transition`, which asks
:func:`~connector.negotiation.states.next_state` whether the event fits and writes the
``NegotiationEvent`` with its message, signer and reason; a message that does not fit is
logged by :meth:`NegotiationCore._refuse` without a move. Outgoing messages are queued in
the dispatcher's outbox in the same transaction, so they leave only if the move is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.dispatcher import queue_message
from connector.dsp import DSP_CONTEXT
from connector.dsp.jsonld import for_plain_peer
from connector.models import Agreement, Negotiation, NegotiationEvent, OutboundMessage, Participant
from connector.negotiation import messages
from connector.negotiation.records import agreement_out, event_out, negotiation_out
from connector.negotiation.states import next_state
from contracts.registry import Registry
from kernel.db import fetch, transaction, utcnow


def new_pid() -> str:
    """A fresh process id for this side's record of a negotiation."""
    return f"urn:uuid:{uuid.uuid4()}"


class NegotiationCore:
    """The node's identity, its collaborators and the moves every handler makes."""

    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        public_url: str,
        private_key: Callable[[], bytes],
        registry: Callable[[], Registry],
        offering_terms: Callable[[str, dict[str, Any]], dict[str, Any]],
        wake_dispatcher: Callable[[], None] = lambda: None,
        timeout_seconds: float = 600.0,
        did: str = "",
        participant: Callable[[str], Participant | None] = lambda _address: None,
        catalog_offer: Callable[[str, str], dict[str, Any] | None] = lambda _provider, _offering: None,
        options: Callable[[str, str], dict[str, str]] = lambda _role, _offering: {},
    ) -> None:
        self.engine = engine
        self.address = address
        self.did = did
        self._participant = participant
        self._catalog_offer = catalog_offer
        self._options = options
        self.public_url = public_url.rstrip("/")
        self._private_key = private_key
        self._registry = registry
        self._offering_terms = offering_terms
        self._wake = wake_dispatcher
        self.timeout = timedelta(seconds=timeout_seconds)

    # Records ---------------------------------------------------------------------------

    def get(self, negotiation_id: str) -> dict[str, Any]:
        with Session(self.engine) as session:
            row = fetch(session, Negotiation, negotiation_id, f"no negotiation {negotiation_id}")
            events = session.exec(
                select(NegotiationEvent)
                .where(NegotiationEvent.negotiation_id == negotiation_id)
                .order_by(col(NegotiationEvent.id))
            ).all()
            agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
            pending = session.exec(
                select(OutboundMessage).where(
                    OutboundMessage.negotiation_id == negotiation_id, OutboundMessage.status != "SENT"
                )
            ).all()
            return {
                **negotiation_out(row),
                "history": [event_out(e) for e in events],
                "agreement": agreement_out(agreement) if agreement else None,
                "outbox": [
                    {"url": m.url, "status": m.status, "attempts": m.attempts, "last_error": m.last_error}
                    for m in pending
                ],
            }

    def list_all(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            query = select(Negotiation).order_by(col(Negotiation.created_at).desc()).limit(min(limit, 500))
            if state:
                query = query.where(Negotiation.state == state)
            return [negotiation_out(n) for n in session.exec(query).all()]

    # Moves ---------------------------------------------------------------------------------

    @property
    def callback(self) -> str:
        """Where peers send this node's negotiation messages."""
        return f"{self.public_url}/dsp"

    def state_message(self, row: Negotiation) -> dict[str, Any]:
        """The DSP ``ContractNegotiation`` object a request is answered with."""
        return messages.state_message(row)

    def _open(
        self, session: Session, row: Negotiation, *, signer: str, message: dict[str, Any], reason: str = ""
    ) -> None:
        """A new negotiation (either side) and its first event: the request."""
        session.add(row)
        session.flush()
        session.add(
            NegotiationEvent(
                negotiation_id=row.id,
                from_state=None,
                to_state=next_state(row.role, None, "request"),
                message_type="ContractRequestMessage",
                signer=signer,
                reason=reason,
                message=message,
            )
        )

    def _transition(
        self,
        session: Session,
        row: Negotiation,
        event: str,
        *,
        message_type: str,
        signer: str,
        reason: str = "",
        message: dict[str, Any] | None = None,
    ) -> None:
        target = next_state(row.role, row.state, event)
        session.add(
            NegotiationEvent(
                negotiation_id=row.id,
                from_state=row.state,
                to_state=target,
                message_type=message_type,
                signer=signer,
                reason=reason,
                message=message or {},
            )
        )
        row.state, row.updated_at = target, utcnow()
        if reason:
            row.reason = reason

    def _refuse(
        self, negotiation_id: str, message_type: str, signer: str, reason: str, message: dict[str, Any]
    ) -> None:
        """Record a message refused in the current state (the negotiation does not move)."""
        with transaction(self.engine) as session:
            row = session.get(Negotiation, negotiation_id)
            if row is not None:
                session.add(
                    NegotiationEvent(
                        negotiation_id=row.id,
                        from_state=row.state,
                        to_state=row.state,
                        message_type=message_type,
                        signer=signer,
                        reason=reason,
                        accepted=False,
                        message=message,
                    )
                )

    def choice(self, row: Negotiation, key: str, default: str) -> str:
        """What this side does at a point DSP leaves to it (``row.options``, set per offering
        and per request when the negotiation began), or ``default``."""
        return str((row.options or {}).get(key) or default)

    def options_for(self, role: str, offering_id: str, given: dict[str, str] | None = None) -> dict[str, str]:
        """The options a new negotiation starts with: the node's for the offering, then the request's."""
        return {**self._options(role, offering_id), **(given or {})}

    def _peer(self, address: str, session: Session | None) -> Participant | None:
        """The participant ``address``, read in ``session`` when one is open: a second
        connection taken while this one holds SQLite's write lock could wait on a pool the
        writers queued behind that lock have emptied."""
        return session.get(Participant, address) if session is not None else self._participant(address)

    def plain(self, address: str, session: Session | None = None) -> bool:
        """Whether ``address`` is a plain DSP connector (not an Agora node): it gets messages
        without Agora's extension, in the DSP context alone."""
        peer = self._peer(address, session)
        return peer is not None and peer.kind != "agora"

    def parties(self, row: Negotiation, session: Session | None = None) -> tuple[str, str]:
        """(provider, consumer) as the peer names them: DIDs for a plain connector."""
        peer = self._peer(row.counterparty, session)
        them = (
            (peer.did or row.counterparty) if peer is not None and peer.kind != "agora" else row.counterparty
        )
        me = self.did if peer is not None and peer.kind != "agora" else self.address
        return (me, them) if row.role == "provider" else (them, me)

    def _send(self, session: Session, row: Negotiation, path: str, body: dict[str, Any]) -> None:
        """Queue ``body`` for the peer at its DSP base (``counterparty_endpoint``: the provider's
        advertised base, or the consumer's ``callbackAddress`` as given)."""
        plain = self.plain(row.counterparty, session)
        message = for_plain_peer(body) if plain else {**body, "@context": self.context}
        queue_message(
            session,
            recipient=row.counterparty,
            url=f"{row.counterparty_endpoint.rstrip('/')}{path}",
            body=message,
            negotiation_id=row.id,
        )

    @property
    def context(self) -> list[str]:
        """The ``@context`` of messages to Agora nodes: the DSP context, then this node's own
        (which declares the ``agora`` namespace of the extension's terms)."""
        from marketplace.catalog import CONTEXT_PATH

        return [*DSP_CONTEXT, self.public_url + CONTEXT_PATH]

    def _manage(
        self, negotiation_id: str, role: str | None, move: Callable[[Session, Negotiation], None]
    ) -> dict[str, Any]:
        """A move a person (or a script) makes on this side's negotiation: applied to the locked
        row in one transaction, its messages delivered, the record returned."""
        with transaction(self.engine) as session:
            move(session, self._row(session, negotiation_id, role))
        self._wake()
        return self.get(negotiation_id)

    def _row(self, session: Session, negotiation_id: str, role: str | None = None) -> Negotiation:
        return fetch(
            session,
            Negotiation,
            negotiation_id,
            f"no {role or ''} negotiation {negotiation_id}".replace("  ", " "),
            where=lambda n: role is None or n.role == role,
            lock=True,
        )

    def _terminate(
        self, session: Session, row: Negotiation, reason: str, *, signer: str, notify: bool = True
    ) -> None:
        self._transition(
            session,
            row,
            "terminate",
            message_type=messages.TERMINATION_MESSAGE,
            signer=signer,
            reason=reason,
        )
        if notify and row.peer_pid:
            self._send(
                session,
                row,
                f"/negotiations/{row.peer_pid}/termination",
                messages.termination_message(row, reason),
            )
