"""The receiving side of the peer protocol: who may talk to this node, and replay defence.

:class:`ProtocolGate` opens an incoming envelope (see :mod:`connector.envelope`), resolves
the sender, and records the nonce so the same message is never accepted twice. Replies are
sealed for the sender.

Who may talk to this node is the operator's decision, not the chain's: a sender is accepted
when it is a **peer** (``trusted``: added with ``agora peers add``, the participants API or a
manifest's ``peers:``). Being registered on chain is open to anyone, so a participant known
only from the registry is refused (:class:`NotAPeer`, with how the operator adds peers)
unless the operator opts in with ``AGORA_ACCEPT_REGISTERED_PARTICIPANTS``. Then such a
sender is looked up in the registry on every message (its record is the identity it has),
kept as an untrusted participant row so pages can name it, and may act as a consumer of
this node's offerings: ask for the catalog, negotiate, transfer and submit jobs under its
own agreements, with the policies deciding as for anyone. This node never starts anything
with it: it is not crawled, its offerings are not listed, and it cannot be the provider of
a negotiation this node starts. Its name is its own claim, so it is not passed on to
``participantName`` constraints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from connector.envelope import (
    MAX_SKEW_SECONDS,
    NotAPeer,
    Opened,
    ReplayedMessage,
    UnknownSender,
    open_envelope,
    seal,
)
from connector.models import Participant, SeenNonce
from kernel.db import transaction, utcnow

RegistryLookup = Callable[
    [str], tuple[str, str] | None
]  # address -> (name, endpoint) on chain, if registered
ADD_PEERS = "the operator adds peers with agora peers add"


class ProtocolGate:
    def __init__(
        self,
        engine: Engine,
        *,
        address: str,
        private_key: Callable[[], bytes],
        registry_lookup: RegistryLookup | None = None,
        accept_registered: bool = False,
    ) -> None:
        self.engine = engine
        self.address = address
        self._private_key = private_key
        self._registry_lookup = registry_lookup
        self.accept_registered = accept_registered
        self._accepted = 0

    def accept(self, envelope: Any) -> Opened:
        """The verified message, or an :class:`EnvelopeRejected` subclass with the reason."""
        opened = open_envelope(envelope, recipient=self.address)
        name, endpoint, trusted = self._require_known(opened.sender)
        self._remember_nonce(opened)
        return replace(opened, sender_name=name, sender_endpoint=endpoint, sender_trusted=trusted)

    def seal(self, body: dict[str, Any], recipient: str) -> dict[str, Any]:
        return seal(body, private_key=self._private_key(), recipient=recipient)

    def _require_known(self, sender: str) -> tuple[str, str, bool]:
        """The sender's (name, endpoint, trusted): a peer, or (opted in) a registered
        participant; else refused with the reason."""
        with Session(self.engine) as session:
            known = session.get(Participant, sender)
            if known is not None and (known.trusted or known.is_self):
                return known.name, known.endpoint, True  # a peer, or this node (its notifications)
        if not self.accept_registered:
            raise NotAPeer(f"{sender} is not a peer of this node; {ADD_PEERS}")
        on_chain = self._registry_lookup(sender) if self._registry_lookup else None
        if on_chain is None:
            raise UnknownSender(
                f"{sender} is neither a peer of this node nor a participant in the registry; {ADD_PEERS}"
            )
        name, endpoint = on_chain
        endpoint = endpoint.rstrip("/")
        with transaction(self.engine) as session:
            row = session.get(Participant, sender)
            if row is None:
                session.add(Participant(address=sender, name=name, endpoint=endpoint, trusted=False))
            elif not (row.trusted or row.is_self) and (row.name, row.endpoint) != (name, endpoint):
                row.name, row.endpoint, row.updated_at = name, endpoint, utcnow()
        return name, endpoint, False

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
