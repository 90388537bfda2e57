"""The decision engine: every operator against a reference, the logic of groups and rules,
and the reasons a person reads."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.errors import InvalidInput
from kernel.validation import validate
from marketplace.policy import Decision, RequestContext, compile_policy, parse_policy
from marketplace.policy.explain import LABELS, MISSING
from marketplace.policy.language import (
    ACCESS_MODES,
    ACTIONS,
    KIND_OPERATORS,
    LIST_OPERATORS,
    OPERAND_KINDS,
    Kind,
)

ADDRESSES = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
]
T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


def atom(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def decide(policy: dict[str, Any], **context: Any) -> Decision:
    context.setdefault("mode", "compute")
    context.setdefault("now", T0)
    return compile_policy(parse_policy(policy)).evaluate(RequestContext(**context))


def one(constraint: dict[str, Any], **context: Any) -> Decision:
    return decide({"permissions": [{"action": "use", "constraints": [constraint]}]}, **context)


# the reference: each operator written as plainly as possible --------------------------------

REFERENCE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda v, r: v == r,
    "neq": lambda v, r: v != r,
    "lt": lambda v, r: v < r,
    "lteq": lambda v, r: v <= r,
    "gt": lambda v, r: v > r,
    "gteq": lambda v, r: v >= r,
    "isAnyOf": lambda v, r: v in r,
    "isNoneOf": lambda v, r: v not in r,
}
SET_REFERENCE: dict[str, Callable[[list[str], Any], bool]] = {
    "eq": lambda groups, r: r in groups,
    "neq": lambda groups, r: r not in groups,
    "isAnyOf": lambda groups, r: any(g in r for g in groups),
    "isNoneOf": lambda groups, r: all(g not in r for g in groups),
    "isAllOf": lambda groups, r: all(x in groups for x in r),
}


def check_single(
    constraint: dict[str, Any], expected: bool, missing: str | None = None, **context: Any
) -> None:
    decision = one(constraint, **context)
    assert decision.allowed is expected
    [reason] = decision.reasons
    assert reason.satisfied is expected
    assert reason.path == "permissions[0].constraints[0]"
    if missing is not None:
        assert reason.explanation == missing


def operators(kind: Kind) -> st.SearchStrategy[str]:
    return st.sampled_from(KIND_OPERATORS[kind])


def right_for(operator: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    if operator in LIST_OPERATORS:
        return st.lists(values, min_size=1, max_size=4, unique=True)
    return values


TEXTS = st.sampled_from(["research", "teaching", "marketing", "EU", "ACME"])


@pytest.mark.parametrize("left", ["purpose", "participantName", "region"])
@given(data=st.data())
def test_text_operators_match_the_reference(left: str, data: st.DataObject) -> None:
    operator = data.draw(operators(Kind.TEXT))
    right = data.draw(right_for(operator, TEXTS))
    value = data.draw(st.none() | TEXTS)
    field = {"purpose": "purpose", "participantName": "participant_name", "region": "region"}[left]
    expected = value is not None and REFERENCE[operator](value, right)
    check_single(
        atom(left, operator, right), expected, MISSING[left] if value is None else None, **{field: value}
    )


@given(data=st.data())
def test_participant_operators_match_the_reference(data: st.DataObject) -> None:
    operator = data.draw(operators(Kind.ADDRESS))
    right = data.draw(right_for(operator, st.sampled_from(ADDRESSES)))
    value = data.draw(st.none() | st.sampled_from(ADDRESSES))
    spelled = data.draw(st.sampled_from([str.lower, str.upper, lambda a: a]))
    given_right = [spelled(a).replace("0X", "0x") for a in right] if isinstance(right, list) else right
    expected = value is not None and REFERENCE[operator](value, right)
    check_single(atom("participant", operator, given_right), expected, participant=value)


def test_participants_compare_case_insensitively_even_unnormalised() -> None:
    """A caller that builds a context without validation still gets the address matched."""
    policy = compile_policy(
        parse_policy(
            {"permissions": [{"action": "use", "constraints": [atom("participant", "eq", ADDRESSES[0])]}]}
        )
    )
    ctx = RequestContext.model_construct(
        participant=ADDRESSES[0].lower(), groups=[], mode="compute", now=T0, uses=0
    )
    assert policy.evaluate(ctx).allowed


@given(data=st.data())
def test_access_mode_operators_match_the_reference(data: st.DataObject) -> None:
    operator = data.draw(operators(Kind.MODE))
    right = data.draw(right_for(operator, st.sampled_from(ACCESS_MODES)))
    mode = data.draw(st.sampled_from(ACCESS_MODES))
    check_single(atom("accessMode", operator, right), REFERENCE[operator](mode, right), mode=mode)


SET_OPERANDS = {
    "participantGroup": ("groups", ["partners", "research", "gold", "silver"]),
    "credential": ("credentials", ["MembershipCredential", "IsoCertificate", "DemoCredential"]),
    "credentialClaim": (
        "credential_claims",
        ["MembershipCredential.level=gold", "MembershipCredential.level=silver", "IsoCertificate.iso=27001"],
    ),
}


@pytest.mark.parametrize("left", sorted(SET_OPERANDS))
@given(data=st.data())
def test_set_operators_match_the_reference(left: str, data: st.DataObject) -> None:
    field, pool = SET_OPERANDS[left]
    names = st.sampled_from(pool)
    operator = data.draw(operators(Kind.SET))
    right = data.draw(right_for(operator, names))
    held = data.draw(st.lists(names, max_size=4, unique=True))
    check_single(atom(left, operator, right), SET_REFERENCE[operator](held, right), **{field: held})


ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))])
INSTANTS = st.builds(
    lambda minutes, zone: (T0 + timedelta(minutes=minutes)).astimezone(zone),
    st.integers(-3000, 3000),
    ZONES,
)


@given(data=st.data())
def test_datetime_operators_match_the_reference(data: st.DataObject) -> None:
    operator = data.draw(operators(Kind.TIME))
    bound, now = data.draw(INSTANTS), data.draw(st.one_of(INSTANTS, st.just(T0)))
    check_single(atom("dateTime", operator, bound.isoformat()), REFERENCE[operator](now, bound), now=now)


@given(data=st.data())
def test_elapsed_time_operators_match_the_reference(data: st.DataObject) -> None:
    operator = data.draw(operators(Kind.DURATION))
    amount, unit = data.draw(st.integers(0, 40)), data.draw(st.sampled_from(["D", "H", "M"]))
    span = {"D": timedelta(days=amount), "H": timedelta(hours=amount), "M": timedelta(minutes=amount)}[unit]
    duration = f"P{amount}D" if unit == "D" else f"PT{amount}{unit}"
    agreed = data.draw(st.none() | st.builds(lambda h: T0 - timedelta(hours=h), st.integers(-48, 24 * 45)))
    expected = agreed is not None and REFERENCE[operator](T0 - agreed, span)
    missing = MISSING["elapsedTime"] if agreed is None else None
    check_single(atom("elapsedTime", operator, duration), expected, missing, agreed_at=agreed)


@given(operator=operators(Kind.COUNT), right=st.integers(0, 20), uses=st.integers(0, 25))
def test_count_operators_match_the_reference(operator: str, right: int, uses: int) -> None:
    check_single(atom("count", operator, right), REFERENCE[operator](uses, right), uses=uses)


BUDGETS = {"dpEpsilon": st.floats(1e-6, 100.0), "dpDelta": st.floats(1e-12, 0.999)}


@pytest.mark.parametrize("left", ["dpEpsilon", "dpDelta"])
@given(data=st.data())
def test_privacy_budget_operators_match_the_reference(left: str, data: st.DataObject) -> None:
    """A stated budget meets a cap as the plain comparison says; the other half of the budget
    is stated well inside its cap, so only the operand under test decides."""
    operator = data.draw(operators(OPERAND_KINDS[left]))
    right = data.draw(BUDGETS[left])
    value = data.draw(st.none() | st.just(right) | BUDGETS[left])
    if left == "dpEpsilon":
        constraints, context = [atom(left, operator, right)], {"dp_epsilon": value, "dp_delta": 1e-13}
    else:
        constraints = [atom("dpEpsilon", "lteq", 1e6), atom(left, operator, right)]
        context = {"dp_epsilon": 1.0, "dp_delta": value}
    policy = {"permissions": [{"action": "federate", "constraints": constraints}]}
    decision = decide(policy, mode="federate", **context)
    expected = value is not None and REFERENCE[operator](value, right)
    [reason] = [r for r in decision.reasons if r.constraint.startswith(LABELS[left])]
    assert (decision.allowed, reason.satisfied) == (expected, expected)
    if value is None:
        assert reason.explanation == MISSING[left]


def test_every_operand_kind_is_covered_by_a_property_test() -> None:
    tested = {"purpose", "participantName", "region", "participant", "accessMode", *SET_OPERANDS}
    tested |= {"dateTime", "elapsedTime", "count", "dpEpsilon", "dpDelta"}
    assert tested == set(OPERAND_KINDS)


# logic: groups, rules, order ----------------------------------------------------------------

Tree = Any  # ("leaf", bool) | (op, [Tree, ...])

LEAVES: st.SearchStrategy[Tree] = st.booleans().map(lambda b: ("leaf", b))
TREES: st.SearchStrategy[Tree] = st.recursive(
    LEAVES,
    lambda children: st.tuples(
        st.sampled_from(["and", "or", "xone"]), st.lists(children, min_size=1, max_size=4)
    ),
    max_leaves=12,
)
# leaves that hold or fail for the context used below, of several operand kinds
TRUE_LEAVES = [
    atom("purpose", "eq", "research"),
    atom("count", "lt", 5),
    atom("participantGroup", "isAnyOf", ["partners", "x"]),
    atom("dateTime", "lt", "2030-01-01T00:00:00Z"),
]
FALSE_LEAVES = [
    atom("purpose", "eq", "marketing"),
    atom("count", "gteq", 5),
    atom("participantGroup", "isAllOf", ["partners", "x"]),
    atom("region", "eq", "EU"),  # the context gives no region: unsatisfied
]
CONTEXT = {"purpose": "research", "uses": 2, "groups": ["partners"]}


def constraint_of(tree: Tree, salt: int = 0) -> dict[str, Any]:
    if tree[0] == "leaf":
        pool = TRUE_LEAVES if tree[1] else FALSE_LEAVES
        return pool[salt % len(pool)]
    return {tree[0]: [constraint_of(child, salt + i + 1) for i, child in enumerate(tree[1])]}


def truth(tree: Tree) -> bool:
    if tree[0] == "leaf":
        return bool(tree[1])
    values = [truth(child) for child in tree[1]]
    return {"and": all(values), "or": any(values), "xone": sum(values) == 1}[tree[0]]


def preorder(tree: Tree) -> list[bool]:
    if tree[0] == "leaf":
        return [tree[1]]
    return [truth(tree)] + [v for child in tree[1] for v in preorder(child)]


@given(trees=st.lists(TREES, min_size=1, max_size=3))
def test_groups_follow_their_truth_tables(trees: list[Tree]) -> None:
    constraints = [constraint_of(t, i) for i, t in enumerate(trees)]
    decision = decide({"permissions": [{"action": "use", "constraints": constraints}]}, **CONTEXT)
    assert decision.allowed is all(truth(t) for t in trees)
    # one reason per node, group before its members, each with the right verdict
    assert [r.satisfied for r in decision.reasons] == [v for t in trees for v in preorder(t)]


@pytest.mark.parametrize("group", ["and", "or", "xone"])
@pytest.mark.parametrize("a", [True, False])
@pytest.mark.parametrize("b", [True, False])
@pytest.mark.parametrize("c", [True, False])
def test_three_member_truth_tables(group: str, a: bool, b: bool, c: bool) -> None:
    members = [TRUE_LEAVES[0] if x else FALSE_LEAVES[0] for x in (a, b, c)]
    decision = decide({"permissions": [{"action": "use", "constraints": [{group: members}]}]}, **CONTEXT)
    expected = {"and": a and b and c, "or": a or b or c, "xone": (a + b + c) == 1}[group]
    assert decision.allowed is expected
    assert decision.reasons[0].explanation.startswith(f"{a + b + c} of 3 hold")


@given(
    permission=TREES,
    prohibition=st.lists(TREES, max_size=2),
    granted_by=st.sampled_from(ACTIONS),
    forbidden=st.sampled_from(ACTIONS),
    mode=st.sampled_from(ACCESS_MODES),
)
def test_a_prohibition_that_applies_beats_any_permission(
    permission: Tree, prohibition: list[Tree], granted_by: str, forbidden: str, mode: str
) -> None:
    policy = {
        "permissions": [{"action": granted_by, "constraints": [constraint_of(permission)]}],
        "prohibitions": [{"action": forbidden, "constraints": [constraint_of(t, 7) for t in prohibition]}],
    }
    decision = decide(policy, mode=mode, **CONTEXT)
    permitted = granted_by in ("use", mode) and truth(permission)
    prohibited = forbidden in ("use", mode) and all(truth(t) for t in prohibition)
    assert decision.allowed is (permitted and not prohibited)
    if prohibited:
        assert decision.summary == f"denied: prohibitions[0] prohibits {mode}"
        assert decision.duties == []


DUTIES = st.sampled_from(
    [[], [{"action": "log"}], [{"action": "notify"}], [{"action": "log"}, {"action": "delete"}]]
)
PERMISSIONS = st.lists(
    st.tuples(st.sampled_from(ACTIONS), st.lists(TREES, max_size=2), DUTIES), min_size=1, max_size=4
)


@given(permissions=PERMISSIONS, data=st.data())
def test_the_order_of_permissions_does_not_matter(permissions: list[Any], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(permissions))
    mode = data.draw(st.sampled_from(ACCESS_MODES))

    def run(rules: list[Any]) -> Decision:
        policy = {
            "permissions": [
                {"action": a, "constraints": [constraint_of(t, i) for i, t in enumerate(trees)], "duties": d}
                for a, trees, d in rules
            ]
        }
        return decide(policy, mode=mode, **CONTEXT)

    first, second = run(permissions), run(shuffled)
    assert first.allowed is second.allowed
    assert {d.text for d in first.duties} == {d.text for d in second.duties}
    assert Counter((r.constraint, r.satisfied, r.explanation) for r in first.reasons) == Counter(
        (r.constraint, r.satisfied, r.explanation) for r in second.reasons
    )


# reasons, summaries and duties ----------------------------------------------------------------

EXAMPLE = {
    "permissions": [
        {
            "action": "use",
            "constraints": [
                atom("purpose", "isAnyOf", ["predictive-maintenance", "research"]),
                atom("participant", "eq", ADDRESSES[0]),
                {"or": [atom("region", "eq", "EU"), atom("participantGroup", "isAnyOf", ["partners"])]},
            ],
            "duties": [{"action": "log"}, {"action": "notify", "target": "https://p.example/usage"}],
        }
    ],
    "prohibitions": [{"action": "download"}],
}


def test_every_constraint_gets_a_reason_a_person_can_read() -> None:
    decision = decide(EXAMPLE, participant=ADDRESSES[1], purpose="marketing", groups=["partners"])
    assert not decision.allowed
    assert decision.summary == "denied: no permission for compute has all its constraints met"
    assert [(r.path, r.satisfied, r.explanation) for r in decision.reasons] == [
        (
            "permissions[0].constraints[0]",
            False,
            "purpose 'marketing' is not one of predictive-maintenance, research",
        ),
        ("permissions[0].constraints[1]", False, f"participant {ADDRESSES[1]} is not {ADDRESSES[0]}"),
        ("permissions[0].constraints[2]", True, "1 of 2 hold (at least one needed)"),
        ("permissions[0].constraints[2].or[0]", False, "no region was given"),
        ("permissions[0].constraints[2].or[1]", True, "groups (partners) include one of partners"),
    ]
    assert [r.depth for r in decision.reasons] == [0, 0, 0, 1, 1]
    assert {r.rule for r in decision.reasons} == {"permissions[0]"}
    assert decision.reasons[0].constraint == "purpose is one of predictive-maintenance, research"
    assert decision.duties == []


def test_access_comes_with_the_duties_of_the_granting_permission() -> None:
    decision = decide(EXAMPLE, participant=ADDRESSES[0], purpose="research", region="EU")
    assert decision.allowed
    assert decision.summary == "allowed: permissions[0] permits compute"
    assert [(d.action, d.target, d.text) for d in decision.duties] == [
        ("log", None, "Each computation is logged."),
        ("notify", "https://p.example/usage", "Each computation is reported to https://p.example/usage."),
    ]
    assert decision.duties[1].duty == {"action": "notify", "target": "https://p.example/usage"}


def test_a_blanket_prohibition_gets_a_reason_too() -> None:
    decision = decide(EXAMPLE, mode="download", participant=ADDRESSES[0], purpose="research", region="EU")
    assert not decision.allowed
    assert decision.summary == "denied: prohibitions[0] prohibits download"
    assert (decision.reasons[-1].path, decision.reasons[-1].constraint) == ("prohibitions[0]", "always")


def test_only_rules_covering_the_mode_are_evaluated() -> None:
    policy = {"permissions": [{"action": "download", "constraints": [atom("purpose", "eq", "research")]}]}
    decision = decide(policy, mode="compute", purpose="research")
    assert not decision.allowed
    assert decision.summary == "denied: no permission covers compute"
    assert decision.reasons == []
    assert decide(policy, mode="download", purpose="research").allowed


def test_duties_of_several_granting_permissions_are_merged_once() -> None:
    policy = {
        "permissions": [
            {"action": "use", "duties": [{"action": "log"}]},
            {"action": "compute", "duties": [{"action": "log"}, {"action": "notify"}]},
        ]
    }
    decision = decide(policy)
    assert decision.summary == "allowed: permissions[0], permissions[1] permit compute"
    assert sorted(d.action for d in decision.duties) == ["log", "notify"]


@pytest.mark.parametrize(
    ("constraint", "context", "explanation"),
    [
        (atom("purpose", "eq", "research"), {}, "no purpose was given"),
        (atom("participant", "eq", ADDRESSES[0]), {}, "no participant was given"),
        (atom("participantName", "eq", "ACME"), {}, "no participant name was given"),
        (atom("region", "isNoneOf", ["US"]), {}, "no region was given"),
        (atom("elapsedTime", "lt", "P1D"), {}, MISSING["elapsedTime"]),
        (atom("region", "isNoneOf", ["US"]), {"region": "EU"}, "region 'EU' is none of US"),
        (atom("count", "lt", 10), {"uses": 10}, "the use count (10) is not less than 10"),
        (atom("count", "lteq", 10), {"uses": 10}, "the use count (10) is at most 10"),
        (
            atom("dateTime", "lteq", "2026-01-01T00:00:00Z"),
            {},
            "the time (2026-06-01T12:00:00Z) is after 2026-01-01T00:00:00Z",
        ),
        (
            atom("elapsedTime", "lteq", "P30D"),
            {"agreed_at": T0 - timedelta(days=31, hours=2)},
            "the time since the agreement (31 days and 2 hours) is more than 30 days",
        ),
        (
            atom("participantGroup", "isAllOf", ["a", "b"]),
            {"groups": ["a"]},
            "groups (a) do not include all of a, b",
        ),
        (atom("participantGroup", "neq", "a"), {}, "groups (none) do not include a"),
        (atom("accessMode", "isAnyOf", ["download"]), {}, "access mode compute is not one of download"),
    ],
)
def test_explanations(constraint: dict[str, Any], context: dict[str, Any], explanation: str) -> None:
    assert one(constraint, **context).reasons[0].explanation == explanation


def test_elapsed_time_counts_calendar_months() -> None:
    agreed = datetime(2027, 1, 31, 9, tzinfo=UTC)
    within = atom("elapsedTime", "lteq", "P1M")
    assert one(within, agreed_at=agreed, now=datetime(2027, 2, 28, 9, tzinfo=UTC)).allowed
    assert not one(within, agreed_at=agreed, now=datetime(2027, 2, 28, 9, 1, tzinfo=UTC)).allowed


def test_timestamps_compare_as_instants_across_zones() -> None:
    before_new_year_utc = datetime(2027, 1, 1, 1, tzinfo=timezone(timedelta(hours=2)))  # 23:00Z
    assert one(atom("dateTime", "lt", "2027-01-01T00:00:00Z"), now=before_new_year_utc).allowed
    assert not one(atom("dateTime", "lt", "2027-01-01T02:00:00+03:00"), now=before_new_year_utc).allowed


def test_a_compiled_policy_is_reusable_and_its_decisions_serialise() -> None:
    compiled = compile_policy(parse_policy(EXAMPLE))
    yes = RequestContext(participant=ADDRESSES[0], purpose="research", mode="compute", groups=["partners"])
    no = RequestContext(participant=ADDRESSES[0], purpose="resale", mode="compute", groups=["partners"])
    assert [compiled.evaluate(c).allowed for c in (yes, no, yes)] == [True, False, True]
    body = json.loads(json.dumps(compiled.evaluate(no).as_dict()))
    assert body["allowed"] is False and body["reasons"][0]["satisfied"] is False


# the request context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({"mode": "stream"}, "mode"),
        ({"mode": "compute", "participant": "0x12"}, "participant"),
        ({"mode": "compute", "now": "2027-01-01T00:00:00"}, "now"),
        ({"mode": "compute", "agreed_at": "yesterday"}, "agreed_at"),
        ({"mode": "compute", "uses": -1}, "uses"),
        ({"mode": "compute", "groups": "partners"}, "groups"),
        ({"mode": "compute", "purpose": ""}, "purpose"),
        ({"mode": "compute", "who": "me"}, "who"),
        ({}, "mode"),
    ],
)
def test_bad_request_contexts_are_refused_with_the_field(context: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate(RequestContext, context, prefix="context")
    assert f"context.{path}" in [e.path for e in info.value.errors]


def test_the_context_normalises_addresses_and_defaults_now_to_utc() -> None:
    ctx = RequestContext(participant=ADDRESSES[1].lower(), mode="download")
    assert ctx.participant == ADDRESSES[1]
    assert ctx.now.tzinfo is not None and abs(ctx.now - datetime.now(UTC)) < timedelta(minutes=1)
    assert (ctx.uses, ctx.groups, ctx.agreed_at) == (0, [], None)


def test_could_grant_judges_only_who_asks() -> None:
    """The catalog's question: other constraints (purpose, time) count as unknown."""
    from marketplace.policy import expand
    from marketplace.policy.engine import could_grant

    me, other = ADDRESSES[0], ADDRESSES[1]
    who = ("participant", "participantName", "participantGroup")
    ctx = RequestContext(participant=me, mode="compute")

    def grantable(*constraints: dict[str, Any], prohibit: list[dict[str, Any]] | None = None) -> bool:
        doc: dict[str, Any] = {"permissions": [{"action": "use", "constraints": list(constraints)}]}
        if prohibit is not None:
            doc["prohibitions"] = [{"action": "use", "constraints": prohibit}]
        return could_grant(expand(parse_policy(doc)), ctx, who)

    purpose = atom("purpose", "eq", "research")
    assert grantable(purpose)  # unknown until negotiating: not ruled out
    assert grantable(atom("participant", "eq", me), purpose)
    assert not grantable(atom("participant", "eq", other), purpose)
    assert grantable({"or": [atom("participant", "eq", other), purpose]})
    assert not grantable({"xone": [atom("participant", "eq", me), atom("participant", "neq", other)]})
    assert grantable(purpose, prohibit=[purpose])  # a prohibition that only may apply does not hide
    assert not grantable(purpose, prohibit=[atom("participant", "eq", me)])
