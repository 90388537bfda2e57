"""The Dataspace Protocol messages a negotiation sends, built from its row and values.

Pure functions: they read a :class:`~connector.models.Negotiation` and return the JSON-LD
body; the service decides when to send one and queues it in the dispatcher's outbox. A
message names the pids both sides know so far (the peer's pid is unknown until its first
answer), so the receiver finds its own record.
"""

from __future__ import annotations

import secrets
from typing import Any

from connector.dsp import DSP_CONTEXT
from connector.models import Negotiation
from connector.negotiation.terms import _asked

OFFER_MESSAGE = "ContractOfferMessage"
AGREEMENT_MESSAGE = "ContractAgreementMessage"
VERIFICATION_MESSAGE = "ContractAgreementVerificationMessage"
EVENT_MESSAGE = "ContractNegotiationEventMessage"
TERMINATION_MESSAGE = "ContractNegotiationTerminationMessage"


def pids(row: Negotiation) -> dict[str, str]:
    """``providerPid`` and ``consumerPid`` of ``row`` (this side's id is ``row.id``)."""
    if row.role == "consumer":
        return {"providerPid": row.peer_pid or "", "consumerPid": row.id}
    return {"providerPid": row.id, "consumerPid": row.peer_pid or ""}


def dsp(row: Negotiation, type_: str, **fields: Any) -> dict[str, Any]:
    """A DSP message of ``type_`` about ``row``, with the pids known so far."""
    known = {k: v for k, v in pids(row).items() if v}
    return {"@context": DSP_CONTEXT, "@type": type_, **known, **fields}


def state_message(row: Negotiation) -> dict[str, Any]:
    """The DSP ``ContractNegotiation`` object a request is answered with."""
    return dsp(row, "ContractNegotiation", state=row.state)


def request_message(
    row: Negotiation, offer: dict[str, Any] | None, *, callback: str, asked: dict[str, Any]
) -> dict[str, Any]:
    """The consumer's ``ContractRequestMessage`` for ``row``: an ODRL offer on the offering
    (``offer`` adds to it), its purpose, access mode and the version ``asked`` for."""
    odrl_offer = {
        "@type": "Offer",
        "@id": f"urn:agora:offer:{row.offering_id}",
        "target": f"urn:uuid:{row.offering_id}",
        "permission": [{"action": "use"}],
        **(offer or {}),
    }
    return {
        "@context": DSP_CONTEXT,
        "@type": "ContractRequestMessage",
        "consumerPid": row.id,
        "offer": odrl_offer,
        "callbackAddress": callback,
        "agora:purpose": row.purpose,
        "agora:accessMode": row.access_mode,
        **asked,
    }


def counter_offer(row: Negotiation, policy: dict[str, Any]) -> dict[str, Any]:
    """The provider's ODRL offer on ``row``'s offering under ``policy`` (a fresh id each)."""
    return {
        "@type": "Offer",
        "@id": f"urn:agora:offer:{row.offering_id}:{secrets.token_hex(4)}",
        "target": f"urn:uuid:{row.offering_id}",
        "permission": [{"action": "use"}],
        "agora:policy": policy,
        **_asked(row),  # the version asked for still is
    }


def offer_message(row: Negotiation, offer: dict[str, Any]) -> dict[str, Any]:
    # an offer answering a request names the consumer's pid and, per DSP, no callback
    return dsp(row, OFFER_MESSAGE, offer=offer)


def agreement_message(
    row: Negotiation, terms: dict[str, Any], signature: str, *, callback: str
) -> dict[str, Any]:
    """The provider's ``ContractAgreementMessage``: the policy as an ODRL agreement between
    the two parties, with the signed ``terms`` and the provider's ``signature`` beside it."""
    from marketplace.policy import parse_policy, to_odrl_offer

    provider, dataset = str(terms["provider"]), str(terms["dataset"])
    odrl = to_odrl_offer(
        parse_policy(terms["policy"]),
        offer_id=str(terms["agreement"]),
        target=dataset,
        assigner=provider,
        include_target=True,
    )
    agreement = {k: v for k, v in odrl.items() if k not in ("@type", "@id")}
    agreement.update(
        {
            "@id": f"urn:agora:agreement:{terms['agreement']}",
            "@type": "Agreement",
            "target": dataset,
            "assigner": provider,
            "assignee": row.counterparty,
            "timestamp": terms["issued"],
        }
    )
    return dsp(
        row,
        AGREEMENT_MESSAGE,
        agreement=agreement,
        callbackAddress=callback,
        **{"agora:terms": terms, "agora:signature": signature},
    )


def verification_message(row: Negotiation, signature: str) -> dict[str, Any]:
    """The consumer's ``ContractAgreementVerificationMessage``: its own signature."""
    return dsp(row, VERIFICATION_MESSAGE, **{"agora:signature": signature})


def event_message(row: Negotiation, event_type: str, **fields: Any) -> dict[str, Any]:
    """A ``ContractNegotiationEventMessage`` (``ACCEPTED``, ``FINALIZED``)."""
    return dsp(row, EVENT_MESSAGE, eventType=event_type, **fields)


def termination_message(row: Negotiation, reason: str) -> dict[str, Any]:
    return dsp(row, TERMINATION_MESSAGE, code="agora:terminated", reason=[reason])
