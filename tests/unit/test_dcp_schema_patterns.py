"""A trusted issuer's JSON Schema cannot hold the verifier with its regular expressions:
each match is time-limited, and so is one check in all; ordinary patterns keep their
meaning (``pattern``, ``patternProperties``, ``additionalProperties`` left to them)."""

from __future__ import annotations

from typing import Any

import pytest

from connector.dcp.credential_schema import violation

HOSTILE = "^(a|a)*$"  # backtracks exponentially: seconds, then hours, as the text grows
SLOW_TEXT = "a" * 40 + "!"


@pytest.mark.parametrize(
    ("schema", "instance"),
    [
        ({"type": "object", "properties": {"id": {"type": "string", "pattern": HOSTILE}}}, {"id": SLOW_TEXT}),
        ({"type": "object", "patternProperties": {HOSTILE: {"type": "string"}}}, {SLOW_TEXT: "x"}),
        (
            {"type": "object", "patternProperties": {HOSTILE: {}}, "additionalProperties": False},
            {SLOW_TEXT: "x"},
        ),
    ],
    ids=["pattern", "patternProperties", "additionalProperties"],
)
def test_a_hostile_pattern_refuses_within_its_limit(schema: dict[str, Any], instance: Any) -> None:
    """Unlimited, the match would not end in this test's lifetime; the refusal says the
    per-match limit stopped it (how long that takes is the limit's, not measured here)."""
    outcome = violation(schema, instance)
    assert outcome is not None and "takes too long to match" in outcome, outcome


def test_many_slow_matches_stop_at_the_checks_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hundred matches, each well inside a (here generous, 5 s) per-match limit, would take
    seconds: only the check's own limit (here 0.5 s) can refuse them."""
    import connector.dcp.credential_schema as module

    monkeypatch.setattr(module, "PATTERN_SECONDS", 5.0)
    monkeypatch.setattr(module, "CHECK_SECONDS", 0.5)
    schema = {"type": "object", "properties": {f"p{i}": {"pattern": HOSTILE} for i in range(200)}}
    instance = {f"p{i}": "a" * 18 + "!" for i in range(200)}
    outcome = violation(schema, instance)
    assert outcome is not None and "takes too long" in outcome, outcome  # no match reaches 5 s


@pytest.mark.parametrize(
    ("schema", "instance", "expected"),
    [
        ({"type": "string", "pattern": "^M[a-z]+$"}, "MEMBERSHIP", "does not match"),
        ({"type": "string", "pattern": "^m[a-z]+$"}, "membership", None),
        ({"type": "string", "pattern": "ship"}, "membership", None),  # search, not match
        ({"patternProperties": {"^x-": {"type": "integer"}}}, {"x-level": "high"}, "is not of type"),
        ({"patternProperties": {"^x-": {"type": "integer"}}}, {"x-level": 3, "other": "s"}, None),
        (
            {"properties": {"id": {}}, "patternProperties": {"^x-": {}}, "additionalProperties": False},
            {"id": 1, "x-a": 2, "extra": 3},
            "additional properties are not allowed ('extra')",
        ),
        (
            {"properties": {"id": {}}, "patternProperties": {"^x-": {}}, "additionalProperties": False},
            {"id": 1, "x-a": 2},
            None,
        ),
        ({"additionalProperties": {"type": "string"}}, {"a": "s", "b": 1}, "is not of type"),
        ({"type": "string", "pattern": "(unclosed"}, "x", "not valid JSON Schema"),
    ],
)
def test_ordinary_patterns_keep_their_meaning(
    schema: dict[str, Any], instance: Any, expected: str | None
) -> None:
    outcome = violation(schema, instance)
    if expected is None:
        assert outcome is None, outcome
    else:
        assert outcome is not None and expected in outcome, outcome
