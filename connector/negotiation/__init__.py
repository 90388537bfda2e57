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

from connector.negotiation.records import agreement_out
from connector.negotiation.service import NegotiationService
from connector.negotiation.states import FINAL, TRANSITIONS, IllegalTransition, next_state
from connector.negotiation.terms import (
    ALIAS,
    VERSION,
    asked_version,
    check_signature,
    max_uses_of,
    policy_decision,
    typed_data_of,
    valid_until_of,
)

__all__ = [
    "ALIAS",
    "FINAL",
    "TRANSITIONS",
    "VERSION",
    "IllegalTransition",
    "NegotiationService",
    "agreement_out",
    "asked_version",
    "check_signature",
    "max_uses_of",
    "next_state",
    "policy_decision",
    "typed_data_of",
    "valid_until_of",
]
