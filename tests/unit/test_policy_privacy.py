"""The privacy constraint of usage policies: dpEpsilon / dpDelta caps on federated learning, as
written, refused, decided, explained, exported to ODRL and read back as a per-round cap."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import pytest

from kernel.errors import InvalidInput
from marketplace.policy import (
    AGORA_NS,
    DEFAULT_DP_DELTA,
    RequestContext,
    compile_policy,
    describe,
    from_template,
    load_policy,
    parse_policy,
    policy_json_schema,
    privacy_cap,
    to_odrl_offer,
)
from marketplace.policy.explain import constraint_words, number_words
from tests.dsp import read, validator

A = "0x52908400098527886E0F7030069857D2E4169EE7"
B = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

CAPPED = """
permissions:
  - action: federate
    constraints:
      - {leftOperand: purpose, operator: eq, rightOperand: research}
      - {leftOperand: dpEpsilon, operator: lteq, rightOperand: 3}
"""


def atom(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def federate(*constraints: dict[str, Any], action: str = "federate") -> dict[str, Any]:
    return {"permissions": [{"action": action, "constraints": list(constraints)}]}


def refusal(data: Any) -> tuple[str, str]:
    with pytest.raises(InvalidInput) as caught:
        parse_policy(data)
    [error] = caught.value.errors
    return error.path, error.message


def decide(policy: Any, **context: Any) -> Any:
    context.setdefault("mode", "federate")
    return compile_policy(parse_policy(policy)).evaluate(RequestContext(**context))


# writing it --------------------------------------------------------------------------------------


def test_a_cap_without_delta_gets_the_default_delta_written_out() -> None:
    policy = load_policy(CAPPED)
    [permission] = policy.to_data()["permissions"]
    assert permission["constraints"][1:] == [atom("dpEpsilon", "lteq", 3.0), atom("dpDelta", "lteq", 1e-5)]
    assert DEFAULT_DP_DELTA == 1e-5
    explicit = federate(
        atom("purpose", "eq", "research"), atom("dpEpsilon", "lteq", 3), atom("dpDelta", "lteq", 1e-5)
    )
    assert parse_policy(explicit) == policy  # two spellings, one policy
    assert parse_policy(policy.to_data()) == policy  # canonical: reading it back adds nothing


def test_numbers_read_in_every_spelling_yaml_and_json_give_them() -> None:
    """YAML 1.1 reads ``1e-5`` as text: decimal text is read as the number it spells."""
    written = load_policy(
        """
permissions:
  - action: federate
    constraints:
      - {leftOperand: dpEpsilon, operator: lt, rightOperand: 2.5}
      - {leftOperand: dpDelta, operator: lteq, rightOperand: 1e-6}
"""
    )
    for epsilon in (2.5, "2.5", " 2.5 ", "25e-1"):
        again = federate(atom("dpEpsilon", "lt", epsilon), atom("dpDelta", "lteq", "1E-6"))
        assert parse_policy(again) == written
    [_, delta] = written.permissions[0].constraints
    assert delta.rightOperand == 1e-6 and isinstance(delta.rightOperand, float)


@pytest.mark.parametrize("operator", ["eq", "neq", "gt", "gteq", "isAnyOf", "isNoneOf", "isAllOf"])
@pytest.mark.parametrize("left", ["dpEpsilon", "dpDelta"])
def test_only_upper_bounds_fit_a_privacy_budget(left: str, operator: str) -> None:
    right: Any = [3] if operator.startswith("is") else 0.5
    extra = [] if left == "dpEpsilon" else [atom("dpEpsilon", "lteq", 3)]
    path, message = refusal(federate(*extra, atom(left, operator, right)))
    assert path == f"permissions.0.constraints.{len(extra)}.operator"
    assert (
        message
        == f"{operator} does not fit {left} (compared as privacy budget {'ε' if left == 'dpEpsilon' else 'δ'}); use one of lt, lteq"
    )


@pytest.mark.parametrize(
    "value", [0, -1, 0.0, 1e7, True, "three", "nan", "inf", "1e999", [3], None, {"@value": 3}, "0x10", ""]
)
def test_an_epsilon_that_is_not_a_positive_finite_number_is_refused(value: Any) -> None:
    path, message = refusal(federate(atom("dpEpsilon", "lteq", value)))
    assert path == "permissions.0.constraints.0.rightOperand"
    assert message.startswith("expected a privacy budget ε") or "got a list" in message


@pytest.mark.parametrize("value", [0, 1, 1.5, -1e-5, False, "tiny", math.inf])
def test_a_delta_outside_zero_and_one_is_refused(value: Any) -> None:
    path, message = refusal(federate(atom("dpEpsilon", "lteq", 3), atom("dpDelta", "lteq", value)))
    assert path == "permissions.0.constraints.1.rightOperand"
    assert message.startswith("expected δ: a number between 0 and 1")


def test_an_infinite_budget_in_yaml_is_refused_with_its_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_policy(
            "permissions:\n  - action: federate\n    constraints:\n      - {leftOperand: dpEpsilon, operator: lteq, rightOperand: .inf}\n"
        )
    assert "policy:4" in caught.value.detail


@pytest.mark.parametrize("action", ["use", "download", "compute"])
def test_a_cap_belongs_in_a_permission_to_federate(action: str) -> None:
    path, message = refusal(federate(atom("dpEpsilon", "lteq", 3), action=action))
    assert path == "permissions.0.constraints.0.leftOperand"
    assert message == f"dpEpsilon caps federated learning: put it in a permission to federate, not {action}"


@pytest.mark.parametrize("group", ["or", "xone"])
def test_a_cap_may_not_stand_under_or_or_xone(group: str) -> None:
    nested = {group: [atom("purpose", "eq", "research"), {"and": [atom("dpEpsilon", "lteq", 3)]}]}
    path, message = refusal(federate(nested))
    assert path == f"permissions.0.constraints.0.{group}.1.and.0.leftOperand"
    assert "a privacy cap must hold for every use" in message


def test_a_cap_has_no_place_in_a_prohibition_or_a_duty() -> None:
    path, message = refusal(
        {"prohibitions": [{"action": "federate", "constraints": [atom("dpEpsilon", "lteq", 3)]}]}
    )
    assert (path, message) == (
        "prohibitions.0.constraints.0.leftOperand",
        "dpEpsilon caps a permission to federate; it has no meaning in a prohibition",
    )
    duty = {"action": "delete", "constraints": [atom("dpDelta", "lteq", 1e-5)]}
    path, message = refusal({"permissions": [{"action": "federate", "duties": [duty]}]})
    assert path == "permissions.0.duties.0.constraints.0.leftOperand" and message.endswith("in a duty")


def test_a_delta_alone_bounds_nothing() -> None:
    path, message = refusal(federate(atom("purpose", "eq", "x"), atom("dpDelta", "lteq", 1e-5)))
    assert path == "permissions.0.constraints.1.leftOperand"
    assert message == "dpDelta needs a dpEpsilon in the same permission: δ alone bounds nothing"


def test_a_cap_inside_and_gets_its_delta_inside_the_same_group() -> None:
    policy = parse_policy(federate({"and": [atom("dpEpsilon", "lt", 2), atom("purpose", "eq", "x")]}))
    [group] = policy.to_data()["permissions"][0]["constraints"]
    assert group["and"] == [
        atom("dpEpsilon", "lt", 2.0),
        atom("dpDelta", "lteq", 1e-5),
        atom("purpose", "eq", "x"),
    ]


def test_the_published_schema_accepts_a_capped_policy() -> None:
    for data in (load_policy(CAPPED).to_data(), federate(atom("dpEpsilon", "lteq", 3))):
        jsonschema.Draft202012Validator(policy_json_schema()).validate(json.loads(json.dumps(data)))
    schema = jsonschema.Draft202012Validator(policy_json_schema())
    assert not schema.is_valid(federate(atom("dpEpsilon", "like", 3)))
    assert not schema.is_valid(federate(atom("dpEpsilon", "lteq", {"value": 3})))


# deciding with it ---------------------------------------------------------------------------------


def test_a_stated_budget_within_the_cap_is_granted() -> None:
    decision = decide(load_policy(CAPPED).to_data(), purpose="research", dp_epsilon=2.5, dp_delta=1e-6)
    assert decision.allowed
    assert [r.explanation for r in decision.reasons][1:] == [
        "the privacy budget ε (2.5) is at most 3",
        "the privacy budget δ (1e-6) is at most 1e-5",
    ]


@pytest.mark.parametrize(
    ("epsilon", "delta", "why"),
    [
        (3.5, 1e-6, "the privacy budget ε (3.5) is more than 3"),
        (2.0, 1e-3, "the privacy budget δ (0.001) is more than 1e-5"),
        (None, 1e-6, "no privacy budget ε was stated (federated learning without differential privacy)"),
        (2.0, None, "no privacy budget δ was stated"),
    ],
)
def test_a_budget_over_the_cap_or_missing_is_denied_with_the_reason(
    epsilon: Any, delta: Any, why: str
) -> None:
    decision = decide(load_policy(CAPPED).to_data(), purpose="research", dp_epsilon=epsilon, dp_delta=delta)
    assert not decision.allowed
    assert why in [r.explanation for r in decision.reasons if not r.satisfied]


def test_lt_excludes_the_bound_and_lteq_includes_it() -> None:
    for operator, allowed in (("lt", False), ("lteq", True)):
        decision = decide(federate(atom("dpEpsilon", operator, 3)), dp_epsilon=3.0, dp_delta=1e-5)
        assert decision.allowed is allowed


def test_a_budget_in_the_request_must_be_a_real_one() -> None:
    for bad in ({"dp_epsilon": -1}, {"dp_epsilon": math.inf}, {"dp_delta": 1.0}, {"dp_delta": 0}):
        with pytest.raises(ValueError):
            RequestContext(mode="federate", **bad)


def test_other_modes_are_untouched_by_a_federate_cap() -> None:
    policy = {
        "permissions": [
            {"action": "compute"},
            {"action": "federate", "constraints": [atom("dpEpsilon", "lteq", 1)]},
        ]
    }
    assert decide(policy, mode="compute").allowed
    assert not decide(policy, mode="federate").allowed


# explaining and exporting it -------------------------------------------------------------------------


def test_the_policy_says_its_cap_in_plain_words() -> None:
    assert describe(load_policy(CAPPED)) == [
        "Anyone may use it in federated learning for research.",
        "It may be used in federated learning only with differential privacy, ε ≤ 3 at δ ≤ 1e-5.",
    ]
    strict = parse_policy(
        federate(atom("participant", "eq", A), atom("dpEpsilon", "lt", 0.5), atom("dpDelta", "lt", 1e-7))
    )
    assert describe(strict) == [
        f"Only {A} may use it in federated learning.",
        "It may be used in federated learning only with differential privacy, ε < 0.5 at δ < 1e-7.",
    ]
    [_, epsilon, delta] = strict.permissions[0].constraints
    assert (constraint_words(epsilon), constraint_words(delta)) == (
        "the privacy budget ε is less than 0.5",
        "the privacy budget δ is less than 1e-7",
    )


def test_numbers_are_written_as_people_write_them() -> None:
    assert [number_words(x) for x in (3.0, 2.5, 1e-5, 1.5e-7, 1e22, 0.001, math.inf)] == [
        "3",
        "2.5",
        "1e-5",
        "1.5e-7",
        "1e22",
        "0.001",
        "∞",
    ]


def test_the_odrl_offer_carries_the_cap_as_typed_literals_and_validates() -> None:
    policy = load_policy(CAPPED)
    offer = to_odrl_offer(
        policy, offer_id="urn:uuid:offer-1", target="urn:uuid:t", assigner="did:web:p.example"
    )
    [permission] = offer["permission"]
    assert permission["action"] == AGORA_NS + "federate"
    assert permission["constraint"][1:] == [
        {
            "leftOperand": AGORA_NS + "dpEpsilon",
            "operator": "lteq",
            "rightOperand": {"@value": 3.0, "@type": "xsd:double"},
        },
        {
            "leftOperand": AGORA_NS + "dpDelta",
            "operator": "lteq",
            "rightOperand": {"@value": 1e-5, "@type": "xsd:double"},
        },
    ]
    dataset = read("catalog/example/dataset.json")
    dataset["hasPolicy"] = [offer]
    assert list(validator("catalog/dataset-schema.json").iter_errors(dataset)) == []
    travelled = json.loads(json.dumps(offer))
    assert parse_policy(travelled[AGORA_NS + "policy"]) == policy  # a peer running Agora reads it back


# the cap the provider enforces each round -------------------------------------------------------------


def test_privacy_cap_reads_the_cap_of_a_permission() -> None:
    assert privacy_cap(load_policy(CAPPED)) == (3.0, 1e-5)
    strict = parse_policy(federate(atom("dpEpsilon", "lt", 3), atom("dpDelta", "lteq", 1e-6)))
    epsilon, delta = privacy_cap(strict) or (0.0, 0.0)
    assert epsilon == math.nextafter(3.0, 0.0) and epsilon < 3.0 and delta == 1e-6


def test_several_caps_in_one_permission_all_hold() -> None:
    policy = federate(
        atom("dpEpsilon", "lteq", 5),
        {"and": [atom("dpEpsilon", "lteq", 2), atom("dpDelta", "lteq", 1e-4)]},
        atom("dpDelta", "lteq", 1e-6),
    )
    assert privacy_cap(parse_policy(policy)) == (2.0, 1e-6)


@pytest.mark.parametrize(
    "data",
    [
        {"permissions": [{"action": "federate"}]},
        {"permissions": [{"action": "compute"}]},
        {"prohibitions": [{"action": "use"}]},
        {"template": "n-times-usage", "params": {"count": 3}},
    ],
)
def test_no_cap_where_the_policy_sets_none(data: dict[str, Any]) -> None:
    assert privacy_cap(parse_policy(data)) is None


def test_without_a_context_the_tightest_cap_written_anywhere_applies() -> None:
    policy = parse_policy(
        {
            "permissions": [
                {"action": "use", "constraints": [atom("participant", "eq", A)]},
                {"action": "federate", "constraints": [atom("dpEpsilon", "lteq", 8)]},
                {
                    "action": "federate",
                    "constraints": [atom("dpEpsilon", "lteq", 3), atom("dpDelta", "lteq", 1e-7)],
                },
            ]
        }
    )
    assert privacy_cap(policy) == (3.0, 1e-7)
    # the agreement's context decides: A is granted by a permission with no cap at all
    assert privacy_cap(policy, RequestContext(participant=A, mode="federate")) is None
    # B stating ε=5 is granted only by the ε ≤ 8 permission: the loosest granting one applies
    assert privacy_cap(
        policy, RequestContext(participant=B, mode="compute", dp_epsilon=5, dp_delta=1e-6)
    ) == (8.0, 1e-5)
    # B stating ε=2 at δ=1e-8 meets both caps: the looser of the two permissions applies
    assert privacy_cap(
        policy, RequestContext(participant=B, mode="federate", dp_epsilon=2, dp_delta=1e-8)
    ) == (8.0, 1e-5)
    # a request no permission grants falls back to the tightest cap, never to none
    assert privacy_cap(policy, RequestContext(participant=B, mode="federate")) == (3.0, 1e-7)


def test_a_template_policy_and_a_capped_federate_rule_compose() -> None:
    assert privacy_cap(from_template("provide-access")) is None
    assert decide(from_template("provide-access").to_data()).allowed  # no cap: nothing to state
