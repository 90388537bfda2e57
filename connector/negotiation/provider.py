"""The provider's side: deciding a request, agreeing, and recording the agreement on chain.

A request is decided by the offering's own policy (a policy the consumer slips into its
offer is dropped), for the version it asks for; a manual approval waits for a person.
The provider signs the terms first; once the consumer's signature is checked, both are
recorded on chain (the registry checks them too), and only then is the negotiation
FINALIZED. While the chain is down it waits in VERIFIED and the upkeep retries.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from sqlmodel import Session

from connector.models import Agreement, Negotiation
from connector.negotiation import messages
from connector.negotiation.core import NegotiationCore, new_pid
from connector.negotiation.messages import UNSPECIFIED, offered_dataset, required
from connector.negotiation.states import REQUESTED, IllegalTransition
from connector.negotiation.terms import (
    ALIAS,
    VERSION,
    _asked,
    agreement_terms,
    asked_version,
    check_signature,
    credential_context,
    credential_types,
    max_uses_of,
    policy_decision,
    typed_data_of,
)
from contracts.eip712 import sign_agreement
from kernel.addresses import foreign_origin
from kernel.canonical import canonical_hash
from kernel.db import transaction, utcnow
from kernel.errors import AgoraError, FieldError, InvalidInput

CREDENTIALS = "agora:credentials"  # what this node verified of the requester's credentials
# keys of an offer only the provider sets: a consumer's are dropped, never decided on
PROVIDERS_OWN = ("agora:policy", CREDENTIALS, ALIAS, VERSION)


class ProviderSide(NegotiationCore):
    # The decision -------------------------------------------------------------------------

    def on_request(
        self,
        sender: str,
        sender_endpoint: str,
        body: dict[str, Any],
        credentials: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """A consumer's ContractRequestMessage: decide by the offering's policy.

        The offering is the offer's ``target`` (or the one its ``@id`` names), the purpose
        and the access mode are read from the offer (:func:`messages.requested_use`); the
        answers go to the ``callbackAddress`` as given, once it is on the sender's origin."""
        consumer_pid = required(body, "consumerPid")
        offer = body.get("offer")
        if not isinstance(offer, dict):
            raise InvalidInput(
                "a ContractRequestMessage carries an offer", errors=[FieldError("offer", "required")]
            )
        offering_id = offered_dataset(offer)
        if not offering_id:
            raise InvalidInput(
                "the request's offer names no dataset (target) or offer (@id) of this catalog",
                errors=[FieldError("offer.target", "required")],
            )
        purpose, mode = messages.requested_use(offer)
        purpose = purpose or UNSPECIFIED  # a policy that asks for a purpose denies such a request
        asked = asked_version(body)
        callback = body.get("callbackAddress")
        if not isinstance(callback, str) or not callback:
            raise InvalidInput(
                "a ContractRequestMessage starting a negotiation names its callbackAddress",
                errors=[FieldError("callbackAddress", "required")],
            )
        refusal = foreign_origin(callback, sender_endpoint, "callbackAddress", f"{sender}'s verified")
        reply_to = sender_endpoint if refusal else callback.rstrip("/")
        row = Negotiation(
            id=new_pid(),
            role="provider",
            peer_pid=consumer_pid,
            counterparty=sender,
            counterparty_endpoint=reply_to,
            state=REQUESTED,
            offering_id=offering_id,
            purpose=purpose,
            access_mode=mode or "",
            # the terms come from the provider's own policy (or its counter-offer), never from the
            # request: a policy the consumer slips into its offer is dropped here
            offer={
                **{k: v for k, v in dict(body.get("offer") or {}).items() if k not in PROVIDERS_OWN},
                **asked,
            },
            deadline=utcnow() + self.timeout,
            options=self.options_for("provider", offering_id),
        )
        if refusal:
            with transaction(self.engine) as session:
                self._open(session, row, signer=sender, message=body)
                self._terminate(session, row, refusal, signer=self.address, notify=False)
            raise InvalidInput(refusal, errors=[FieldError("callbackAddress", "not the sender's origin")])
        try:
            offering = self._offering_terms(offering_id, _asked(row))
        except AgoraError as exc:
            offering, missing = None, exc.detail
        unverified = ""
        if offering is not None and (types := credential_types(offering["policy"])):
            # asked before the transaction: the requester's credential service is another party
            try:
                verified = credentials(types) if credentials is not None else {}
            except AgoraError as exc:
                verified, unverified = {}, exc.detail
            row.offer = {**row.offer, CREDENTIALS: credential_context(verified)}
        with transaction(self.engine) as session:
            self._open(session, row, signer=sender, message=body)
            created = self.state_message(row)  # DSP: the answer is the negotiation as created
            if offering is None:
                reason = missing if asked else f"no such offering: {missing}"
                self._terminate(session, row, reason, signer=self.address)
            else:
                self._decide(session, row, offering, unverified)
        self._wake()
        return created

    def _decide(
        self,
        session: Session,
        row: Negotiation,
        offering: dict[str, Any],
        unverified: str = "",
        choice: tuple[str, str] | None = None,
    ) -> None:
        """Terminate a request the offering does not allow, hold one for a person, or agree.
        A request whose action names no mode (ODRL ``use``) asks for the offering's first:
        ``download`` when it is offered."""
        modes = list(offering["access_modes"])
        if not row.access_mode and modes:
            row.access_mode = "download" if "download" in modes else modes[0]
        mode = row.access_mode
        if mode not in offering["access_modes"]:
            self._terminate(
                session,
                row,
                f"offering {row.offering_id} does not allow {mode} "
                f"(its modes: {', '.join(offering['access_modes'])})",
                signer=self.address,
            )
            return
        allowed, why, _ = policy_decision(
            offering["policy"],
            participant=row.counterparty,
            purpose=row.purpose,
            mode=mode,
            credentials=(row.offer or {}).get(CREDENTIALS),
        )
        if not allowed:
            note = f" (the requester's credentials were not verified: {unverified})" if unverified else ""
            self._terminate(session, row, f"the policy denies it: {why}{note}", signer=self.address)
            return
        key, default = choice or ("on_request", "wait" if offering.get("approval") == "manual" else "agree")
        action = self.choice(row, key, default)
        self._act(session, row, action, offering, "policy (automatic approval)")

    def _act(
        self, session: Session, row: Negotiation, action: str, offering: dict[str, Any], why: str
    ) -> None:
        """Agree, offer (the offering's policy), terminate, or wait for a person."""
        if action == "agree":
            self._agree(session, row, offering, approver=why)
        elif action == "offer":
            self._offer(session, row, offering["policy"], f"an offer by {why}")
        elif action == "terminate":
            self._terminate(
                session, row, "the provider declines (its setting for this offering)", signer=self.address
            )
        else:
            row.reason = "waiting for a person at the provider to approve"

    def _on_requested(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        """The consumer answers an offer with a request of its own (a counter-request)."""
        offer = body.get("offer")
        if not isinstance(offer, dict):
            raise InvalidInput(
                "a ContractRequestMessage carries an offer", errors=[FieldError("offer", "required")]
            )
        self._transition(
            session,
            row,
            "requested",
            message_type="ContractRequestMessage",
            signer=sender,
            message=body,
            reason="the consumer asked again (a counter-request)",
        )
        verified = (row.offer or {}).get(CREDENTIALS)  # what this node verified, never the consumer's word
        row.offer = {
            **{k: v for k, v in offer.items() if k not in PROVIDERS_OWN},
            **_asked(row),
            **({CREDENTIALS: verified} if verified else {}),
        }
        self._decide(
            session,
            row,
            self._offering_terms(row.offering_id, _asked(row)),
            choice=("on_counter_request", "wait"),
        )

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
            self._offer(session, row, policy, f"counter-offer by {actor}")
        self._wake()
        return self.get(negotiation_id)

    def _offer(self, session: Session, row: Negotiation, policy: dict[str, Any] | None, reason: str) -> None:
        offer = messages.counter_offer(row, policy or {})
        self._transition(
            session, row, "offer", message_type=messages.OFFER_MESSAGE, signer=self.address, reason=reason
        )
        row.offer = offer
        self._send(session, row, f"/negotiations/{row.peer_pid}/offers", messages.offer_message(row, offer))

    def _agree(self, session: Session, row: Negotiation, offering: dict[str, Any], approver: str) -> None:
        """Sign the terms (EIP-712, the registry's domain) and send the agreement."""
        registry = self._registry()
        policy = (row.offer.get("agora:policy") if row.offer else None) or offering["policy"]
        agreement_id = "0x" + secrets.token_hex(32)
        terms = agreement_terms(
            row,
            offering,
            policy,
            agreement_id=agreement_id,
            provider=self.address,
            chain={"chain_id": registry.chain.chain_id, "registry": registry.address},
        )
        signature = "0x" + sign_agreement(self._private_key(), typed_data_of(terms)).hex()
        self._transition(
            session,
            row,
            "agree",
            message_type=messages.AGREEMENT_MESSAGE,
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
                terms_hash=canonical_hash(terms),
                valid_until=terms["validUntil"],
                provider_signature=signature,
                chain_id=registry.chain.chain_id,
                registry_address=registry.address,
                max_uses=max_uses_of(policy),
            )
        )
        self._send(
            session,
            row,
            f"/negotiations/{row.peer_pid}/agreement",
            messages.agreement_message(
                row,
                terms,
                signature,
                callback=self.callback,
                plain=self.plain(row.counterparty, session),
                parties=self.parties(row, session),
            ),
        )

    # The consumer's answers ------------------------------------------------------------------

    def _on_accepted(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        """The consumer accepted the counter-offer: agree on it."""
        self._transition(
            session,
            row,
            "accepted",
            message_type=messages.EVENT_MESSAGE,
            signer=sender,
            message=body,
            reason="the consumer accepted the counter-offer",
        )
        action = self.choice(row, "on_accepted", "agree")
        if action == "wait":
            row.reason = "waiting for a person at the provider to agree"
        else:
            offering = self._offering_terms(row.offering_id, _asked(row))
            self._act(session, row, action, offering, "the accepted counter-offer")

    def _on_verification(self, session: Session, row: Negotiation, sender: str, body: dict[str, Any]) -> None:
        agreement = session.get(Agreement, row.agreement_id) if row.agreement_id else None
        if agreement is None:
            raise IllegalTransition("no agreement to verify yet")
        plain = self.plain(sender, session)  # a plain DSP consumer verifies by the message alone
        signature = str(body.get("agora:signature") or "")
        if not plain:
            check_signature(typed_data_of(agreement.terms), signature, agreement.consumer, "the consumer")
        self._transition(
            session,
            row,
            "verified",
            message_type=messages.VERIFICATION_MESSAGE,
            signer=sender,
            message=body,
            reason="verified by the consumer (a DSP connector: no co-signature, no chain record)"
            if plain
            else "consumer signature checked",
        )
        if not plain:
            agreement.consumer_signature = signature
        row.reason = "finalizing" if plain else "recording the agreement on chain"
        self._after_verification(session, row)

    def _after_verification(self, session: Session, row: Negotiation) -> None:
        """Finalize (the upkeep records it), or terminate, or wait, as this side chose."""
        action = self.choice(row, "on_verification", "finalize")
        if action == "terminate":
            self._terminate(session, row, "the provider declines to finalize", signer=self.address)
        elif action == "wait":
            row.reason = "waiting for a person at the provider to finalize"

    # Recording on chain ------------------------------------------------------------------------

    def finalize(self, negotiation_id: str, *, now: bool = False) -> None:
        """Record both signatures on chain (the registry checks them), then FINALIZED.
        When the chain is down the negotiation waits in VERIFIED and is retried. One whose
        options say to wait is finalized only when asked (``now``)."""
        with Session(self.engine) as session:
            row = session.get(Negotiation, negotiation_id)
            agreement = session.get(Agreement, row.agreement_id) if row and row.agreement_id else None
        if row is None or agreement is None or row.role != "provider" or row.state != "VERIFIED":
            return
        if self.choice(row, "on_verification", "finalize") != "finalize" and not now:
            return
        plain = self.plain(row.counterparty)
        try:
            tx_hash, block = (None, None) if plain else self._record(agreement)
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
            stored.tx_hash, stored.block_number, stored.finalized = tx_hash, block, True
            self._transition(
                session,
                fresh,
                "finalize",
                message_type=messages.EVENT_MESSAGE,
                signer=self.address,
                reason="finalized under DSP (the consumer is a DSP connector: no chain record)"
                if plain
                else f"recorded on chain in tx {tx_hash}",
            )
            extension = {} if plain else {"agora:tx": tx_hash, "agora:block": block}
            self._send(
                session,
                fresh,
                f"/negotiations/{fresh.peer_pid}/events",
                messages.event_message(fresh, "FINALIZED", **extension),
            )
        self._wake()

    def _record(self, agreement: Agreement) -> tuple[str | None, int | None]:
        """Record ``agreement`` on chain: its transaction and block, or none if it already is."""
        registry = self._registry()
        agreement_id = bytes.fromhex(agreement.id[2:])
        if registry.get_agreement(agreement_id) is not None:
            return None, None
        result = registry.record_agreement(
            agreement_id,
            bytes.fromhex(agreement.terms_hash),
            agreement.provider,
            agreement.consumer,
            agreement.valid_until,
            bytes.fromhex(agreement.provider_signature[2:]),
            bytes.fromhex(agreement.consumer_signature[2:]),
        )
        return result.tx_hash, result.block_number
