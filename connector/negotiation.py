"""Contract negotiation between organisations, with the Dataspace Protocol's states.

Both sides keep their own record (``role`` consumer or provider) and move it only along
the legal transitions below; a message that does not fit the current state is refused and
recorded with the reason. Every transition is stored with its message, its signer and its
reason, so "why is it stuck" and "why was it terminated" have answers.

::

    consumer                                   provider
    REQUESTED ── ContractRequestMessage ─────▶ REQUESTED ─ policy denies ─▶ TERMINATED
                                               │ approval: manual → waits for a person
    OFFERED   ◀──────── ContractOfferMessage ─ OFFERED (counter-offer)
    ACCEPTED  ── event ACCEPTED ─────────────▶ ACCEPTED
    AGREED    ◀──── ContractAgreementMessage ─ AGREED      (terms signed by the provider, EIP-712)
    VERIFIED  ── AgreementVerificationMessage ▶ VERIFIED   (…and by the consumer)
    FINALIZED ◀──────────── event FINALIZED ── FINALIZED  (both signatures recorded on chain)

Outgoing messages go through the dispatcher's outbox, so a restart of either node resumes
where it stood. A negotiation that reaches no final state by its deadline is terminated
with that reason.

A consumer may ask for one version of an offering: the one an alias names
(``agora:alias``, e.g. ``champion``) or a number (``agora:version``), beside
``agora:purpose``. The provider resolves it when it agrees; the signed terms record the
``version`` (and the ``alias`` asked for), so moving the alias later changes no agreement.
An alias the offering does not have terminates the negotiation with that reason.

Messages go only to the origin of the counterparty's verified identity (its endpoint as a
peer, or its registry record): a ``callbackAddress`` elsewhere is refused with the reason —
a new request is recorded TERMINATED, a later message is recorded as refused.
"""

from __future__ import annotations

import logging
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, not_
from sqlmodel import Session, col, select

from connector.dispatcher import queue_message
from connector.dsp import DSP_CONTEXT
from connector.models import Agreement, Negotiation, NegotiationEvent, OutboundMessage, Participant
from contracts.eip712 import agreement_typed_data, recover_agreement_signer, sign_agreement
from contracts.registry import Registry
from kernel.addresses import foreign_origin
from kernel.canonical import canonical_hash
from kernel.db import as_utc, fetch, transaction, utcnow
from kernel.errors import AgoraError, Conflict, FieldError, Forbidden, InvalidInput, NotFound

log = logging.getLogger("agora.negotiation")
ALIAS, VERSION = "agora:alias", "agora:version"  # the version a consumer asks for (see above)
_ALIAS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

FINAL = ("FINALIZED", "TERMINATED")
# (role, state now, what happens) -> state next
TRANSITIONS: dict[tuple[str, str | None, str], str] = {
    ("provider", None, "request"): "REQUESTED",
    ("provider", "REQUESTED", "offer"): "OFFERED",
    ("provider", "REQUESTED", "agree"): "AGREED",
    ("provider", "OFFERED", "accepted"): "ACCEPTED",
    ("provider", "ACCEPTED", "agree"): "AGREED",
    ("provider", "AGREED", "verified"): "VERIFIED",
    ("provider", "VERIFIED", "finalize"): "FINALIZED",
    ("consumer", None, "request"): "REQUESTED",
    ("consumer", "REQUESTED", "offered"): "OFFERED",
    ("consumer", "OFFERED", "accept"): "ACCEPTED",
    ("consumer", "REQUESTED", "agreed"): "AGREED",
    ("consumer", "ACCEPTED", "agreed"): "AGREED",
    ("consumer", "AGREED", "verify"): "VERIFIED",
    ("consumer", "VERIFIED", "finalized"): "FINALIZED",
}


class IllegalTransition(Conflict):
    type_slug = "illegal-transition"
    title = "The message does not fit the negotiation's state"


def next_state(role: str, state: str | None, event: str) -> str:
    if event == "terminate":
        if state in FINAL:
            raise IllegalTransition(f"the negotiation is already {state}")
        return "TERMINATED"
    target = TRANSITIONS.get((role, state, event))
    if target is None:
        raise IllegalTransition(f"'{event}' is not allowed for a {role} in state {state}")
    return target


def _pid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


class NegotiationService:
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
    ) -> None:
        self.engine = engine
        self.address = address
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
                **_negotiation_out(row),
                "history": [_event_out(e) for e in events],
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
            return [_negotiation_out(n) for n in session.exec(query).all()]

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

    def _send(self, session: Session, row: Negotiation, path: str, body: dict[str, Any]) -> None:
        queue_message(
            session,
            recipient=row.counterparty,
            url=f"{row.counterparty_endpoint}/dsp{path}",
            body=body,
            negotiation_id=row.id,
        )

    def _pids(self, row: Negotiation) -> dict[str, str]:
        if row.role == "consumer":
            return {"providerPid": row.peer_pid or "", "consumerPid": row.id}
        return {"providerPid": row.id, "consumerPid": row.peer_pid or ""}

    def _dsp(self, row: Negotiation, type_: str, **fields: Any) -> dict[str, Any]:
        pids = {k: v for k, v in self._pids(row).items() if v}
        return {"@context": DSP_CONTEXT, "@type": type_, **pids, **fields}

    def state_message(self, row: Negotiation) -> dict[str, Any]:
        """The DSP ``ContractNegotiation`` object a request is answered with."""
        return self._dsp(row, "ContractNegotiation", state=row.state)

    # Consumer: starting, accepting, terminating -----------------------------------------

    def start(
        self,
        *,
        offering_id: str,
        provider: Participant,
        purpose: str,
        access_mode: str,
        actor: str,
        offer: dict[str, Any] | None = None,
        alias: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """Ask a provider for an agreement on one of its offerings (on the version ``alias``
        names when the provider agrees, or on ``version``; the latest by default)."""
        asked = asked_version({ALIAS: alias, VERSION: version})
        row = Negotiation(
            id=_pid(),
            role="consumer",
            counterparty=provider.address,
            counterparty_endpoint=provider.endpoint,
            state="REQUESTED",
            offering_id=offering_id,
            purpose=purpose,
            access_mode=access_mode,
            offer={**(offer or {}), **asked},
            deadline=utcnow() + self.timeout,
        )
        odrl_offer = {
            "@type": "Offer",
            "@id": f"urn:agora:offer:{offering_id}",
            "target": f"urn:uuid:{offering_id}",
            "permission": [{"action": "use"}],
            **(offer or {}),
        }
        body = {
            "@context": DSP_CONTEXT,
            "@type": "ContractRequestMessage",
            "consumerPid": row.id,
            "offer": odrl_offer,
            "callbackAddress": f"{self.public_url}/dsp",
            "agora:purpose": purpose,
            "agora:accessMode": access_mode,
            **asked,
        }
        with transaction(self.engine) as session:
            _open(session, row, signer=self.address, message=body, reason=f"requested by {actor}")
            queue_message(
                session,
                recipient=provider.address,
                url=f"{provider.endpoint}/dsp/negotiations/request",
                body=body,
                negotiation_id=row.id,
            )
        self._wake()
        return self.get(row.id)

    def accept_offer(self, negotiation_id: str, actor: str) -> dict[str, Any]:
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id, "consumer")
            self._transition(
                session,
                row,
                "accept",
                message_type="ContractNegotiationEventMessage",
                signer=self.address,
                reason=f"counter-offer accepted by {actor}",
            )
            self._send(
                session,
                row,
                f"/negotiations/{row.peer_pid}/events",
                self._dsp(row, "ContractNegotiationEventMessage", eventType="ACCEPTED"),
            )
        self._wake()
        return self.get(negotiation_id)

    def terminate(self, negotiation_id: str, reason: str, actor: str) -> dict[str, Any]:
        """End a negotiation from this side (either role); the peer is told why."""
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id)
            self._terminate(session, row, f"{reason} (by {actor})", signer=self.address)
        self._wake()
        return self.get(negotiation_id)

    def _terminate(
        self, session: Session, row: Negotiation, reason: str, *, signer: str, notify: bool = True
    ) -> None:
        self._transition(
            session,
            row,
            "terminate",
            message_type="ContractNegotiationTerminationMessage",
            signer=signer,
            reason=reason,
        )
        if notify and row.peer_pid:
            self._send(
                session,
                row,
                f"/negotiations/{row.peer_pid}/termination",
                self._dsp(
                    row, "ContractNegotiationTerminationMessage", code="agora:terminated", reason=[reason]
                ),
            )

    def _row(self, session: Session, negotiation_id: str, role: str | None = None) -> Negotiation:
        return fetch(
            session,
            Negotiation,
            negotiation_id,
            f"no {role or ''} negotiation {negotiation_id}".replace("  ", " "),
            where=lambda n: role is None or n.role == role,
            lock=True,
        )

    # Provider: the decision -------------------------------------------------------------

    def on_request(self, sender: str, sender_endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """A consumer's ContractRequestMessage: decide by the offering's policy."""
        consumer_pid = _required(body, "consumerPid")
        target = str((body.get("offer") or {}).get("target", ""))
        offering_id = target.removeprefix("urn:uuid:")
        purpose = str(body.get("agora:purpose") or "")
        mode = str(body.get("agora:accessMode") or "")
        if not offering_id or not purpose or mode not in ("download", "compute", "federate"):
            raise InvalidInput(
                "a request needs offer.target, agora:purpose and agora:accessMode",
                errors=[FieldError("offer.target", "required")],
            )
        asked = asked_version(body)
        callback = body.get("callbackAddress", f"{sender_endpoint}/dsp")
        refusal = foreign_origin(callback, sender_endpoint, "callbackAddress", f"{sender}'s verified")
        reply_to = sender_endpoint if refusal else str(callback).rstrip("/").removesuffix("/dsp")
        row = Negotiation(
            id=_pid(),
            role="provider",
            peer_pid=consumer_pid,
            counterparty=sender,
            counterparty_endpoint=reply_to,
            state="REQUESTED",
            offering_id=offering_id,
            purpose=purpose,
            access_mode=mode,
            # the terms come from the provider's own policy (or its counter-offer), never from the
            # request: a policy the consumer slips into its offer is dropped here
            offer={
                **{
                    k: v
                    for k, v in dict(body.get("offer") or {}).items()
                    if k not in ("agora:policy", ALIAS, VERSION)
                },
                **asked,
            },
            deadline=utcnow() + self.timeout,
        )
        if refusal:
            with transaction(self.engine) as session:
                _open(session, row, signer=sender, message=body)
                self._terminate(session, row, refusal, signer=self.address, notify=False)
            raise InvalidInput(refusal, errors=[FieldError("callbackAddress", "not the sender's origin")])
        try:
            offering = self._offering_terms(offering_id, _asked(row))
        except AgoraError as exc:
            offering, missing = None, exc.detail
        with transaction(self.engine) as session:
            _open(session, row, signer=sender, message=body)
            if offering is None:
                reason = missing if asked else f"no such offering: {missing}"
                self._terminate(session, row, reason, signer=self.address)
            elif mode not in offering["access_modes"]:
                self._terminate(
                    session,
                    row,
                    f"offering {offering_id} does not allow {mode} "
                    f"(its modes: {', '.join(offering['access_modes'])})",
                    signer=self.address,
                )
            else:
                allowed, why, _ = policy_decision(
                    offering["policy"], participant=sender, purpose=purpose, mode=mode
                )
                if not allowed:
                    self._terminate(session, row, f"the policy denies it: {why}", signer=self.address)
                elif offering.get("approval") == "manual":
                    row.reason = "waiting for a person at the provider to approve"
                else:
                    self._agree(session, row, offering, approver="policy (automatic approval)")
        self._wake()
        return self.state_message(row)

    def approve(self, negotiation_id: str, actor: str) -> dict[str, Any]:
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id, "provider")
            self._agree(session, row, self._offering_terms(row.offering_id, _asked(row)), approver=actor)
        self._wake()
        return self.get(negotiation_id)

    def counter_offer(self, negotiation_id: str, policy: dict[str, Any], actor: str) -> dict[str, Any]:
        """Answer a request with changed terms (a policy the provider would accept)."""
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id, "provider")
            offer = {
                "@type": "Offer",
                "@id": f"urn:agora:offer:{row.offering_id}:{secrets.token_hex(4)}",
                "target": f"urn:uuid:{row.offering_id}",
                "permission": [{"action": "use"}],
                "agora:policy": policy,
                **_asked(row),  # the version asked for still is
            }
            self._transition(
                session,
                row,
                "offer",
                message_type="ContractOfferMessage",
                signer=self.address,
                reason=f"counter-offer by {actor}",
            )
            row.offer = offer
            self._send(
                session,
                row,
                f"/negotiations/{row.peer_pid}/offers",
                # an offer answering a request names the consumer's pid and, per DSP, no callback
                self._dsp(row, "ContractOfferMessage", offer=offer),
            )
        self._wake()
        return self.get(negotiation_id)

    def _agree(self, session: Session, row: Negotiation, offering: dict[str, Any], approver: str) -> None:
        """Sign the terms (EIP-712, the registry's domain) and send the agreement."""
        registry = self._registry()
        policy = (row.offer.get("agora:policy") if row.offer else None) or offering["policy"]
        valid_until = valid_until_of(policy)
        agreement_id = "0x" + secrets.token_hex(32)
        terms = {
            "agreement": agreement_id,
            "dataset": f"urn:uuid:{row.offering_id}",
            "offering": row.offering_id,
            "version": offering["version"],
            **({"alias": offering["alias"]} if offering.get("alias") else {}),
            "sha256": offering["sha256"],
            "size": offering["size"],  # the consumer takes no more bytes than this
            "provider": self.address,
            "consumer": row.counterparty,
            "purpose": row.purpose,
            "accessMode": row.access_mode,
            "policy": policy,
            "issued": utcnow().isoformat(),
            "validUntil": valid_until,
            "chain": {"chain_id": registry.chain.chain_id, "registry": registry.address},
        }
        terms_hash = canonical_hash(terms)
        signature = "0x" + sign_agreement(self._private_key(), typed_data_of(terms)).hex()
        self._transition(
            session,
            row,
            "agree",
            message_type="ContractAgreementMessage",
            signer=self.address,
            reason=f"approved by {approver}",
        )
        row.agreement_id = agreement_id
        session.add(
            Agreement(
                id=agreement_id,
                negotiation_id=row.id,
                role="provider",
                provider=self.address,
                consumer=row.counterparty,
                offering_id=row.offering_id,
                terms=terms,
                terms_hash=terms_hash,
                valid_until=valid_until,
                provider_signature=signature,
                chain_id=registry.chain.chain_id,
                registry_address=registry.address,
                max_uses=max_uses_of(policy),
            )
        )
        from marketplace.policy import parse_policy, to_odrl_offer

        odrl = to_odrl_offer(
            parse_policy(policy),
            offer_id=agreement_id,
            target=terms["dataset"],
            assigner=self.address,
            include_target=True,
        )
        agreement = {k: v for k, v in odrl.items() if k not in ("@type", "@id")}
        agreement.update(
            {
                "@id": f"urn:agora:agreement:{agreement_id}",
                "@type": "Agreement",
                "target": terms["dataset"],
                "assigner": self.address,
                "assignee": row.counterparty,
                "timestamp": terms["issued"],
            }
        )
        self._send(
            session,
            row,
            f"/negotiations/{row.peer_pid}/agreement",
            self._dsp(
                row,
                "ContractAgreementMessage",
                agreement=agreement,
                callbackAddress=f"{self.public_url}/dsp",
                **{"agora:terms": terms, "agora:signature": signature},
            ),
        )

    # Incoming messages on either side ------------------------------------------------------

    def on_message(self, sender: str, pid: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Dispatch a message addressed to one of this node's negotiations."""
        handlers: dict[str, Callable[[Session, Negotiation, str, dict[str, Any]], None]] = {
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

    def _on_offer(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        self._transition(
            session,
            row,
            "offered",
            message_type="ContractOfferMessage",
            signer=sender,
            message=body,
            reason="the provider answered with a counter-offer",
        )
        row.peer_pid = str(body.get("providerPid") or row.peer_pid)
        # the version asked for stays what this side asked for, whatever the counter-offer says
        row.offer = {
            **{k: v for k, v in dict(body.get("offer") or {}).items() if k not in (ALIAS, VERSION)},
            **_asked(row),
        }

    def _on_agreement(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        """Check the provider's terms and signature, sign them too, send the verification."""
        terms = body.get("agora:terms")
        signature = str(body.get("agora:signature") or "")
        if not isinstance(terms, dict):
            raise InvalidInput("the agreement carries no agora:terms")
        expected = {
            "offering": row.offering_id,
            "purpose": row.purpose,
            "accessMode": row.access_mode,
            "consumer": self.address,
            "provider": sender,
        }
        wrong = [k for k, v in expected.items() if str(terms.get(k, "")).lower() != str(v).lower()]
        asked = _asked(row)
        if ALIAS in asked and terms.get("alias") != asked[ALIAS]:
            wrong.append("alias")
        if VERSION in asked and terms.get("version") != asked[VERSION]:
            wrong.append("version")
        if row.offer.get("agora:policy") is not None and terms.get("policy") != row.offer["agora:policy"]:
            wrong.append("policy")
        if wrong:
            raise InvalidInput(f"the agreement's terms differ from what was negotiated: {', '.join(wrong)}")
        terms_hash = canonical_hash(terms)
        chain = terms.get("chain") or {}
        try:
            typed = typed_data_of(terms)
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("the agreement's terms lack their chain, parties or id") from None
        check_signature(typed, signature, sender, "the provider")
        row.peer_pid = str(body.get("providerPid") or row.peer_pid)
        self._transition(
            session,
            row,
            "agreed",
            message_type="ContractAgreementMessage",
            signer=sender,
            message=body,
            reason="terms and provider signature checked",
        )
        mine = "0x" + sign_agreement(self._private_key(), typed).hex()
        row.agreement_id = str(terms["agreement"])
        session.add(
            Agreement(
                id=row.agreement_id,
                negotiation_id=row.id,
                role="consumer",
                provider=sender,
                consumer=self.address,
                offering_id=row.offering_id,
                terms=terms,
                terms_hash=terms_hash,
                valid_until=int(terms.get("validUntil", 0)),
                provider_signature=signature,
                consumer_signature=mine,
                chain_id=int(chain.get("chain_id", 0)),
                registry_address=str(chain.get("registry")),
                max_uses=max_uses_of(terms.get("policy")),
            )
        )
        self._transition(
            session,
            row,
            "verify",
            message_type="ContractAgreementVerificationMessage",
            signer=self.address,
            reason="signed by the consumer",
        )
        self._send(
            session,
            row,
            f"/negotiations/{row.peer_pid}/agreement/verification",
            self._dsp(row, "ContractAgreementVerificationMessage", **{"agora:signature": mine}),
        )

    def _on_verification(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
        if agreement is None:
            raise IllegalTransition("no agreement to verify yet")
        signature = str(body.get("agora:signature") or "")
        check_signature(typed_data_of(agreement.terms), signature, agreement.consumer, "the consumer")
        self._transition(
            session,
            row,
            "verified",
            message_type="ContractAgreementVerificationMessage",
            signer=sender,
            message=body,
            reason="consumer signature checked",
        )
        agreement.consumer_signature = signature
        row.reason = "recording the agreement on chain"

    def finalize(self, negotiation_id: str) -> None:
        """Provider: record both signatures on chain (the registry checks them), then FINALIZED.
        When the chain is down the negotiation waits in VERIFIED and is retried."""
        with Session(self.engine) as session:
            row = session.get(Negotiation, negotiation_id)
            agreement = session.get(Agreement, row.agreement_id) if row and row.agreement_id else None
        if row is None or agreement is None or row.role != "provider" or row.state != "VERIFIED":
            return
        try:
            registry = self._registry()
            existing = registry.get_agreement(bytes.fromhex(agreement.id[2:]))
            if existing is None:
                result = registry.record_agreement(
                    bytes.fromhex(agreement.id[2:]),
                    bytes.fromhex(agreement.terms_hash),
                    agreement.provider,
                    agreement.consumer,
                    agreement.valid_until,
                    bytes.fromhex(agreement.provider_signature[2:]),
                    bytes.fromhex(agreement.consumer_signature[2:]),
                )
                tx_hash, block = result.tx_hash, result.block_number
            else:
                tx_hash, block = None, None
        except AgoraError as exc:
            with transaction(self.engine) as session:
                fresh = session.get(Negotiation, negotiation_id)
                if fresh is not None:
                    fresh.reason = f"waiting to record the agreement on chain: {exc.detail}"
            return
        with transaction(self.engine) as session:
            fresh = self._row(session, negotiation_id, "provider")
            if fresh.state != "VERIFIED":
                return
            stored = session.get(Agreement, agreement.id)
            assert stored is not None
            stored.tx_hash, stored.block_number = tx_hash, block
            self._transition(
                session,
                fresh,
                "finalize",
                message_type="ContractNegotiationEventMessage",
                signer=self.address,
                reason=f"recorded on chain in tx {tx_hash}",
            )
            self._send(
                session,
                fresh,
                f"/negotiations/{fresh.peer_pid}/events",
                self._dsp(
                    fresh,
                    "ContractNegotiationEventMessage",
                    eventType="FINALIZED",
                    **{"agora:tx": tx_hash, "agora:block": block},
                ),
            )
        self._wake()

    def _on_event(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        event = body.get("eventType")
        if row.role == "provider" and event == "ACCEPTED":
            self._transition(
                session,
                row,
                "accepted",
                message_type="ContractNegotiationEventMessage",
                signer=sender,
                message=body,
                reason="the consumer accepted the counter-offer",
            )
            self._agree(
                session,
                row,
                self._offering_terms(row.offering_id, _asked(row)),
                approver="the accepted counter-offer",
            )
        elif row.role == "consumer" and event == "FINALIZED":
            self._transition(
                session,
                row,
                "finalized",
                message_type="ContractNegotiationEventMessage",
                signer=sender,
                message=body,
                reason="the agreement is recorded on chain",
            )
            agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
            if agreement is not None:
                agreement.tx_hash = body.get("agora:tx")
                agreement.block_number = body.get("agora:block")
        else:
            raise IllegalTransition(f"event {event!r} does not fit a {row.role} in state {row.state}")

    def _on_termination(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        reasons = body.get("reason") or []
        text = "; ".join(str(r) for r in reasons) if isinstance(reasons, list) else str(reasons)
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


def typed_data_of(terms: dict[str, Any]) -> dict[str, Any]:
    """The EIP-712 typed data both parties sign: everything it covers is in the terms, whose
    canonical hash it carries."""
    chain = terms["chain"]
    return agreement_typed_data(
        chain_id=int(chain["chain_id"]),
        registry=str(chain["registry"]),
        agreement_id=bytes.fromhex(str(terms["agreement"])[2:]),
        terms_hash=bytes.fromhex(canonical_hash(terms)),
        provider=str(terms["provider"]),
        consumer=str(terms["consumer"]),
        valid_until=int(terms.get("validUntil", 0)),
    )


def check_signature(typed: dict[str, Any], signature: str, expected: str, who: str) -> None:
    """:class:`InvalidInput` unless ``signature`` over ``typed`` is ``expected``'s."""
    try:
        signer = recover_agreement_signer(typed, bytes.fromhex(signature.removeprefix("0x")))
    except Exception:  # any malformed signature is just a bad one
        raise InvalidInput(f"the signature of {who} is malformed") from None
    if signer.lower() != expected.lower():
        raise InvalidInput(f"the agreement is signed by {signer}, not by {who} {expected}")


def policy_decision(
    policy: dict[str, Any] | None,
    *,
    participant: str,
    purpose: str,
    mode: str,
    agreed_at: datetime | None = None,
    uses: int = 0,
) -> tuple[bool, str, list[dict[str, Any]]]:
    """Allowed?, why (the failed constraints in words), and the duties that come with it."""
    if not policy:
        return False, "the offering is offered to no other organisation (it has no policy)", []
    from marketplace.policy import RequestContext, compile_policy, parse_policy

    parsed = parse_policy(policy)
    budget: dict[str, float] = {}
    if mode == "federate":
        from marketplace.policy.privacy import privacy_cap

        # a federation's budget is the provider's own cap: its node enforces it round by
        # round (federation.local) and stops contributing before it would be passed
        cap = privacy_cap(parsed)
        if cap is not None:
            budget = {"dp_epsilon": cap[0], "dp_delta": cap[1]}
    context = RequestContext.model_validate(
        {
            "participant": participant,
            "purpose": purpose,
            "mode": mode,
            "agreed_at": agreed_at,
            "uses": uses,
            **budget,
        }
    )
    decision = compile_policy(parsed).evaluate(context)
    failed = [r.explanation for r in decision.reasons if not r.satisfied]
    why = decision.summary + (": " + "; ".join(failed) if failed and not decision.allowed else "")
    return decision.allowed, why, [{"action": d.action, "target": d.target} for d in decision.duties]


def valid_until_of(policy: dict[str, Any] | None) -> int:
    """The agreement's end from the policy: an elapsedTime or dateTime upper bound (0 = no end)."""
    if not policy:
        return 0
    from marketplace.policy import Constraint, Duration, expand, parse_policy

    ends: list[datetime] = []
    now = utcnow()
    for permission in expand(parse_policy(policy)).permissions:
        for c in permission.constraints:
            if not isinstance(c, Constraint) or c.operator not in ("lt", "lteq"):
                continue
            if c.leftOperand == "elapsedTime":
                ends.append(Duration.parse(str(c.rightOperand)).after(now))
            elif c.leftOperand == "dateTime":
                ends.append(datetime.fromisoformat(str(c.rightOperand).replace("Z", "+00:00")))
    return int(min(ends).timestamp()) if ends else 0


def max_uses_of(policy: dict[str, Any] | None) -> int | None:
    """The number of uses the policy allows (a count constraint), or None for no limit."""
    if not policy:
        return None
    from marketplace.policy import Constraint, expand, parse_policy

    limits = []
    for permission in expand(parse_policy(policy)).permissions:
        for c in permission.constraints:
            if isinstance(c, Constraint) and c.leftOperand == "count" and c.operator in ("lt", "lteq"):
                limits.append(int(str(c.rightOperand)) + (1 if c.operator == "lteq" else 0))
    return min(limits) if limits else None


def _open(
    session: Session, row: Negotiation, *, signer: str, message: dict[str, Any], reason: str = ""
) -> None:
    """A new negotiation (either side) and its first event: the request."""
    session.add(row)
    session.flush()
    session.add(
        NegotiationEvent(
            negotiation_id=row.id,
            from_state=None,
            to_state="REQUESTED",
            message_type="ContractRequestMessage",
            signer=signer,
            reason=reason,
            message=message,
        )
    )


def asked_version(message: dict[str, Any]) -> dict[str, Any]:
    """The version a request asks for (``agora:alias`` or ``agora:version``, at most one),
    checked; an empty dict for the latest."""
    alias, version = message.get(ALIAS), message.get(VERSION)
    if alias is not None and (not isinstance(alias, str) or not _ALIAS_NAME.fullmatch(alias)):
        raise InvalidInput(
            f"{ALIAS} must be an alias name (a lower-case letter, then up to 63 of a-z 0-9 _ -)",
            errors=[FieldError(ALIAS, "not an alias name")],
        )
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**31
    ):
        raise InvalidInput(f"{VERSION} must be a version number", errors=[FieldError(VERSION, "not >= 1")])
    if alias is not None and version is not None:
        raise InvalidInput(
            f"ask for {ALIAS} or {VERSION}, not both", errors=[FieldError(ALIAS, "with a version")]
        )
    return {ALIAS: alias} if alias is not None else {VERSION: version} if version is not None else {}


def _asked(row: Negotiation) -> dict[str, Any]:
    """The version the negotiation asked for (kept with its offer): ``agora:alias`` or
    ``agora:version``, or nothing (the latest)."""
    return {k: v for k, v in (row.offer or {}).items() if k in (ALIAS, VERSION) and v is not None}


def _required(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the message lacks {key}", errors=[FieldError(key, "required")])
    return value


def _negotiation_out(row: Negotiation) -> dict[str, Any]:
    return {
        "id": row.id,
        "role": row.role,
        "peer_pid": row.peer_pid,
        "counterparty": row.counterparty,
        "counterparty_endpoint": row.counterparty_endpoint,
        "state": row.state,
        "offering_id": row.offering_id,
        "purpose": row.purpose,
        "access_mode": row.access_mode,
        "asked": _asked(row),
        "agreement_id": row.agreement_id,
        "reason": row.reason,
        "created_at": as_utc(row.created_at).isoformat(),
        "updated_at": as_utc(row.updated_at).isoformat(),
    }


def _event_out(e: NegotiationEvent) -> dict[str, Any]:
    return {
        "at": as_utc(e.at).isoformat(),
        "from": e.from_state,
        "to": e.to_state,
        "message": e.message_type,
        "signer": e.signer,
        "reason": e.reason,
        "accepted": e.accepted,
        "dsp_message": e.message,
    }


def agreement_out(a: Agreement) -> dict[str, Any]:
    return {
        "id": a.id,
        "negotiation_id": a.negotiation_id,
        "role": a.role,
        "provider": a.provider,
        "consumer": a.consumer,
        "offering_id": a.offering_id,
        "terms": a.terms,
        "terms_hash": a.terms_hash,
        "valid_until": a.valid_until,
        "uses": a.uses,
        "max_uses": a.max_uses,
        "chain_id": a.chain_id,
        "registry": a.registry_address,
        "tx_hash": a.tx_hash,
        "block_number": a.block_number,
        "provider_signature": a.provider_signature,
        "consumer_signature": a.consumer_signature,
        "created_at": as_utc(a.created_at).isoformat(),
    }
