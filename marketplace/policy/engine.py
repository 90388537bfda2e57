"""Deciding a request against a policy, with the reason for every constraint.

:func:`compile_policy` expands templates and turns each constraint into a closure with its
right operand already parsed (timestamps, durations, address sets), grouped by access mode,
so :meth:`CompiledPolicy.evaluate` does only comparisons. Compile once per policy and keep
the result; evaluation is pure and safe to share between threads.

The decision: allowed iff some permission whose action covers the request's mode has all
its constraints met, and no prohibition covering the mode applies (all its constraints
hold; none means always). Every constraint of every rule covering the mode is evaluated,
never short-circuited, so a person can see each reason, in the order the policy lists them.
"""

from __future__ import annotations

import operator as op
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from operator import attrgetter
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from marketplace.policy.explain import (
    LABELS,
    MISSING,
    PHRASES,
    constraint_words,
    describe,
    duty_sentence,
    number_words,
)
from marketplace.policy.explain import elapsed_words as _elapsed_words
from marketplace.policy.language import (
    MAX_LIST,
    Address,
    Constraint,
    ConstraintNode,
    Duration,
    Duty,
    Kind,
    LogicalGroup,
    Policy,
    Text,
    format_timestamp,
    group_operator,
    parse_timestamp,
    utc_now,
)
from marketplace.policy.templates import expand
from marketplace.schemas import ACCESS_MODES, AccessMode


def _in_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


# Instants are kept in UTC: explanations then read alike whatever zone a client used, and
# pydantic's own tzinfo (what it gives parsed strings) makes every comparison 4x slower.
InUtc = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class RequestContext(BaseModel):
    """Who asks, for what, and where things stand: everything a constraint can look at.

    A value left out makes every constraint on it unsatisfied, with that as the reason.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    participant: Address | None = Field(default=None, description="the requester's address")
    participant_name: Text | None = None
    groups: list[Text] = Field(
        default_factory=list, max_length=MAX_LIST, description="the requester's groups"
    )
    purpose: Text | None = None
    mode: AccessMode = Field(description="the access mode asked for")
    now: InUtc = Field(default_factory=utc_now)
    agreed_at: InUtc | None = Field(default=None, description="when the agreement was signed")
    uses: int = Field(default=0, ge=0, description="uses of the agreement so far")
    region: Text | None = None
    dp_epsilon: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="federate: the privacy budget ε the federation states it will spend",
    )
    dp_delta: float | None = Field(
        default=None, gt=0, lt=1, allow_inf_nan=False, description="federate: the δ of that budget"
    )
    credentials: list[Text] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="the types of the requester's verified credentials (from issuers this node trusts)",
    )
    credential_claims: list[Text] = Field(
        default_factory=list, max_length=MAX_LIST, description='their claims as "Type.claim=value"'
    )


@dataclass(slots=True)
class Reason:
    """One constraint, evaluated: where it sits, what it demands, whether it held and why.

    Read-only by convention: not frozen, because a frozen dataclass costs four times as
    much to create and a decision creates one per constraint.
    """

    rule: str
    path: str
    constraint: str
    satisfied: bool
    explanation: str
    depth: int = 0


@dataclass(frozen=True, slots=True)
class DutyNote:
    """A duty the requester takes on with the permission that granted access."""

    rule: str
    action: str
    target: str | None
    text: str
    duty: dict[str, Any]


@dataclass(slots=True)
class Decision:
    allowed: bool
    summary: str
    reasons: list[Reason]
    duties: list[DutyNote]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Check = Callable[[RequestContext, list[Reason]], bool]
Test = Callable[[Any], bool]

_ORDER: dict[str, Callable[[Any, Any], bool]] = {"lt": op.lt, "lteq": op.le, "gt": op.gt, "gteq": op.ge}
_GETTERS: dict[str, Callable[[RequestContext], Any]] = {
    "purpose": attrgetter("purpose"),
    "participant": attrgetter("participant"),
    "participantName": attrgetter("participant_name"),
    "participantGroup": attrgetter("groups"),
    "dateTime": attrgetter("now"),
    "count": attrgetter("uses"),
    "region": attrgetter("region"),
    "accessMode": attrgetter("mode"),
    "dpEpsilon": attrgetter("dp_epsilon"),
    "dpDelta": attrgetter("dp_delta"),
    "credential": attrgetter("credentials"),
    "credentialClaim": attrgetter("credential_claims"),
}


def _scalar_test(operator: str, right: Any, fold: Callable[[str], str] | None) -> Test:
    if operator in ("isAnyOf", "isNoneOf"):
        members = frozenset(fold(v) for v in right) if fold else frozenset(right)
        if fold:
            return (
                (lambda v: fold(v) in members)
                if operator == "isAnyOf"
                else (lambda v: fold(v) not in members)
            )
        return members.__contains__ if operator == "isAnyOf" else (lambda v: v not in members)
    target = fold(right) if fold else right
    if fold:
        return (lambda v: fold(v) == target) if operator == "eq" else (lambda v: fold(v) != target)
    return (lambda v: v == target) if operator == "eq" else (lambda v: v != target)


def _set_test(operator: str, right: Any) -> Test:
    if operator == "eq":
        return lambda groups: right in groups
    if operator == "neq":
        return lambda groups: right not in groups
    members = frozenset(right)
    if operator == "isAnyOf":
        return lambda groups: not members.isdisjoint(groups)
    if operator == "isNoneOf":
        return members.isdisjoint
    return members.issubset  # isAllOf: the request's groups contain every listed one


def _test(c: Constraint) -> Test:
    kind, operator, right = c.kind, c.operator, c.rightOperand
    if kind is Kind.SET:
        return _set_test(operator, right)
    if kind is Kind.ADDRESS:
        return _scalar_test(operator, right, str.lower)
    if kind in (Kind.TEXT, Kind.MODE):
        return _scalar_test(operator, right, None)
    bound = parse_timestamp(right) if kind is Kind.TIME else right
    compare = {"eq": op.eq, "neq": op.ne, **_ORDER}[operator]
    return lambda v: compare(v, bound)


_last_instant: tuple[datetime | None, str] = (None, "")


def _instant(moment: datetime) -> str:
    """``(2026-06-01T12:00:00Z)``; remembers the last one, as a request's time is shown by
    each of its time constraints and ``isoformat`` costs as much as the comparison itself.

    The cache is one tuple swapped atomically and holds the instant itself, so its identity
    cannot be reused by another object while cached (safe across threads).
    """
    global _last_instant
    last = _last_instant
    if last[0] is moment:
        return last[1]
    text = f"({format_timestamp(moment)})"
    _last_instant = (moment, text)
    return text


def _groups(groups: list[str]) -> str:
    return f"({', '.join(groups) or 'none'})"


_SHOW: dict[Kind, Callable[[Any], str]] = {
    Kind.TEXT: lambda text: f"'{text}'",
    Kind.ADDRESS: str,
    Kind.MODE: str,
    Kind.SET: _groups,
    Kind.TIME: _instant,
    Kind.COUNT: lambda count: f"({count})",
    Kind.EPSILON: lambda budget: f"({number_words(budget)})",
    Kind.DELTA: lambda budget: f"({number_words(budget)})",
}


def _compile_atomic(c: Constraint, rule: str, path: str, depth: int) -> Check:
    words = constraint_words(c)
    holds, fails = PHRASES[c.kind][c.operator]
    right = words.removeprefix(f"{LABELS[c.leftOperand]} {holds} ")
    label, missing = LABELS[c.leftOperand], MISSING[c.leftOperand]
    if_held, if_failed = f" {holds} {right}", f" {fails} {right}"

    if c.kind is Kind.DURATION:
        # elapsed OP duration  <=>  now OP (agreed_at + duration): exact for calendar months too
        duration, compare = Duration.parse(c.rightOperand), _ORDER[c.operator]

        def check_elapsed(ctx: RequestContext, out: list[Reason]) -> bool:
            agreed = ctx.agreed_at
            if agreed is None:
                out.append(Reason(rule, path, words, False, missing, depth))
                return False
            ok = compare(ctx.now, duration.after(agreed))
            elapsed = _elapsed_words(ctx.now - agreed)
            out.append(
                Reason(rule, path, words, ok, f"{label} ({elapsed}){if_held if ok else if_failed}", depth)
            )
            return ok

        return check_elapsed

    get, test, show = _GETTERS[c.leftOperand], _test(c), _SHOW[c.kind]

    def check(ctx: RequestContext, out: list[Reason]) -> bool:
        value = get(ctx)
        if value is None:
            out.append(Reason(rule, path, words, False, missing, depth))
            return False
        ok = test(value)
        out.append(
            Reason(rule, path, words, ok, f"{label} {show(value)}{if_held if ok else if_failed}", depth)
        )
        return ok

    return check


_QUANTIFIER = {"and": "all", "or": "at least one", "xone": "exactly one"}


def _compile_node(node: ConstraintNode, rule: str, path: str, depth: int) -> Check:
    if isinstance(node, Constraint):
        return _compile_atomic(node, rule, path, depth)
    kind = group_operator(node)
    members = tuple(
        _compile_node(m, rule, f"{path}.{kind}[{i}]", depth + 1) for i, m in enumerate(node.members)
    )
    words, need, total = constraint_words(node), _QUANTIFIER[kind], len(members)

    def check_group(ctx: RequestContext, out: list[Reason]) -> bool:
        inner: list[Reason] = []  # the group's own reason goes before its members'
        held = sum([m(ctx, inner) for m in members])
        ok = held == total if kind == "and" else held >= 1 if kind == "or" else held == 1
        out.append(Reason(rule, path, words, ok, f"{held} of {total} hold ({need} needed)", depth))
        out.extend(inner)
        return ok

    return check_group


@dataclass(frozen=True, slots=True)
class _Rule:
    path: str
    action: str
    checks: tuple[Check, ...]
    always: bool = False  # no constraints: the rule always applies, and says so
    duties: tuple[Duty, ...] = ()
    notes: tuple[DutyNote, ...] = ()  # the duties in words, for one access mode

    def covers(self, mode: str) -> bool:
        return self.action in ("use", mode)

    def holds(self, ctx: RequestContext, out: list[Reason]) -> bool:
        ok = True
        for check in self.checks:
            if not check(ctx, out):
                ok = False
        if self.always:
            out.append(Reason(self.path, self.path, "always", True, "the rule has no constraints"))
        return ok

    def for_mode(self, mode: str) -> _Rule:
        """This rule with its duties worded for ``mode`` ("Each download is logged.").

        Worded by the request's mode rather than the rule's action, so two permissions
        granting one request carry identical notes for the same duty and merge.
        """
        notes = tuple(
            DutyNote(
                self.path,
                d.action,
                d.target,
                duty_sentence(d, mode),
                d.model_dump(mode="json", exclude_defaults=True),
            )
            for d in self.duties
        )
        return replace(self, notes=notes)


def _compile_rule(
    kind: str, index: int, action: str, constraints: list[ConstraintNode], duties: list[Duty] | None = None
) -> _Rule:
    path = f"{kind}[{index}]"
    checks = tuple(_compile_node(c, path, f"{path}.constraints[{i}]", 0) for i, c in enumerate(constraints))
    return _Rule(path, action, checks, not checks, tuple(duties or ()))


class CompiledPolicy:
    """A policy ready to answer requests quickly (see :func:`compile_policy`)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.explicit = expand(policy)
        permissions = [
            _compile_rule("permissions", i, p.action, p.constraints, p.duties)
            for i, p in enumerate(self.explicit.permissions)
        ]
        prohibitions = [
            _compile_rule("prohibitions", i, p.action, p.constraints)
            for i, p in enumerate(self.explicit.prohibitions)
        ]
        self._by_mode: dict[str, tuple[tuple[_Rule, ...], tuple[_Rule, ...]]] = {
            mode: (
                tuple(r.for_mode(mode) for r in permissions if r.covers(mode)),
                tuple(r for r in prohibitions if r.covers(mode)),
            )
            for mode in ACCESS_MODES
        }

    def evaluate(self, ctx: RequestContext) -> Decision:
        """Allow or deny ``ctx``, with a reason for each constraint of each rule covering its mode."""
        permissions, prohibitions = self._by_mode[ctx.mode]
        reasons: list[Reason] = []
        granted = [r for r in permissions if r.holds(ctx, reasons)]
        applied = [r for r in prohibitions if r.holds(ctx, reasons)]
        mode = ctx.mode
        if applied:
            paths = ", ".join(r.path for r in applied)
            return Decision(
                False, f"denied: {paths} prohibit{'s' if len(applied) == 1 else ''} {mode}", reasons, []
            )
        if not permissions:
            return Decision(False, f"denied: no permission covers {mode}", reasons, [])
        if not granted:
            return Decision(
                False, f"denied: no permission for {mode} has all its constraints met", reasons, []
            )
        paths = ", ".join(r.path for r in granted)
        summary = f"allowed: {paths} permit{'s' if len(granted) == 1 else ''} {mode}"
        # the duties of every granting permission: which one the requester "uses" is not
        # observable, so taking the union keeps the outcome independent of rule order
        duties = list({(n.action, n.target, n.text): n for r in granted for n in r.notes}.values())
        return Decision(True, summary, reasons, duties)


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Expand and precompile ``policy`` for fast, repeated evaluation."""
    return CompiledPolicy(policy)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A decision with the policy in plain sentences: what the API and ``agora policy explain`` show."""

    allowed: bool
    summary: str
    reasons: list[Reason]
    duties: list[DutyNote]
    sentences: list[str]
    policy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(policy: Policy | CompiledPolicy, ctx: RequestContext) -> Evaluation:
    """Decide ``ctx`` and describe the policy (its explicit rules are returned too)."""
    compiled = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
    decision = compiled.evaluate(ctx)
    return Evaluation(
        allowed=decision.allowed,
        summary=decision.summary,
        reasons=decision.reasons,
        duties=decision.duties,
        sentences=describe(compiled.policy),
        policy=compiled.explicit.to_data(),
    )


def could_grant(policy: Policy, ctx: RequestContext, decided_by: tuple[str, ...]) -> bool:
    """Could some use be granted, judging only the constraints on ``decided_by`` operands
    (e.g. who asks), the others counting as unknown? A permission not ruled out and no
    prohibition of ``use`` that certainly applies: three-valued logic over and/or/xone."""

    def known(node: ConstraintNode) -> bool | None:
        if not isinstance(node, LogicalGroup):
            if node.leftOperand not in decided_by:
                return None
            value = _GETTERS[node.leftOperand](ctx)
            return False if value is None else bool(_test(node)(value))
        results = [known(m) for m in node.members]
        operator = group_operator(node)
        if operator == "and":
            return all_known(results)
        if operator == "or":
            return True if True in results else (False if all(r is False for r in results) else None)
        trues = results.count(True)
        if trues > 1:
            return False
        return None if None in results else trues == 1

    def all_known(results: list[bool | None]) -> bool | None:
        return False if False in results else (True if all(r is True for r in results) else None)

    def conjunction(constraints: Any) -> bool | None:
        return all_known([known(c) for c in constraints])

    permitted = any(conjunction(p.constraints) is not False for p in policy.permissions)
    banned = any(p.action == "use" and conjunction(p.constraints) is True for p in policy.prohibitions)
    return permitted and not banned
