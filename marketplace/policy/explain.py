"""Policies and constraints in plain words, for people (the CLI, the web UI, decision reasons).

Two renderings live here: :func:`constraint_words` says what one constraint demands
("purpose is one of research, teaching"), and :func:`describe` turns a whole policy into
short sentences ("Anyone may use it for research or teaching.", "Each use is logged.").
The engine builds its per-constraint explanations from the same phrases, so the reason a
request was denied reads like the policy it was checked against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta

from marketplace.policy.language import (
    Constraint,
    ConstraintNode,
    Duration,
    Duty,
    Kind,
    LogicalGroup,
    Permission,
    Policy,
    Prohibition,
    group_operator,
)
from marketplace.policy.templates import expand

LABELS: dict[str, str] = {
    "purpose": "purpose",
    "participant": "participant",
    "participantName": "participant name",
    "participantGroup": "groups",
    "dateTime": "the time",
    "elapsedTime": "the time since the agreement",
    "count": "the use count",
    "region": "region",
    "accessMode": "access mode",
    "dpEpsilon": "the privacy budget ε",
    "dpDelta": "the privacy budget δ",
    "credential": "verified credentials",
    "credentialClaim": "verified credential claims",
}

MISSING: dict[str, str] = {
    "purpose": "no purpose was given",
    "participant": "no participant was given",
    "participantName": "no participant name was given",
    "participantGroup": "no groups were given",
    "dateTime": "no time was given",
    "elapsedTime": "no agreement time is known, so the time since the agreement is unknown",
    "count": "no use count was given",
    "region": "no region was given",
    "accessMode": "no access mode was given",
    "dpEpsilon": "no privacy budget ε was stated (federated learning without differential privacy)",
    "dpDelta": "no privacy budget δ was stated",
    "credential": "no verified credential was presented",
    "credentialClaim": "no verified credential was presented",
}

# (when it holds, when it does not) for each family of operand kinds and operator
_SCALAR = {
    "eq": ("is", "is not"),
    "neq": ("is not", "is"),
    "isAnyOf": ("is one of", "is not one of"),
    "isNoneOf": ("is none of", "is one of"),
}
_SET = {
    "eq": ("include", "do not include"),
    "neq": ("do not include", "include"),
    "isAnyOf": ("include one of", "include none of"),
    "isNoneOf": ("include none of", "include one of"),
    "isAllOf": ("include all of", "do not include all of"),
}
_TIME = {
    "lt": ("is before", "is not before"),
    "lteq": ("is at or before", "is after"),
    "gt": ("is after", "is not after"),
    "gteq": ("is at or after", "is before"),
}
_AMOUNT = {
    "eq": ("is", "is not"),
    "neq": ("is not", "is"),
    "lt": ("is less than", "is not less than"),
    "lteq": ("is at most", "is more than"),
    "gt": ("is more than", "is not more than"),
    "gteq": ("is at least", "is less than"),
}
PHRASES: dict[Kind, dict[str, tuple[str, str]]] = {
    Kind.TEXT: _SCALAR,
    Kind.ADDRESS: _SCALAR,
    Kind.MODE: _SCALAR,
    Kind.SET: _SET,
    Kind.TIME: _TIME,
    Kind.DURATION: _AMOUNT,
    Kind.COUNT: _AMOUNT,
    Kind.EPSILON: _AMOUNT,
    Kind.DELTA: _AMOUNT,
}

_VERB = {
    "use": "use it",
    "download": "download it",
    "compute": "run computations on it",
    "federate": "use it in federated learning",
}
_PASSIVE = {
    "use": "used",
    "download": "downloaded",
    "compute": "used for computations",
    "federate": "used in federated learning",
}
_GERUND = {
    "use": "Using",
    "download": "Downloading",
    "compute": "Running computations on",
    "federate": "Using in federated learning",
}
_NOUN = {"use": "use", "download": "download", "compute": "computation", "federate": "federated-learning use"}


def alternatives(items: Sequence[object], word: str = "or") -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    texts = [str(i) for i in items]
    if len(texts) <= 1:
        return "".join(texts)
    return f"{', '.join(texts[:-1])} {word} {texts[-1]}"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def duration_words(text: str) -> str:
    """``P1Y2M`` → "1 year and 2 months", ``PT12H`` → "12 hours"."""
    d = Duration.parse(text)
    parts = []
    if d.years:
        parts.append(_plural(d.years, "year"))
    if d.months:
        parts.append(_plural(d.months, "month"))
    if d.days:
        parts.append(_plural(d.days, "day"))
    seconds = d.seconds
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        parts.append(_plural(int(hours), "hour"))
    if minutes:
        parts.append(_plural(int(minutes), "minute"))
    if secs:
        parts.append(f"{secs.normalize():f} seconds" if secs != 1 else "1 second")
    return alternatives(parts, "and") or "no time"


def elapsed_words(elapsed: timedelta) -> str:
    """A time span to the minute: "3 days, 4 hours and 5 minutes"; negative spans get a minus."""
    sign = "-" if elapsed < timedelta(0) else ""
    total = int(abs(elapsed).total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [_plural(n, u) for n, u in ((days, "day"), (hours, "hour"), (minutes, "minute")) if n]
    if not parts:
        parts = [_plural(seconds, "second")]
    return sign + alternatives(parts, "and")


def number_words(value: float) -> str:
    """The shortest text that reads back as ``value``: 3, 2.5, 1e-5 (not 3.0 or 1e-05)."""
    if math.isinf(value):
        return "∞"
    mantissa, _, exponent = repr(float(value)).partition("e")
    mantissa = mantissa.removesuffix(".0")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def right_words(c: Constraint) -> str:
    """The right operand as a person reads it."""
    value = c.rightOperand
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if c.kind is Kind.DURATION:
        return duration_words(str(value))
    if c.kind in (Kind.EPSILON, Kind.DELTA):
        return number_words(float(value))
    return str(value)


def constraint_words(node: ConstraintNode) -> str:
    """What a constraint demands: "purpose is one of a, b"; groups join with and/or/exactly one."""
    if isinstance(node, Constraint):
        holds, _ = PHRASES[node.kind][node.operator]
        return f"{LABELS[node.leftOperand]} {holds} {right_words(node)}"
    return group_words(node)


def group_words(group: LogicalGroup) -> str:
    inner = [
        constraint_words(m) if isinstance(m, Constraint) else f"({constraint_words(m)})"
        for m in group.members
    ]
    op = group_operator(group)
    if op == "xone":
        return f"exactly one of: {'; '.join(inner)}"
    return f" {op} ".join(inner)


# whole policies ------------------------------------------------------------------------


def describe(policy: Policy) -> list[str]:
    """The policy in short plain sentences, templates expanded.

    >>> describe(Policy.model_validate({"template": "n-times-usage", "params": {"count": 10}}))
    ['Anyone may use it.', 'It may be used at most 10 times.']
    """
    rules = expand(policy)
    blanket = any(p.action == "use" and not p.constraints for p in rules.prohibitions)
    if blanket or not rules.permissions:
        return ["Nobody may use it."]
    sentences: list[str] = []
    for permission in rules.permissions:
        sentences.extend(_permission_sentences(permission))
    sentences.extend(_prohibition_sentence(p) for p in rules.prohibitions)
    return sentences


def _values(c: Constraint) -> list[str]:
    return [str(v) for v in c.rightOperand] if isinstance(c.rightOperand, list) else [str(c.rightOperand)]


def _subject(c: Constraint) -> str | None:
    """ "Only 0xAb…" when a constraint names who may act; None when it is about something else."""
    if c.operator not in ("eq", "isAnyOf"):
        if c.leftOperand == "participantGroup" and c.operator == "isAllOf":
            return f"Only members of all of {alternatives(_values(c), 'and')}"
        return None
    if c.leftOperand in ("participant", "participantName"):
        return f"Only {alternatives(_values(c))}"
    if c.leftOperand == "participantGroup":
        return f"Only members of {alternatives(_values(c))}"
    return None


def _purpose(c: Constraint) -> str | None:
    if c.leftOperand != "purpose":
        return None
    if c.operator in ("eq", "isAnyOf"):
        return f" for {alternatives(_values(c))}"
    return f" for any purpose except {alternatives(_values(c))}"


def _permission_sentences(permission: Permission) -> list[str]:
    subject, purpose, rest = "Anyone", "", []
    for node in permission.constraints:
        if isinstance(node, Constraint):
            who = _subject(node) if subject == "Anyone" else None
            if who is not None:
                subject = who
                continue
            why = _purpose(node) if not purpose else None
            if why is not None:
                purpose = why
                continue
        rest.append(node)
    sentences = [f"{subject} may {_VERB[permission.action]}{purpose}."]
    budget = [n for n in rest if isinstance(n, Constraint) and n.kind in (Kind.EPSILON, Kind.DELTA)]
    if budget:
        sentences.append(_privacy_sentence(budget))
        rest = [n for n in rest if not any(n is b for b in budget)]
    window = _window(rest, permission.action)
    if window is not None:
        sentence, rest = window
        sentences.append(sentence)
    sentences.extend(_condition_sentence(node, permission.action) for node in rest)
    sentences.extend(duty_sentence(duty, permission.action) for duty in permission.duties)
    return sentences


def _privacy_sentence(budget: list[Constraint]) -> str:
    """ "It may be used in federated learning only with differential privacy, ε ≤ 3 at δ ≤ 1e-5." """

    def bounds(kind: Kind, symbol: str) -> str:
        sign = {"lt": "<", "lteq": "≤"}
        return " and ".join(f"{symbol} {sign[c.operator]} {right_words(c)}" for c in budget if c.kind is kind)

    epsilon, delta = bounds(Kind.EPSILON, "ε"), bounds(Kind.DELTA, "δ")
    return f"It may be {_PASSIVE['federate']} only with differential privacy, {epsilon} at {delta}."


def _window(nodes: list[ConstraintNode], action: str) -> tuple[str, list[ConstraintNode]] | None:
    """One "from … until …" sentence for a lower and an upper bound on the time."""
    times = [n for n in nodes if isinstance(n, Constraint) and n.leftOperand == "dateTime"]
    starts = [c for c in times if c.operator in ("gt", "gteq")]
    ends = [c for c in times if c.operator in ("lt", "lteq")]
    if len(times) != 2 or len(starts) != 1 or len(ends) != 1:
        return None
    start, end = starts[0], ends[0]
    since = "after" if start.operator == "gt" else "from"
    until = "and before" if end.operator == "lt" else "until"
    sentence = f"It may be {_PASSIVE[action]} {since} {right_words(start)} {until} {right_words(end)}."
    return sentence, [n for n in nodes if n is not start and n is not end]


def _condition_sentence(node: ConstraintNode, action: str) -> str:
    done = f"It may be {_PASSIVE[action]}"
    if not isinstance(node, Constraint):
        return f"{done} only if {constraint_words(node)}."
    left, op, right = node.leftOperand, node.operator, right_words(node)
    if left == "count" and op in ("lt", "lteq") and isinstance(node.rightOperand, int):
        most = node.rightOperand if op == "lt" else node.rightOperand + 1
        return f"{done} at most {_plural(most, 'time')}." if most else f"{done} no more."
    if left == "dateTime":
        return f"{done} {dict(lt='before', lteq='until', gt='after', gteq='from')[op]} {right}."
    if left == "elapsedTime" and op in ("lt", "lteq"):
        return f"{done} for {right} after the agreement."
    if left == "elapsedTime":
        return f"{done} only once {right} have passed since the agreement."
    if left == "region" and op in ("eq", "isAnyOf"):
        return f"{done} only in region {alternatives(_values(node))}."
    if left == "region":
        return f"{done} only outside region {alternatives(_values(node))}."
    if left == "accessMode" and op in ("eq", "isAnyOf"):
        return f"{done} only for {alternatives(_values(node))} access."
    return f"{done} only if {constraint_words(node)}."


def duty_sentence(duty: Duty, action: str = "use") -> str:
    """A duty in words: "Each use is logged.", "It must be deleted by 2027-01-01T00:00:00Z."."""
    noun = _NOUN[action]
    when = f" when {' and '.join(constraint_words(c) for c in duty.constraints)}" if duty.constraints else ""
    if duty.action == "log":
        return f"Each {noun} is logged{when}."
    if duty.action == "notify":
        return f"Each {noun} is reported to {duty.target or 'the provider'}{when}."
    return _deletion_sentence(duty)


def _deletion_sentence(duty: Duty) -> str:
    if not duty.constraints:
        return "It must be deleted after use."
    if len(duty.constraints) == 1 and isinstance(c := duty.constraints[0], Constraint):
        if c.leftOperand == "dateTime" and c.operator in ("lt", "lteq"):
            return f"It must be deleted by {right_words(c)}."
        if c.leftOperand == "elapsedTime" and c.operator in ("lt", "lteq"):
            return f"It must be deleted within {right_words(c)} of the agreement."
    return f"It must be deleted when {' and '.join(constraint_words(c) for c in duty.constraints)}."


def _prohibition_sentence(prohibition: Prohibition) -> str:
    words = " and ".join(constraint_words(c) for c in prohibition.constraints)
    when = f" when {words}" if words else ""
    return f"{_GERUND[prohibition.action]} it is prohibited{when}."
