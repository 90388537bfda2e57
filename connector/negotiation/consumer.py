"""The consumer's side: asking for an agreement, accepting a counter-offer, co-signing.

The consumer signs only terms that are what it negotiated (offering, purpose, access mode,
the parties, the version it asked for and a counter-offer's policy) and that carry the
provider's valid signature; the version asked for stays its own, whatever a counter-offer
says. Its agreement is final once the provider reports it recorded on chain.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from connector.models import Agreement, Negotiation, Participant
from connector.negotiation import messages
from connector.negotiation.core import NegotiationCore, new_pid
from connector.negotiation.states import REQUESTED
from connector.negotiation.terms import (
    ALIAS,
    VERSION,
    _asked,
    asked_version,
    check_signature,
    max_uses_of,
    plain_terms,
    terms_differences,
    typed_data_of,
)
from contracts.eip712 import sign_agreement
from kernel.canonical import canonical_hash
from kernel.db import transaction, utcnow
from kernel.errors import FieldError, InvalidInput


class ConsumerSide(NegotiationCore):
    # Starting and accepting ------------------------------------------------------------------

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
        options: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Ask a provider for an agreement on one of its offerings (on the version ``alias``
        names when the provider agrees, or on ``version``; the latest by default)."""
        asked = asked_version({ALIAS: alias, VERSION: version})
        plain = provider.kind != "agora"
        if plain and asked:
            raise InvalidInput(
                f"{provider.name} is a DSP connector: versions and aliases are Agora's; ask for its dataset",
                errors=[FieldError("alias" if ALIAS in asked else "version", "not for a DSP connector")],
            )
        base = (provider.dsp_url or f"{provider.endpoint}/dsp").rstrip("/")
        row = Negotiation(
            id=new_pid(),
            role="consumer",
            counterparty=provider.address,
            counterparty_endpoint=base,
            state=REQUESTED,
            offering_id=offering_id,
            purpose=purpose,
            access_mode=access_mode,
            offer={**(offer or {}), **asked},
            deadline=utcnow() + self.timeout,
            options=self.options_for("consumer", offering_id, options),
        )
        body = messages.request_message(
            row,
            offer,
            callback=self.callback,
            asked=asked,
            catalog_offer=(offer if plain and offer else None)
            or self._catalog_offer(provider.address, offering_id),
            plain=plain,
        )
        with transaction(self.engine) as session:
            self._open(session, row, signer=self.address, message=body, reason=f"requested by {actor}")
            self._send(session, row, "/negotiations/request", body)
        self._wake()
        return self.get(row.id)

    def accept_offer(self, negotiation_id: str, actor: str) -> dict[str, Any]:
        return self._manage(
            negotiation_id,
            "consumer",
            lambda s, row: self._accept(s, row, f"counter-offer accepted by {actor}"),
        )

    def _accept(self, session: Session, row: Negotiation, reason: str) -> None:
        self._transition(
            session, row, "accept", message_type=messages.EVENT_MESSAGE, signer=self.address, reason=reason
        )
        self._send(
            session, row, f"/negotiations/{row.peer_pid}/events", messages.event_message(row, "ACCEPTED")
        )

    def request_again(self, negotiation_id: str, actor: str) -> dict[str, Any]:
        """Answer the provider's offer with a request of this side's own (its offer as it stands)."""
        return self._manage(
            negotiation_id, "consumer", lambda s, row: self._request_again(s, row, f"asked again by {actor}")
        )

    def _request_again(self, session: Session, row: Negotiation, reason: str) -> None:
        self._transition(
            session, row, "request", message_type="ContractRequestMessage", signer=self.address, reason=reason
        )
        offer = {k: v for k, v in (row.offer or {}).items() if k not in (ALIAS, VERSION)}
        self._send(
            session,
            row,
            f"/negotiations/{row.peer_pid}/request",
            messages.dsp(row, "ContractRequestMessage", offer=offer),
        )

    def verify(self, negotiation_id: str, actor: str) -> dict[str, Any]:
        """Send the verification of an agreement this side held (its option said to wait)."""
        with transaction(self.engine) as session:
            row = self._row(session, negotiation_id, "consumer")
            agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
            if agreement is None:
                raise InvalidInput(f"negotiation {negotiation_id} has no agreement to verify")
            self._verify(session, row, agreement.consumer_signature or None, f"verified by {actor}")
        self._wake()
        return self.get(negotiation_id)

    def _verify(self, session: Session, row: Negotiation, signature: str | None, reason: str) -> None:
        self._transition(
            session,
            row,
            "verify",
            message_type=messages.VERIFICATION_MESSAGE,
            signer=self.address,
            reason=reason,
        )
        self._send(
            session,
            row,
            f"/negotiations/{row.peer_pid}/agreement/verification",
            messages.verification_message(row, signature),
        )

    def _after_agreement(self, session: Session, row: Negotiation, signature: str | None) -> None:
        """Verify, terminate or wait, as this side chose for the negotiation."""
        action = self.choice(row, "on_agreement", "verify")
        if action == "verify":
            self._verify(session, row, signature, "verified by the consumer")
        elif action == "terminate":
            self._terminate(session, row, "the consumer declines the agreement", signer=self.address)
        else:
            row.reason = "waiting for a person at the consumer to verify the agreement"

    # The provider's answers ------------------------------------------------------------------

    def _on_offer(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        self._transition(
            session,
            row,
            "offered",
            message_type=messages.OFFER_MESSAGE,
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
        action = self.choice(row, "on_offer", "wait")
        if action == "accept":
            self._accept(session, row, "accepted automatically (this request's setting)")
        elif action == "request":
            self._request_again(session, row, "asked again (this request's setting)")
        elif action == "terminate":
            self._terminate(session, row, "the consumer declines the offer", signer=self.address)

    def _on_agreement(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        """Check the provider's terms and signature, sign them too, send the verification."""
        if self.plain(sender, session):
            self._on_plain_agreement(session, row, sender, body)
            return
        terms = body.get("agora:terms")
        signature = str(body.get("agora:signature") or "")
        if not isinstance(terms, dict):
            raise InvalidInput("the agreement carries no agora:terms")
        wrong = terms_differences(row, terms, consumer=self.address, provider=sender)
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
            message_type=messages.AGREEMENT_MESSAGE,
            signer=sender,
            message=body,
            reason="terms and provider signature checked",
        )
        mine = "0x" + sign_agreement(self._private_key(), typed).hex()
        row.agreement_id = _unused_agreement_id(session, str(terms["agreement"]))
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
        self._after_agreement(session, row, mine)

    def _on_plain_agreement(
        self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]
    ) -> None:
        """A plain DSP provider's agreement: valid under DSP (no co-signature, no chain record)
        when it is on the dataset asked for and names this node as the assignee."""
        agreement = body.get("agreement")
        if not isinstance(agreement, dict) or not isinstance(agreement.get("@id"), str):
            raise InvalidInput("the ContractAgreementMessage carries no agreement with an @id")
        target = agreement.get("target")
        target = target.get("@id") if isinstance(target, dict) else target
        if str(target or "").removeprefix("urn:uuid:") != row.offering_id:
            raise InvalidInput(f"the agreement is on {str(target)[:200]}, not on {row.offering_id}")
        assignee = str(agreement.get("assignee") or "")
        if assignee and assignee not in (self.did, self.address):
            raise InvalidInput(f"the agreement is for {assignee[:200]}, not for this node ({self.did})")
        peer_id = str(agreement["@id"])[:500]
        row.peer_pid = str(body.get("providerPid") or row.peer_pid)
        self._transition(
            session,
            row,
            "agreed",
            message_type=messages.AGREEMENT_MESSAGE,
            signer=sender,
            message=body,
            reason="agreement checked (a DSP connector: valid under DSP, no chain record)",
        )
        terms = plain_terms(row, agreement, provider=sender, consumer=self.address)
        row.agreement_id = _unused_agreement_id(
            session, "0x" + canonical_hash({"provider": sender, "agreement": peer_id})
        )
        session.add(
            Agreement(
                id=row.agreement_id,
                negotiation_id=row.id,
                role="consumer",
                provider=sender,
                consumer=self.address,
                offering_id=row.offering_id,
                terms=terms,
                terms_hash=canonical_hash(terms),
                provider_signature="",
                chain_id=0,
                registry_address="",
                peer_agreement_id=peer_id,
            )
        )
        self._after_agreement(session, row, None)

    def _on_finalized(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        """The provider finalized the agreement (on chain, between Agora nodes): note where, and finish."""
        plain = self.plain(sender, session)
        self._transition(
            session,
            row,
            "finalized",
            message_type=messages.EVENT_MESSAGE,
            signer=sender,
            message=body,
            reason="the provider finalized the agreement (DSP)"
            if plain
            else "the agreement is recorded on chain",
        )
        agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
        if agreement is not None:
            agreement.finalized = True
            if not plain:
                agreement.tx_hash = body.get("agora:tx")
                agreement.block_number = body.get("agora:block")


def _unused_agreement_id(session: Session, agreement_id: str) -> str:
    """The id a provider chose for a new agreement, refused when an agreement already holds it
    (a provider reusing an id must not reach the primary key as a server error)."""
    if session.get(Agreement, agreement_id) is not None:
        raise InvalidInput(f"agreement {agreement_id[:80]} already exists: a new agreement needs a new id")
    return agreement_id
