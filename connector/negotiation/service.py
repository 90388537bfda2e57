"""The negotiation service: both sides together, the messages peers send, and upkeep.

:class:`NegotiationService` is what the node runs: the provider's and the consumer's
handling (:mod:`~connector.negotiation.provider`, :mod:`~connector.negotiation.consumer`)
on one record store. A peer's message is checked here before any side sees it (the
negotiation is with that peer, a ``callbackAddress`` stays at its origin); one that does
not fit is logged as refused. The upkeep terminates what passed its deadline and retries
recording agreements on chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, not_
from sqlmodel import Session, col, select

from connector.models import Negotiation
from connector.negotiation.consumer import ConsumerSide
from connector.negotiation.provider import ProviderSide
from connector.negotiation.states import FINAL
from kernel.addresses import foreign_origin
from kernel.db import fetch, transaction, utcnow
from kernel.errors import FieldError, Forbidden, InvalidInput, NotFound
from kernel.lifecycle import IllegalTransition

Handler = Callable[[Session, Negotiation, str, dict[str, Any]], None]


class NegotiationService(ProviderSide, ConsumerSide):
    def terminate(self, negotiation_id: str, reason: str, actor: str) -> dict[str, Any]:
        """End a negotiation from this side (either role); the peer is told why."""
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id)
            self._terminate(session, row, f"{reason} (by {actor})", signer=self.address)
        self._wake()
        return self.get(negotiation_id)

    def state_for(self, sender: str, pid: str) -> dict[str, Any]:
        """``GET /negotiations/{pid}``: the ContractNegotiation, for its other party only."""
        with Session(self.engine) as session:
            row = fetch(
                session,
                Negotiation,
                pid,
                f"no negotiation {pid} here",
                where=lambda n: n.counterparty.lower() == sender.lower(),
            )
        return self.state_message(row)

    # Incoming messages on either side ------------------------------------------------------

    def on_message(self, sender: str, pid: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Dispatch a message addressed to one of this node's negotiations."""
        handlers: dict[str, Handler] = {
            "request": self._on_requested,
            "offers": self._on_offer,
            "agreement": self._on_agreement,
            "verification": self._on_verification,
            "events": self._on_event,
            "termination": self._on_termination,
        }
        handler = handlers.get(kind)
        if handler is None:
            raise NotFound(f"no protocol endpoint {kind}")
        try:
            with transaction(self.engine) as session:
                row = fetch(session, Negotiation, pid, f"no negotiation {pid} here", lock=True)
                if row.counterparty.lower() != sender.lower():
                    raise Forbidden(f"negotiation {pid} is not with {sender}")
                if "callbackAddress" in body:
                    refusal = foreign_origin(
                        body["callbackAddress"], row.counterparty_endpoint, "callbackAddress", f"{sender}'s"
                    )
                    if refusal:
                        raise InvalidInput(refusal, errors=[FieldError("callbackAddress", "another origin")])
                handler(session, row, sender, body)
                reply = self.state_message(row)
        except (IllegalTransition, InvalidInput) as exc:
            self._refuse(pid, str(body.get("@type", kind)), sender, exc.detail, body)
            raise
        self._wake()  # a verification is recorded on chain by the dispatcher's upkeep (expire), not here
        return reply

    def _on_event(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        event = body.get("eventType")
        if row.role == "provider" and event == "ACCEPTED":
            self._on_accepted(session, row, sender, body)
        elif row.role == "consumer" and event == "FINALIZED":
            self._on_finalized(session, row, sender, body)
        else:
            raise IllegalTransition(f"event {event!r} does not fit a {row.role} in state {row.state}")

    def _on_termination(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        reasons = body.get("reason") or []
        text = ("; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons))[:500]
        self._terminate(
            session,
            row,
            f"terminated by the {'provider' if row.role == 'consumer' else 'consumer'}: "
            f"{text or 'no reason given'}",
            signer=sender,
            notify=False,
        )

    # Upkeep --------------------------------------------------------------------------------

    def expire(self) -> int:
        """Terminate negotiations past their deadline; retry finalizations waiting on the chain."""
        recording = and_(col(Negotiation.role) == "provider", col(Negotiation.state) == "VERIFIED")
        with Session(self.engine) as session:
            late = session.exec(
                select(Negotiation.id).where(
                    col(Negotiation.state).not_in(FINAL),
                    col(Negotiation.deadline) < utcnow(),
                    not_(recording),
                )
            ).all()
            waiting = session.exec(select(Negotiation.id).where(recording)).all()
        for negotiation_id in late:
            with transaction(self.engine) as session:
                row = self._row(session, negotiation_id)
                if row.state not in FINAL:
                    self._terminate(session, row, f"timed out in state {row.state}", signer=self.address)
        for negotiation_id in waiting:
            self.finalize(negotiation_id)
        if late:
            self._wake()
        return len(late)

    def on_delivered(self, negotiation_id: str | None, reply: dict[str, Any]) -> None:
        """A peer's answer to a message of this side's: the provider answering the consumer's
        request names its pid (``providerPid``), which every later message to it carries."""
        provider_pid = reply.get("providerPid")
        if (
            not negotiation_id
            or reply.get("@type") != "ContractNegotiation"
            or not isinstance(provider_pid, str)
        ):
            return
        with transaction(self.engine) as session:
            row = session.get(Negotiation, negotiation_id, with_for_update=True)
            if row is not None and row.role == "consumer" and not row.peer_pid and provider_pid:
                row.peer_pid = provider_pid[:64]

    def on_given_up(self, negotiation_id: str | None, error: str) -> None:
        """The dispatcher could not deliver a message: terminate with the reason."""
        if negotiation_id is None:
            return
        with transaction(self.engine) as session:
            row = session.get(Negotiation, negotiation_id, with_for_update=True)
            if row is not None and row.state not in FINAL:
                self._terminate(
                    session, row, f"could not reach the peer: {error}", signer=self.address, notify=False
                )
