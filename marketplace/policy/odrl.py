"""A policy as an ODRL ``Offer``, the shape the Dataspace Protocol (2025-1) catalog uses in a
dataset's ``hasPolicy`` and in contract negotiation messages.

Names come from the DSP JSON-LD context: ``use``, the operators and ``and``/``or``/``xone``
are terms of it; other ODRL vocabulary is written with its ``odrl:`` prefix (``odrl:purpose``,
``odrl:dateTime``, ``odrl:delete``), which that context defines. What ODRL has no word for
(the participant operands, the download/compute/federate actions, usage logging) is written
as full IRIs under :data:`AGORA_NS`, because a catalog's ``@context`` may only list context
URLs, not define a prefix. The Agora policy itself travels as ``AGORA_NS + "policy"``, so a
peer running Agora recovers it exactly instead of reading it back from ODRL.

ODRL's right operands are strings, objects or arrays in the DSP schema, so a count is a
typed literal ``{"@value": 10, "@type": "xsd:integer"}`` and a privacy budget (``dpEpsilon``,
``dpDelta``: caps of federated learning's differential privacy, Agora's own operands) is
``{"@value": 3.0, "@type": "xsd:double"}``.
"""

from __future__ import annotations

from typing import Any

from marketplace.policy.language import Constraint, ConstraintNode, Duty, Kind, Policy, group_operator
from marketplace.policy.templates import expand

AGORA_NS = "https://agora.dev/ns/policy#"

ACTIONS: dict[str, str] = {
    "use": "use",
    "download": AGORA_NS + "download",
    "compute": AGORA_NS + "compute",
    "federate": AGORA_NS + "federate",
}
LEFT_OPERANDS: dict[str, str] = {
    "purpose": "odrl:purpose",
    "participant": AGORA_NS + "participant",
    "participantName": AGORA_NS + "participantName",
    "participantGroup": AGORA_NS + "participantGroup",
    "dateTime": "odrl:dateTime",
    "elapsedTime": "odrl:elapsedTime",
    "count": "odrl:count",
    "region": "odrl:spatial",
    "accessMode": AGORA_NS + "accessMode",
    "dpEpsilon": AGORA_NS + "dpEpsilon",
    "dpDelta": AGORA_NS + "dpDelta",
    "credential": AGORA_NS + "credential",
    "credentialClaim": AGORA_NS + "credentialClaim",
}
DUTY_ACTIONS: dict[str, str] = {"log": AGORA_NS + "log", "notify": "odrl:inform", "delete": "odrl:delete"}


def to_odrl_offer(
    policy: Policy, *, offer_id: str, target: str, assigner: str, include_target: bool = False
) -> dict[str, Any]:
    """The ODRL ``Offer`` of ``policy`` for the asset ``target``, offered by ``assigner``.

    DSP 2025-1 forbids ``target`` on an offer inside a catalog's dataset (the dataset is the
    target), so it is left out unless ``include_target`` is set, as a ContractRequestMessage
    or ContractOfferMessage needs.
    """
    rules = expand(policy)
    offer: dict[str, Any] = {"@id": offer_id, "@type": "Offer", "assigner": assigner}
    if include_target:
        offer["target"] = target
    if rules.permissions:
        offer["permission"] = [
            _rule(p.action, p.constraints) | ({"duty": [_duty(d) for d in p.duties]} if p.duties else {})
            for p in rules.permissions
        ]
    if rules.prohibitions:
        offer["prohibition"] = [_rule(p.action, p.constraints) for p in rules.prohibitions]
    offer[AGORA_NS + "policy"] = policy.to_data()
    return offer


def _rule(action: str, constraints: list[ConstraintNode]) -> dict[str, Any]:
    rule: dict[str, Any] = {"action": ACTIONS[action]}
    if constraints:
        rule["constraint"] = [odrl_constraint(c) for c in constraints]
    return rule


def _duty(duty: Duty) -> dict[str, Any]:
    out: dict[str, Any] = {"action": DUTY_ACTIONS[duty.action]}
    if duty.target:
        out[AGORA_NS + "endpoint"] = duty.target
    if duty.constraints:
        out["constraint"] = [odrl_constraint(c) for c in duty.constraints]
    return out


def odrl_constraint(node: ConstraintNode) -> dict[str, Any]:
    """An atomic constraint or a logical one (``{"or": [...]}``) in ODRL terms."""
    if not isinstance(node, Constraint):
        return {group_operator(node): [odrl_constraint(m) for m in node.members]}
    right: Any = node.rightOperand
    if node.kind is Kind.COUNT:
        right = {"@value": right, "@type": "xsd:integer"}
    elif node.kind in (Kind.EPSILON, Kind.DELTA):
        right = {"@value": right, "@type": "xsd:double"}
    return {"leftOperand": LEFT_OPERANDS[node.leftOperand], "operator": node.operator, "rightOperand": right}
