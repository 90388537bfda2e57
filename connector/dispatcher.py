"""Delivers queued protocol messages to peers, with retries and backoff.

A message is queued (:func:`queue_message`) in the same transaction as the state change that
calls for it, so a crash never loses one and never sends one for a change that was rolled
back. The dispatcher sends each message with a fresh token of this node's (through the one
peer client), retries transport failures with
exponential backoff (up to ``max_attempts``), and gives up on a peer's explicit refusal. A
peer's 404 is retried a few times first: a connector may register the callback it is
answered on only once it has seen its own message succeed (the Eclipse DSP TCK does).
``send_delay`` holds every message that long before its first attempt, for such peers.

It is also the last check before a message leaves: a message goes only to the origin of
its recipient's verified endpoint (a peer's, a registered participant's, or this node's own
for its notifications); any other URL is given up with that reason, whatever queued it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.dsp.client import PeerClients
from connector.models import OutboundMessage
from kernel.addresses import foreign_origin
from kernel.db import transaction, utcnow
from kernel.errors import AgoraError, NotFound, ServiceUnavailable
from kernel.outbound import OutboundClient
from kernel.worker import BackgroundWorker

log = logging.getLogger("agora.dispatcher")
LANES = 8  # negotiations whose messages are delivered at the same time
NOT_FOUND_ATTEMPTS = 4  # a peer's 404 is tried again this often (0.5 + 1 + 2 s apart)


def queue_message(
    session: Session, *, recipient: str, url: str, body: dict[str, Any], negotiation_id: str | None = None
) -> OutboundMessage:
    message = OutboundMessage(negotiation_id=negotiation_id, recipient=recipient, url=url, body=body)
    session.add(message)
    return message


class Dispatcher(BackgroundWorker):
    name = "agora-dispatcher"

    def __init__(
        self,
        engine: Engine,
        *,
        peers: PeerClients,
        outbound: OutboundClient,
        verified_endpoint: Callable[[str], str | None],
        on_given_up: Callable[[OutboundMessage, str], None] | None = None,
        on_delivered: Callable[[OutboundMessage, dict[str, Any]], None] | None = None,
        housekeeping: Callable[[], object] | None = None,
        max_attempts: int = 8,
        base_delay: float = 0.5,
        send_delay: float = 0.0,
    ) -> None:
        self.engine = engine
        self.peers = peers
        self.outbound = outbound
        self._verified_endpoint = verified_endpoint
        self._on_given_up = on_given_up
        self._on_delivered = on_delivered
        self._housekeeping = housekeeping
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.send_delay = timedelta(seconds=send_delay)
        self._pool = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="agora-dispatch")
        super().__init__(base_delay)

    def tick(self) -> None:
        self.deliver_due()
        if self._housekeeping is not None:
            self._housekeeping()

    def deliver_due(self) -> int:
        """Send every message whose time has come; returns how many were delivered."""
        with Session(self.engine) as session:
            due = list(
                session.exec(
                    select(OutboundMessage)
                    .where(
                        OutboundMessage.status == "PENDING",
                        col(OutboundMessage.next_attempt_at) <= utcnow(),
                        col(OutboundMessage.created_at) <= utcnow() - self.send_delay,
                    )
                    .order_by(col(OutboundMessage.id))
                    .limit(100)
                ).all()
            )
        # one negotiation's messages go in order; different negotiations' go side by side
        lanes: dict[str, list[OutboundMessage]] = {}
        for message in due:
            lanes.setdefault(message.negotiation_id or f"message-{message.id}", []).append(message)
        if len(lanes) <= 1:
            return sum(self._deliver_lane(lane) for lane in lanes.values())
        return sum(self._pool.map(self._deliver_lane, lanes.values()))

    def _deliver_lane(self, lane: list[OutboundMessage]) -> int:
        delivered = 0
        for message in lane:
            if not self._deliver(message):
                break  # keep the rest of this negotiation's messages behind the one that failed
            delivered += 1
        return delivered

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, message: OutboundMessage) -> bool:
        endpoint = self._verified_endpoint(message.recipient)
        refusal = (
            foreign_origin(message.url, endpoint, "the message's URL", f"{message.recipient}'s verified")
            if endpoint
            else f"{message.recipient} has no verified endpoint at this node"
        )
        if refusal is not None:
            self._give_up(message, refusal)
            return False
        try:
            reply, _ = self.peers.to(message.recipient).post_url(message.url, message.body)
        except ServiceUnavailable as exc:
            self._retry(message, exc.detail)
            return False
        except NotFound as exc:
            if message.attempts + 1 < NOT_FOUND_ATTEMPTS:
                self._retry(message, exc.detail)
            else:
                self._give_up(message, exc.detail)
            return False
        except AgoraError as exc:
            self._give_up(message, exc.detail)
            return False
        with transaction(self.engine) as session:
            row = session.get(OutboundMessage, message.id)
            if row is not None:
                row.status, row.attempts, row.last_error = "SENT", row.attempts + 1, ""
        if self._on_delivered is not None:
            self._on_delivered(message, reply)
        return True

    def _retry(self, message: OutboundMessage, error: str) -> None:
        with transaction(self.engine) as session:
            row = session.get(OutboundMessage, message.id)
            if row is None:
                return
            row.attempts += 1
            row.last_error = error[:2000]
            if row.attempts >= self.max_attempts:
                row.status = "FAILED"
            else:
                row.next_attempt_at = utcnow() + timedelta(seconds=self.base_delay * 2 ** (row.attempts - 1))
        if row.status == "FAILED" and self._on_given_up is not None:
            self._on_given_up(message, f"peer unreachable after {row.attempts} attempts: {error}")

    def _give_up(self, message: OutboundMessage, error: str) -> None:
        with transaction(self.engine) as session:
            row = session.get(OutboundMessage, message.id)
            if row is not None:
                row.status, row.attempts, row.last_error = "FAILED", row.attempts + 1, error[:2000]
        if self._on_given_up is not None:
            self._on_given_up(message, error)
