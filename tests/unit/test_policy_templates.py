"""The named templates: what each expands to, what it allows and denies and why, in words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketplace.policy import (
    RequestContext,
    compile_policy,
    describe,
    expand,
    from_template,
    parse_policy,
)
from marketplace.policy.templates import TEMPLATES

A = "0x52908400098527886E0F7030069857D2E4169EE7"
B = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
C = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359"
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
START, END = "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"


def atom(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": operator, "rightOperand": right}


def use(*constraints: dict[str, Any], duties: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    permission: dict[str, Any] = {"action": "use", "constraints": list(constraints)}
    if duties:
        permission["duties"] = duties
    return {"permissions": [permission]}


# expansion: each template is exactly these rules ---------------------------------------------

EXPANSIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("provide-access", {}, use()),
    ("provide-access", {"purposes": ["research"]}, use(atom("purpose", "isAnyOf", ["research"]))),
    ("prohibit-access", {}, {"prohibitions": [{"action": "use"}]}),
    ("n-times-usage", {"count": 10}, use(atom("count", "lt", 10))),
    (
        "n-times-usage",
        {"count": 2, "purposes": ["a", "b"]},
        use(atom("purpose", "isAnyOf", ["a", "b"]), atom("count", "lt", 2)),
    ),
    ("duration-usage", {"duration": "P30D"}, use(atom("elapsedTime", "lteq", "P30D"))),
    (
        "usage-during-interval",
        {"start": START, "end": END},
        use(atom("dateTime", "gteq", START), atom("dateTime", "lteq", END)),
    ),
    (
        "usage-until-deletion",
        {"until": END},
        use(
            atom("dateTime", "lteq", END),
            duties=[{"action": "delete", "constraints": [atom("dateTime", "lteq", END)]}],
        ),
    ),
    ("usage-logging", {}, use(duties=[{"action": "log"}])),
    ("usage-notification", {}, use(duties=[{"action": "notify"}])),
    (
        "usage-notification",
        {"target": "https://p.example/n"},
        use(duties=[{"action": "notify", "target": "https://p.example/n"}]),
    ),
    ("connector-restricted-usage", {"participants": [A, B]}, use(atom("participant", "isAnyOf", [A, B]))),
]


@pytest.mark.parametrize(
    ("name", "params", "explicit"), EXPANSIONS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(EXPANSIONS)]
)
def test_a_template_expands_to_its_explicit_rules(
    name: str, params: dict[str, Any], explicit: dict[str, Any]
) -> None:
    expanded = expand(from_template(name, **params))
    assert not expanded.is_template
    assert expanded == parse_policy(explicit)


def test_every_template_has_an_expansion_case() -> None:
    assert {name for name, _, _ in EXPANSIONS} == set(TEMPLATES)


def test_expanding_explicit_rules_changes_nothing() -> None:
    explicit = parse_policy(use(atom("region", "eq", "EU")))
    assert expand(explicit) is explicit


CONTEXTS = st.builds(
    dict,
    participant=st.sampled_from([A, B, C, None]),
    purpose=st.sampled_from(["research", "marketing", None]),
    mode=st.sampled_from(["download", "compute", "federate"]),
    uses=st.integers(0, 12),
    now=st.integers(-400, 400).map(lambda d: NOW + timedelta(days=d)),
    agreed_at=st.sampled_from([None, NOW - timedelta(days=40), NOW - timedelta(days=3)]),
)


@given(case=st.sampled_from(EXPANSIONS), context=CONTEXTS)
def test_templates_and_their_explicit_rules_decide_alike(
    case: tuple[str, dict[str, Any], dict[str, Any]], context: dict[str, Any]
) -> None:
    name, params, explicit = case
    ctx = RequestContext(**context)
    by_template = compile_policy(from_template(name, **params)).evaluate(ctx)
    by_rules = compile_policy(parse_policy(explicit)).evaluate(ctx)
    assert by_template == by_rules


# each template: allowed and denied requests, with the reason ----------------------------------

CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool, str]] = [
    ("provide-access", {}, {"participant": C, "purpose": "anything"}, True, "the rule has no constraints"),
    (
        "provide-access",
        {"purposes": ["research"]},
        {"purpose": "research"},
        True,
        "purpose 'research' is one of research",
    ),
    (
        "provide-access",
        {"purposes": ["research"]},
        {"purpose": "marketing"},
        False,
        "purpose 'marketing' is not one of research",
    ),
    ("provide-access", {"purposes": ["research"]}, {}, False, "no purpose was given"),
    ("prohibit-access", {}, {"participant": A, "purpose": "research"}, False, "the rule has no constraints"),
    ("n-times-usage", {"count": 3}, {"uses": 2}, True, "the use count (2) is less than 3"),
    ("n-times-usage", {"count": 3}, {"uses": 3}, False, "the use count (3) is not less than 3"),
    (
        "duration-usage",
        {"duration": "P30D"},
        {"agreed_at": NOW - timedelta(days=10)},
        True,
        "the time since the agreement (10 days) is at most 30 days",
    ),
    (
        "duration-usage",
        {"duration": "P30D"},
        {"agreed_at": NOW - timedelta(days=30, minutes=1)},
        False,
        "(30 days and 1 minute) is more than 30 days",
    ),
    ("duration-usage", {"duration": "PT12H"}, {}, False, "no agreement time is known"),
    ("usage-during-interval", {"start": START, "end": END}, {}, True, "is at or after 2026-01-01T00:00:00Z"),
    (
        "usage-during-interval",
        {"start": START, "end": END},
        {"now": datetime(2025, 12, 31, 23, 59, tzinfo=UTC)},
        False,
        "the time (2025-12-31T23:59:00Z) is before 2026-01-01T00:00:00Z",
    ),
    (
        "usage-during-interval",
        {"start": START, "end": END},
        {"now": datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)},
        False,
        "is after 2027-01-01T00:00:00Z",
    ),
    ("usage-until-deletion", {"until": END}, {}, True, "the time (2026-06-01T12:00:00Z) is at or before"),
    (
        "usage-until-deletion",
        {"until": END},
        {"now": datetime(2027, 2, 1, tzinfo=UTC)},
        False,
        "the time (2027-02-01T00:00:00Z) is after 2027-01-01T00:00:00Z",
    ),
    ("usage-logging", {}, {}, True, "the rule has no constraints"),
    ("usage-logging", {"purposes": ["research"]}, {"purpose": "resale"}, False, "is not one of research"),
    ("usage-notification", {}, {}, True, "the rule has no constraints"),
    ("usage-notification", {"purposes": ["research"]}, {}, False, "no purpose was given"),
    (
        "connector-restricted-usage",
        {"participants": [A, B]},
        {"participant": B},
        True,
        f"participant {B} is one of",
    ),
    (
        "connector-restricted-usage",
        {"participants": [A, B]},
        {"participant": C},
        False,
        f"participant {C} is not one of {A}, {B}",
    ),
    ("connector-restricted-usage", {"participants": [A]}, {}, False, "no participant was given"),
]


@pytest.mark.parametrize(
    ("name", "params", "context", "allowed", "fragment"),
    CASES,
    ids=[f"{c[0]}-{'allow' if c[3] else 'deny'}-{i}" for i, c in enumerate(CASES)],
)
def test_template_decisions(
    name: str, params: dict[str, Any], context: dict[str, Any], allowed: bool, fragment: str
) -> None:
    context = {"mode": "compute", "now": NOW} | context
    decision = compile_policy(from_template(name, **params)).evaluate(RequestContext(**context))
    assert decision.allowed is allowed, decision.summary
    explanations = [r.explanation for r in decision.reasons]
    assert any(fragment in e for e in explanations), explanations


def test_every_template_is_decided_both_ways() -> None:
    allows = {c[0] for c in CASES if c[3]}
    denies = {c[0] for c in CASES if not c[3]}
    assert denies == set(TEMPLATES)
    assert allows == set(TEMPLATES) - {"prohibit-access"}


@pytest.mark.parametrize(
    ("name", "params", "duties"),
    [
        ("usage-logging", {}, [("log", None, "Each computation is logged.")]),
        ("usage-notification", {}, [("notify", None, "Each computation is reported to the provider.")]),
        (
            "usage-notification",
            {"target": "https://p.example/n"},
            [("notify", "https://p.example/n", "Each computation is reported to https://p.example/n.")],
        ),
        ("usage-until-deletion", {"until": END}, [("delete", None, f"It must be deleted by {END}.")]),
        ("n-times-usage", {"count": 1}, []),
    ],
)
def test_granted_access_carries_the_template_duties(
    name: str, params: dict[str, Any], duties: list[tuple[str, str | None, str]]
) -> None:
    decision = compile_policy(from_template(name, **params)).evaluate(RequestContext(mode="compute", now=NOW))
    assert decision.allowed
    assert [(d.action, d.target, d.text) for d in decision.duties] == duties


def test_n_times_usage_allows_exactly_n_uses() -> None:
    compiled = compile_policy(from_template("n-times-usage", count=3))
    allowed = [compiled.evaluate(RequestContext(mode="download", uses=n)).allowed for n in range(6)]
    assert allowed == [True, True, True, False, False, False]


# in words ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "sentences"),
    [
        ("provide-access", {}, ["Anyone may use it."]),
        (
            "provide-access",
            {"purposes": ["research", "teaching"]},
            ["Anyone may use it for research or teaching."],
        ),
        ("prohibit-access", {}, ["Nobody may use it."]),
        ("n-times-usage", {"count": 10}, ["Anyone may use it.", "It may be used at most 10 times."]),
        ("n-times-usage", {"count": 1}, ["Anyone may use it.", "It may be used at most 1 time."]),
        (
            "duration-usage",
            {"duration": "P30D"},
            ["Anyone may use it.", "It may be used for 30 days after the agreement."],
        ),
        (
            "usage-during-interval",
            {"start": START, "end": END},
            ["Anyone may use it.", f"It may be used from {START} until {END}."],
        ),
        (
            "usage-until-deletion",
            {"until": END},
            ["Anyone may use it.", f"It may be used until {END}.", f"It must be deleted by {END}."],
        ),
        ("usage-logging", {}, ["Anyone may use it.", "Each use is logged."]),
        ("usage-notification", {}, ["Anyone may use it.", "Each use is reported to the provider."]),
        (
            "connector-restricted-usage",
            {"participants": [A, B], "purposes": ["research"]},
            [f"Only {A} or {B} may use it for research."],
        ),
    ],
)
def test_templates_in_plain_sentences(name: str, params: dict[str, Any], sentences: list[str]) -> None:
    assert describe(from_template(name, **params)) == sentences


def test_template_summaries_say_what_they_do() -> None:
    assert TEMPLATES["n-times-usage"].summary.startswith("At most ``count`` uses")
    assert all(t.summary for t in TEMPLATES.values())
