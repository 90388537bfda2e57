"""The receiving side of the peer protocol: who may talk to this node, and replay defence.

:class:`ProtocolGate` opens an incoming envelope (see :mod:`connector.envelope`), resolves
the sender through the peer list or, when a chain is configured, the on-chain participant
registry (a registered sender becomes a known peer), and records the nonce so the same
message is never accepted twice. Replies are sealed for the sender.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from connector.envelope import MAX_SKEW_SECONDS, Opened, ReplayedMessage, UnknownSender, open_envelope, seal
from connector.models import Participant, SeenNonce
from kernel.db import transaction, utcnow

RegistryLookup = Callable[
    [str], tuple[str, str] | None
]  # address -> (name, endpoint) on chain, if registered


class ProtocolGate:
    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        private_key: Callable[[], bytes],
        registry_lookup: RegistryLookup | None = None,
    ) -> None:
        self.engine = engine
        self.address = address
        self._private_key = private_key
        self._registry_lookup = registry_lookup
        self._accepted = 0

    def accept(self, envelope: Any) -> Opened:
        """The verified message, or an :class:`EnvelopeRejected` subclass with the reason."""
        opened = open_envelope(envelope, recipient=self.address)
        name, endpoint = self._require_known(opened.sender)
        self._remember_nonce(opened)
        return replace(opened, sender_name=name, sender_endpoint=endpoint)

    def seal(self, body: dict[str, Any], recipient: str) -> dict[str, Any]:
        return seal(body, private_key=self._private_key(), recipient=recipient)

    def _require_known(self, sender: str) -> tuple[str, str]:
        """The sender's (name, endpoint), from the peer list or the registry; else refused."""
        with Session(self.engine) as session:
            known = session.get(Participant, sender)
            if known is not None:
                return known.name, known.endpoint
        on_chain = self._registry_lookup(sender) if self._registry_lookup else None
        if on_chain is None:
            raise UnknownSender(f"{sender} is neither a known peer nor a participant in the registry")
        name, endpoint = on_chain
        with transaction(self.engine) as session:
            if session.get(Participant, sender) is None:
                session.add(Participant(address=sender, name=name, endpoint=endpoint, is_self=False))
        return name, endpoint

    def _remember_nonce(self, opened: Opened) -> None:
        try:
            with transaction(self.engine) as session:
                session.add(SeenNonce(sender=opened.sender, nonce=opened.nonce))
        except IntegrityError:
            raise ReplayedMessage(
                f"message {opened.nonce} from {opened.sender} was already received"
            ) from None
        self._accepted += 1
        if self._accepted % 1000 == 0:
            self.purge_nonces()

    def purge_nonces(self) -> int:
        """Forget nonces older than twice the clock-skew window (their messages are stale anyway)."""
        cutoff = utcnow() - timedelta(seconds=2 * MAX_SKEW_SECONDS)
        with transaction(self.engine) as session:
            result = session.execute(delete(SeenNonce).where(col(SeenNonce.seen_at) < cutoff))
            return int(getattr(result, "rowcount", 0) or 0)
