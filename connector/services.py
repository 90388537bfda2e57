"""Participant records: this organisation, its peers, and registered participants it answers.

A **peer** (``trusted``) is one the operator added by its URL: an Agora node's DID is the
``did:web`` of that URL, and its document names its organisation, its on-chain address and
its key; another DSP connector is added with its DID (``--did``) and, optionally, a name.
Either way the peer's DSP base comes from its ``/.well-known/dspace-version``, and its keys
from its DID document. Participants known only from the on-chain registry (see
:mod:`connector.dsp.gate`) are kept untrusted: never crawled, never listed, marked on every
page that names them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from connector.dsp.client import discover_dsp_base
from connector.dsp.id_tokens import TokenRejected
from connector.dsp.identity import DidDocument, did_for_url
from connector.models import Participant
from connector.schemas import ParticipantOut
from kernel import audit
from kernel.db import as_utc, transaction, utcnow
from kernel.errors import FieldError, InvalidInput
from kernel.outbound import OutboundClient, OutboundRefused


class ParticipantService:
    def __init__(
        self, engine: Engine, outbound: OutboundClient, resolve: Callable[[str], DidDocument]
    ) -> None:
        self.engine = engine
        self.outbound = outbound
        self._resolve = resolve
        # set by the node: the crawler is woken, so a new peer's catalog shows without a wait
        self.on_peer_added: Callable[[Participant], object] | None = None

    def ensure_self(
        self,
        *,
        address: str,
        name: str,
        endpoint: str,
        did: str | None = None,
        dsp_url: str = "",
        keys: dict[str, Any] | None = None,
    ) -> ParticipantOut:
        """Record (or update) this node's own participant row; audited when it changes."""
        with transaction(self.engine) as session:
            stale = session.exec(
                select(Participant).where(Participant.did == did, Participant.address != address)
            ).first()
            if did and stale is not None:
                stale.did = None  # a former identity of this node's keeps its records, not the DID
                session.flush()
            row = session.get(Participant, address)
            if row is None:
                row = Participant(address=address, name=name, endpoint=endpoint, is_self=True)
                session.add(row)
                audit.record(
                    session,
                    actor="node",
                    action="participant.create",
                    subject_type="participant",
                    subject_id=address,
                    details={"name": name, "endpoint": endpoint},
                )
            elif (row.name, row.endpoint, row.is_self) != (name, endpoint, True):
                audit.record(
                    session,
                    actor="node",
                    action="participant.update",
                    subject_type="participant",
                    subject_id=address,
                    details={"name": [row.name, name], "endpoint": [row.endpoint, endpoint]},
                )
                row.name, row.endpoint, row.is_self, row.updated_at = name, endpoint, True, utcnow()
            row.did, row.dsp_url, row.kind = did or row.did, dsp_url or row.dsp_url, "agora"
            row.keys = keys if keys is not None else row.keys
            others = session.exec(
                select(Participant).where(col(Participant.is_self), Participant.address != address)
            )
            for other in others:
                other.is_self = False
            session.flush()
            return _out(row, {})

    def add_peer(
        self, url: str, actor: str, *, did: str | None = None, name: str | None = None
    ) -> ParticipantOut:
        """Add a peer by its URL: an Agora node's DID document (at the did:web of ``url``), or
        another connector's (``did``); its DSP base from its version metadata. A participant
        this node knew only from the registry becomes a peer."""
        url = url.rstrip("/")
        try:
            document = self._resolve(did or did_for_url(url))
            dsp_url = discover_dsp_base(url, self.outbound)
        except OutboundRefused as exc:
            raise InvalidInput(
                exc.detail, errors=[FieldError("url", "refused by the outbound rules")]
            ) from None
        except TokenRejected as exc:
            raise InvalidInput(exc.detail, errors=[FieldError("did", "no usable DID document")]) from None
        kind = "agora" if document.address and document.agora else "dsp"
        if kind == "agora":
            assert document.agora is not None
            endpoint = str(document.agora.get("serviceEndpoint") or "").rstrip("/")
            if endpoint != url:
                raise InvalidInput(
                    f"{url} says its endpoint is {endpoint}; add the peer by that URL",
                    errors=[FieldError("url", "differs from the endpoint the peer states")],
                )
            name = str(document.agora.get("name") or document.participant)
        else:
            endpoint, name = url, name or document.did
        address = document.participant
        with transaction(self.engine) as session:
            row = session.get(Participant, address)
            if row is not None and row.is_self:
                raise InvalidInput("that is this node itself", errors=[FieldError("url", "this node")])
            if row is not None and row.did and row.did != document.did and (row.trusted or row.is_self):
                raise InvalidInput(
                    f"{document.did} names the address of peer {row.name} ({address}), whose DID is "
                    f"{row.did}",
                    errors=[FieldError("did", "another peer's address")],
                )
            other = session.exec(
                select(Participant).where(Participant.did == document.did, Participant.address != address)
            ).first()
            if other is not None:
                raise InvalidInput(
                    f"{document.did} is already the DID of participant {other.address}",
                    errors=[FieldError("did", "taken")],
                )
            name = name[:200]
            action = "participant.add" if row is None or not row.trusted else "participant.update"
            if row is None:
                row = Participant(address=address, name=name, endpoint=endpoint, trusted=True)
                session.add(row)
            else:
                row.name, row.endpoint, row.trusted, row.updated_at = name, endpoint, True, utcnow()
            row.did, row.kind, row.dsp_url, row.keys = document.did, kind, dsp_url, document.keys
            audit.record(
                session,
                actor=actor,
                action=action,
                subject_type="participant",
                subject_id=address,
                details={"name": name, "endpoint": endpoint, "did": document.did, "kind": kind},
            )
            session.flush()
            added = _out(row, labels(session.exec(select(Participant)).all()))
        peer = self.get(address)
        if self.on_peer_added is not None and peer is not None:
            self.on_peer_added(peer)
        return added

    def ensure_test_peer(self, *, address: str, participant: str, callback: str) -> None:
        """The conformance suite's connector as a peer (see :class:`connector.dsp.gate.TestPeer`)."""
        callback = callback.rstrip("/")
        with transaction(self.engine) as session:
            row = session.get(Participant, address)
            if row is None:
                row = Participant(address=address, name=participant, endpoint=callback, trusted=True)
                session.add(row)
                audit.record(
                    session,
                    actor="node",
                    action="participant.add",
                    subject_type="participant",
                    subject_id=address,
                    details={"name": participant, "endpoint": callback, "kind": "dsp", "test": True},
                )
            row.name, row.endpoint, row.trusted, row.did = participant, callback, True, participant
            row.kind, row.dsp_url, row.keys, row.updated_at = "dsp", callback, {}, utcnow()

    def peers(self) -> list[Participant]:
        """The peers the operator added (crawled, listed, negotiated with)."""
        with Session(self.engine) as session:
            return list(
                session.exec(
                    select(Participant).where(col(Participant.is_self).is_(False), col(Participant.trusted))
                ).all()
            )

    def get(self, address: str) -> Participant | None:
        with Session(self.engine) as session:
            return session.get(Participant, address)

    def list(self) -> list[ParticipantOut]:
        """Every participant this node knows: itself, its peers, registered participants."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Participant).order_by(
                    col(Participant.is_self).desc(), col(Participant.trusted).desc(), col(Participant.name)
                )
            ).all()
        names = labels(rows)
        return [_out(r, names) for r in rows]

    def labels(self) -> dict[str, str]:
        """``address -> label`` for pages that name participants (see :func:`labels`)."""
        with Session(self.engine) as session:
            return labels(session.exec(select(Participant)).all())


def short_address(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def labels(rows: Iterable[Participant]) -> dict[str, str]:
    """How a participant is named wherever a person reads it: its name, with its short
    address when another participant (or this node) goes by the same name, and marked
    when it is not a peer, so two organisations never look alike."""
    rows = list(rows)
    shared = Counter(r.name.strip().casefold() for r in rows)
    out = {}
    for r in rows:
        notes = []
        if shared[r.name.strip().casefold()] > 1 or not (r.trusted or r.is_self):
            notes.append(short_address(r.address))
        if not (r.trusted or r.is_self):
            notes.append("not a peer")
        out[r.address] = f"{r.name} ({', '.join(notes)})" if notes else r.name
    return out


def _out(row: Participant, names: dict[str, str]) -> ParticipantOut:
    return ParticipantOut(
        address=row.address,
        name=row.name,
        label=names.get(row.address, row.name),
        endpoint=row.endpoint,
        is_self=row.is_self,
        trusted=row.trusted or row.is_self,
        did=row.did,
        kind=row.kind,
        dsp_url=row.dsp_url,
        created_at=as_utc(row.created_at),
    )
