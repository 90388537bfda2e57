"""Usage-policy decisions per second, with a reason for every constraint.

A five-constraint policy (purpose isAnyOf, participant isAnyOf, a date-time window of two
constraints, count lt) is compiled once and evaluated over ``--contexts`` varied requests
(participants in and out of the list, purposes, instants in and out of the window, use
counts below and above the limit), in one process, in one run with two baselines:

* the engine on a ``provide-access`` policy (no constraints: the fixed cost of a decision),
* a plain Python function doing the same five comparisons, with no reasons at all.

Every engine decision is checked against the plain function before timing. Figures are
the median of ``--rounds`` passes over all contexts.

    .venv/bin/python bench/policy.py
    .venv/bin/python bench/policy.py --contexts 500 --rounds 3   # smoke run

Target: at least 50,000 decisions/s (one core of the 2-core build machine).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from marketplace.policy import RequestContext, compile_policy, from_template, parse_policy
from marketplace.policy.language import parse_timestamp

RATE_TARGET = 50_000.0

ALLOWED = [
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
]
OTHERS = ["0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb"]
PURPOSES = ["predictive-maintenance", "research", "quality-control"]
START, END = "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"
LIMIT = 10
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]

POLICY = {
    "permissions": [
        {
            "action": "use",
            "constraints": [
                {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": PURPOSES},
                {"leftOperand": "participant", "operator": "isAnyOf", "rightOperand": ALLOWED},
                {"leftOperand": "dateTime", "operator": "gteq", "rightOperand": START},
                {"leftOperand": "dateTime", "operator": "lt", "rightOperand": END},
                {"leftOperand": "count", "operator": "lt", "rightOperand": LIMIT},
            ],
        }
    ]
}


def contexts(n: int, seed: int) -> list[RequestContext]:
    rng = random.Random(seed)
    middle = parse_timestamp(START) + timedelta(days=182)
    out: list[RequestContext] = []
    for _ in range(n):
        moment = middle + timedelta(minutes=rng.randint(-400 * 1440, 400 * 1440))
        request = {
            "participant": rng.choice(ALLOWED + OTHERS),
            "purpose": rng.choice([*PURPOSES, "marketing", "resale"]),
            "mode": rng.choice(["download", "compute", "federate"]),
            "now": moment.astimezone(rng.choice(ZONES)).isoformat(),  # as a client sends it
            "uses": rng.randint(0, 2 * LIMIT),
            "groups": rng.sample(["partners", "gold", "research"], rng.randint(0, 2)),
        }
        out.append(RequestContext.model_validate(request))
    return out


def plain_function() -> Callable[[RequestContext], bool]:
    """The same five comparisons written by hand: what a decision costs with no engine."""
    purposes, allowed = frozenset(PURPOSES), frozenset(a.lower() for a in ALLOWED)
    start, end = parse_timestamp(START), parse_timestamp(END)

    def decide(ctx: RequestContext) -> bool:
        return (
            ctx.purpose in purposes
            and ctx.participant is not None
            and ctx.participant.lower() in allowed
            and start <= ctx.now < end
            and ctx.uses < LIMIT
        )

    return decide


def rate(decide: Callable[[RequestContext], Any], ctxs: Sequence[RequestContext], rounds: int) -> float:
    """Median decisions per second over ``rounds`` passes (after one warm-up pass)."""
    for ctx in ctxs:
        decide(ctx)
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for ctx in ctxs:
            decide(ctx)
        rates.append(len(ctxs) / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=4000, help="varied requests per pass")
    parser.add_argument("--rounds", type=int, default=15, help="timed passes over all requests")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    policy = parse_policy(POLICY)
    compiled = compile_policy(policy)
    t0 = time.perf_counter()
    for _ in range(100):
        compile_policy(policy)
    compile_us = (time.perf_counter() - t0) * 1e4
    baseline_policy = compile_policy(from_template("provide-access"))
    plain = plain_function()
    ctxs = contexts(args.contexts, args.seed)

    decisions = [compiled.evaluate(c) for c in ctxs]
    mismatches = sum(d.allowed != plain(c) for d, c in zip(decisions, ctxs, strict=True))
    if mismatches:
        raise SystemExit(f"the engine disagrees with the plain function on {mismatches} requests")
    assert all(len(d.reasons) == 5 for d in decisions)
    allowed = sum(d.allowed for d in decisions)

    engine = rate(compiled.evaluate, ctxs, args.rounds)
    trivial = rate(baseline_policy.evaluate, ctxs, args.rounds)
    hand = rate(plain, ctxs, args.rounds)

    print(f"policy: 5 constraints, compiled in {compile_us:.0f} µs (mean of 100 compiles)")
    denied = len(ctxs) - allowed
    print(
        f"requests: {len(ctxs)} varied, {allowed} allowed / {denied} denied; median of {args.rounds} rounds"
    )
    for label, value in (
        ("engine, five constraints, 5 reasons each", engine),
        ("engine, provide-access (no constraints)", trivial),
        ("plain Python function, no reasons", hand),
    ):
        print(f"  {label:<42}: {value:12,.0f} decisions/s  ({1e6 / value:.2f} µs)")
    print(f"ratio: engine / provide-access = {engine / trivial:.2f}; engine / plain = {engine / hand:.3f}")
    sample = next(d for d in decisions if not d.allowed)
    print(f"a denied decision: {sample.summary}")
    for reason in sample.reasons:
        print(f"  {'✓' if reason.satisfied else '✗'} {reason.path}: {reason.explanation}")
    ok = engine >= RATE_TARGET
    print(f"\ntargets: >= {RATE_TARGET:,.0f} decisions/s: {'met' if ok else 'NOT met'} ({engine:,.0f})")


if __name__ == "__main__":
    main()
