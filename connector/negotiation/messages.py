"""The Dataspace Protocol messages a negotiation sends, built from its row and values.

Pure functions: they read a :class:`~connector.models.Negotiation` and return the JSON-LD
body; the service decides when to send one and queues it in the dispatcher's outbox. A
message names the pids both sides know so far (the peer's pid is unknown until its first
answer), so the receiver finds its own record.

What is asked for is said in ODRL, as any connector reads it: the access mode is the
permission's action (``use`` for a plain download, Agora's ``compute`` and ``federate``
actions otherwise) and the purpose an ``odrl:purpose`` constraint. Between Agora nodes
(``plain=False``) the agreement also carries Agora's extension: the terms both parties sign
(EIP-712) and the provider's signature, the consumer's signature in its verification, the
transaction in the FINALIZED event; a plain DSP connector gets the messages without them.
"""

from __future__ import annotations

import secrets
from typing import Any

from connector.dsp import DSP_CONTEXT
from connector.models import Negotiation
from connector.negotiation.terms import _asked
from kernel.errors import FieldError, InvalidInput
from marketplace.catalog import dataset_iri
from marketplace.policy.odrl import ACTIONS, AGORA_NS

ODRL = "http://www.w3.org/ns/odrl/2/"
PURPOSE = "odrl:purpose"

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
    row: Negotiation,
    offer: dict[str, Any] | None,
    *,
    callback: str,
    asked: dict[str, Any],
    catalog_offer: dict[str, Any] | None = None,
    plain: bool = False,
) -> dict[str, Any]:
    """The consumer's ``ContractRequestMessage`` for ``row``.

    To a plain DSP provider it is the offer of its catalog (``catalog_offer``) as it stands,
    which is what such a provider agrees to; to an Agora node an ODRL offer whose action is
    the access mode and whose constraint is the purpose (``offer`` adds to it), with the
    version ``asked`` for."""
    if plain:
        if catalog_offer is None:
            raise InvalidInput(
                f"the provider's catalog holds no offer on {row.offering_id} (crawl it first)",
                errors=[FieldError("offering_id", "no offer in the provider's catalog")],
            )
        odrl_offer = {**catalog_offer, "@type": "Offer", "target": str(catalog_offer.get("target") or "")}
        return {
            "@context": DSP_CONTEXT,
            "@type": "ContractRequestMessage",
            "consumerPid": row.id,
            "offer": odrl_offer,
            "callbackAddress": callback,
        }
    permission: dict[str, Any] = {"action": ACTIONS.get(row.access_mode, "use")}
    if row.purpose:
        permission["constraint"] = [{"leftOperand": PURPOSE, "operator": "eq", "rightOperand": row.purpose}]
    odrl_offer = {
        "@type": "Offer",
        "@id": str((catalog_offer or {}).get("@id") or f"urn:agora:offer:{row.offering_id}"),
        "target": dataset_iri(row.offering_id),
        "permission": [permission],
        **(offer or {}),
    }
    return {
        "@context": DSP_CONTEXT,
        "@type": "ContractRequestMessage",
        "consumerPid": row.id,
        "offer": odrl_offer,
        "callbackAddress": callback,
        **asked,
    }


def requested_use(offer: Any) -> tuple[str, str | None]:
    """(purpose, access mode) a request's offer asks for: the purpose of its ``odrl:purpose``
    constraint (``eq``, or the first of a list), ``""`` when it names none; the mode its action
    names (None for ``use`` and actions Agora has no mode for: the offering's default)."""
    permissions = offer.get("permission") if isinstance(offer, dict) else None
    first = permissions[0] if isinstance(permissions, list) and permissions else permissions
    if not isinstance(first, dict):
        return "", None
    action = first.get("action")
    action = action.get("@id") if isinstance(action, dict) else action
    mode = next((m for m, iri in ACTIONS.items() if iri == action and m != "use"), None)
    purpose = ""
    constraints = first.get("constraint") or []
    for c in constraints if isinstance(constraints, list) else [constraints]:
        if not isinstance(c, dict) or str(c.get("leftOperand")) not in (PURPOSE, "purpose", ODRL + "purpose"):
            continue
        right = c.get("rightOperand")
        right = right[0] if isinstance(right, list) and right else right
        right = right.get("@value", right.get("@id")) if isinstance(right, dict) else right
        purpose = str(right or "")[:200]
        break
    return purpose, mode


def counter_offer(row: Negotiation, policy: dict[str, Any]) -> dict[str, Any]:
    """The provider's ODRL offer on ``row``'s offering under ``policy`` (a fresh id each)."""
    return {
        "@type": "Offer",
        "@id": f"urn:agora:offer:{row.offering_id}:{secrets.token_hex(4)}",
        "target": dataset_iri(row.offering_id),
        "permission": [{"action": "use"}],
        "agora:policy": policy,
        **_asked(row),  # the version asked for still is
    }


def offer_message(row: Negotiation, offer: dict[str, Any]) -> dict[str, Any]:
    # an offer answering a request names the consumer's pid and, per DSP, no callback
    return dsp(row, OFFER_MESSAGE, offer=offer)


def agreement_message(
    row: Negotiation,
    terms: dict[str, Any],
    signature: str,
    *,
    callback: str,
    plain: bool = False,
    parties: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The provider's ``ContractAgreementMessage``: the policy as an ODRL agreement between
    the two parties (``parties``: their ids as the peer knows them, its DIDs for a plain
    connector), with the signed ``terms`` and the provider's ``signature`` beside it for an
    Agora node."""
    from marketplace.policy import parse_policy, to_odrl_offer

    provider, dataset = str(terms["provider"]), str(terms["dataset"])
    assigner, assignee = parties or (provider, row.counterparty)
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
            "@id": str(terms["agreement"]),
            "@type": "Agreement",
            "target": dataset,
            "assigner": assigner,
            "assignee": assignee,
            "timestamp": terms["issued"],
        }
    )
    if plain:
        agreement.pop(AGORA_NS + "policy", None)
        return dsp(row, AGREEMENT_MESSAGE, agreement=agreement, callbackAddress=callback)
    return dsp(
        row,
        AGREEMENT_MESSAGE,
        agreement=agreement,
        callbackAddress=callback,
        **{"agora:terms": terms, "agora:signature": signature},
    )


def verification_message(row: Negotiation, signature: str | None) -> dict[str, Any]:
    """The consumer's ``ContractAgreementVerificationMessage``: its own signature between
    Agora nodes (``None`` for a plain DSP provider)."""
    return dsp(row, VERIFICATION_MESSAGE, **({"agora:signature": signature} if signature else {}))


def event_message(row: Negotiation, event_type: str, **fields: Any) -> dict[str, Any]:
    """A ``ContractNegotiationEventMessage`` (``ACCEPTED``, ``FINALIZED``)."""
    return dsp(row, EVENT_MESSAGE, eventType=event_type, **fields)


def termination_message(row: Negotiation, reason: str) -> dict[str, Any]:
    return dsp(row, TERMINATION_MESSAGE, code="agora:terminated", reason=[reason])


UNSPECIFIED = "unspecified"  # the purpose of a request whose offer names none


def required(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the message lacks {key}", errors=[FieldError(key, "required")])
    return value


def offered_dataset(offer: dict[str, Any]) -> str:
    """The offering a request's offer is on: its ``target`` (``urn:uuid:…`` or as this
    catalog names it), else the offering of its ``@id`` (``urn:agora:offer:<id>[:<version>]``)."""
    target = offer.get("target")
    target = target.get("@id") if isinstance(target, dict) else target
    if isinstance(target, str) and target:
        return target.removeprefix("urn:uuid:")[:64]
    offer_id = str(offer.get("@id") or "")
    if offer_id.startswith("urn:agora:offer:"):
        return offer_id.removeprefix("urn:agora:offer:").split(":", 1)[0][:64]
    return ""
