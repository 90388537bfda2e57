"""ODRL export: offers that validate against the Dataspace Protocol 2025-1 schemas.

The schemas' cross-file ``$ref``s use their ``$id`` URLs; a local ``referencing`` registry
maps them to the files in ``tests/dsp-2025-1`` so nothing is fetched.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from marketplace.policy import AGORA_NS, Policy, from_template, load_policy, parse_policy, to_odrl_offer
from marketplace.policy.templates import TEMPLATES
from tests.dsp import read, validator

A = "0x52908400098527886E0F7030069857D2E4169EE7"
ASSIGNER = "did:web:provider.example"
TARGET = "urn:uuid:3afeadd8-ed2d-569e-d634-8394a8836d57"

FULL = """
permissions:
  - action: compute
    constraints:
      - {leftOperand: purpose, operator: isAnyOf, rightOperand: [predictive-maintenance, research]}
      - {leftOperand: participant, operator: eq, rightOperand: "0x52908400098527886E0F7030069857D2E4169EE7"}
      - {leftOperand: count, operator: lt, rightOperand: 10}
      - {leftOperand: elapsedTime, operator: lteq, rightOperand: P30D}
      - xone:
          - {leftOperand: region, operator: eq, rightOperand: EU}
          - and:
              - {leftOperand: participantGroup, operator: isAllOf, rightOperand: [partners, gold]}
              - {leftOperand: accessMode, operator: neq, rightOperand: download}
    duties:
      - {action: log}
      - {action: notify, target: "https://provider.example/usage"}
      - action: delete
        constraints: [{leftOperand: dateTime, operator: lteq, rightOperand: "2027-01-01T00:00:00Z"}]
prohibitions:
  - action: download
  - action: federate
    constraints: [{leftOperand: participantName, operator: eq, rightOperand: Rival Corp}]
"""


def dataset_with(offer: dict[str, Any]) -> dict[str, Any]:
    dataset = read("catalog/example/dataset.json")
    dataset["hasPolicy"] = [offer]
    return dataset


def dataset_errors(offer: dict[str, Any]) -> list[str]:
    errors = validator("catalog/dataset-schema.json").iter_errors(dataset_with(offer))
    return [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def offer_of(policy: Policy, **kw: Any) -> dict[str, Any]:
    return to_odrl_offer(policy, offer_id="urn:uuid:offer-1", target=TARGET, assigner=ASSIGNER, **kw)


SAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "provide-access": {"purposes": ["research"]},
    "prohibit-access": {},
    "n-times-usage": {"count": 10},
    "duration-usage": {"duration": "P30D"},
    "usage-during-interval": {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"},
    "usage-until-deletion": {"until": "2027-01-01T00:00:00Z"},
    "usage-logging": {},
    "usage-notification": {"target": "https://provider.example/usage"},
    "connector-restricted-usage": {"participants": [A]},
}


def test_the_validator_accepts_the_spec_example_and_is_strict() -> None:
    """The harness itself: the spec's own example passes, a broken one does not."""
    assert (
        list(validator("catalog/dataset-schema.json").iter_errors(read("catalog/example/dataset.json"))) == []
    )
    broken = read("catalog/example/dataset.json")
    broken["hasPolicy"][0]["permission"][0]["constraint"][0]["operator"] = "like"
    assert not validator("catalog/dataset-schema.json").is_valid(broken)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_exports_a_valid_catalog_offer(name: str) -> None:
    assert set(SAMPLE_PARAMS) == set(TEMPLATES)
    offer = offer_of(from_template(name, **SAMPLE_PARAMS[name]))
    assert dataset_errors(offer) == []


def test_a_rich_policy_exports_a_valid_catalog_offer() -> None:
    assert dataset_errors(offer_of(load_policy(FULL))) == []


def test_the_offer_speaks_odrl() -> None:
    offer = offer_of(load_policy(FULL))
    assert (offer["@type"], offer["@id"], offer["assigner"]) == ("Offer", "urn:uuid:offer-1", ASSIGNER)
    assert "target" not in offer  # the dataset is the target in a catalog
    [permission] = offer["permission"]
    assert permission["action"] == AGORA_NS + "compute"
    purpose, participant, count, elapsed, xone = permission["constraint"]
    assert purpose == {
        "leftOperand": "odrl:purpose",
        "operator": "isAnyOf",
        "rightOperand": ["predictive-maintenance", "research"],
    }
    assert participant["leftOperand"] == AGORA_NS + "participant" and participant["rightOperand"] == A
    assert count["rightOperand"] == {"@value": 10, "@type": "xsd:integer"}
    assert elapsed == {"leftOperand": "odrl:elapsedTime", "operator": "lteq", "rightOperand": "P30D"}
    region, both = xone["xone"]
    assert region["leftOperand"] == "odrl:spatial"
    assert [c["leftOperand"] for c in both["and"]] == [AGORA_NS + "participantGroup", AGORA_NS + "accessMode"]
    assert [d["action"] for d in permission["duty"]] == [AGORA_NS + "log", "odrl:inform", "odrl:delete"]
    assert permission["duty"][1][AGORA_NS + "endpoint"] == "https://provider.example/usage"
    assert permission["duty"][2]["constraint"][0]["rightOperand"] == "2027-01-01T00:00:00Z"
    assert offer["prohibition"] == [
        {"action": AGORA_NS + "download"},
        {
            "action": AGORA_NS + "federate",
            "constraint": [
                {"leftOperand": AGORA_NS + "participantName", "operator": "eq", "rightOperand": "Rival Corp"}
            ],
        },
    ]


def test_the_agora_policy_travels_with_the_offer_and_reads_back() -> None:
    for policy in (load_policy(FULL), from_template("n-times-usage", count=3)):
        offer = json.loads(json.dumps(offer_of(policy)))
        assert parse_policy(offer[AGORA_NS + "policy"]) == policy


def test_prohibit_access_exports_only_a_prohibition() -> None:
    offer = offer_of(from_template("prohibit-access"))
    assert "permission" not in offer
    assert offer["prohibition"] == [{"action": "use"}]


def test_a_catalog_offer_must_not_name_its_target() -> None:
    """Why ``target`` is left out by default: DSP 2025-1 refuses it inside a dataset."""
    offer = offer_of(from_template("provide-access"), include_target=True)
    assert offer["target"] == TARGET
    assert any("should not be valid under {'required': ['target']}" in e for e in dataset_errors(offer))


def test_a_numeric_right_operand_would_not_validate() -> None:
    """Why a count is a typed literal: DSP right operands are strings, objects or arrays."""
    offer = offer_of(from_template("n-times-usage", count=10))
    raw = copy.deepcopy(offer)
    raw["permission"][0]["constraint"][0]["rightOperand"] = 10
    assert dataset_errors(offer) == []
    assert dataset_errors(raw) != []


def test_a_message_offer_carries_the_target_and_validates() -> None:
    message = read("negotiation/example/contract-offer-message.json")
    message["offer"] = offer_of(load_policy(FULL), include_target=True)
    assert list(validator("negotiation/contract-offer-message-schema.json").iter_errors(message)) == []
    del message["offer"]["target"]
    assert not validator("negotiation/contract-offer-message-schema.json").is_valid(message)
