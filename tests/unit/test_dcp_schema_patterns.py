"""A trusted issuer's JSON Schema cannot hold the verifier with its regular expressions:
each match is time-limited, and so is one check in all; ordinary patterns keep their
meaning (``pattern``, ``patternProperties``, ``additionalProperties`` left to them)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connector.dcp.credential_schema import PATTERN_SECONDS, violation

HOSTILE = "^(a|a)*$"  # backtracks exponentially: seconds, then hours, as the text grows
SLOW_TEXT = "a" * 40 + "!"


def timed(schema: dict[str, Any], instance: Any) -> tuple[str | None, float]:
    started = time.monotonic()
    outcome = violation(schema, instance)
    return outcome, time.monotonic() - started


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
    outcome, took = timed(schema, instance)
    assert outcome is not None and "takes too long to match" in outcome, outcome
    assert took < PATTERN_SECONDS * 4, took


def test_many_slow_matches_stop_at_the_checks_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hundred matches, each well inside a (here generous) per-match limit, would take
    seconds: the check stops at its own limit (here 0.5 s)."""
    import connector.dcp.credential_schema as module

    monkeypatch.setattr(module, "PATTERN_SECONDS", 5.0)
    monkeypatch.setattr(module, "CHECK_SECONDS", 0.5)
    schema = {"type": "object", "properties": {f"p{i}": {"pattern": HOSTILE} for i in range(200)}}
    instance = {f"p{i}": "a" * 18 + "!" for i in range(200)}
    outcome, took = timed(schema, instance)
    assert outcome is not None and "takes too long" in outcome, outcome
    assert 0.4 < took < 1.5, took


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
