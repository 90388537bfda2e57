"""The privacy constraint: a provider caps the differential-privacy budget of federated learning.

A provider writes ``{leftOperand: dpEpsilon, operator: lteq, rightOperand: 3}`` (and, if it
wants a delta other than :data:`DEFAULT_DP_DELTA`, ``dpDelta``) in a permission to
``federate``. Two moments read it:

* **negotiation** — the constraint holds when the request states a budget within the cap
  (``RequestContext.dp_epsilon`` / ``dp_delta``: what the federation says it will spend);
  a request that states none does not get the permission;
* **every round** — the provider's federation code calls :func:`privacy_cap` and stops
  contributing before its own privacy ledger would pass the cap.

So that a cap always means one thing, the language checks where it may stand: only in a
permission whose action is ``federate`` (on ``use``, it would deny every download that states
no budget), only where it must hold for every use (top level or inside ``and``, never under
``or``/``xone``), never in a prohibition or a duty; ``dpDelta`` only beside a ``dpEpsilon``
(a delta alone bounds nothing). A ``dpEpsilon`` without ``dpDelta`` gets ``dpDelta lteq
1e-5`` written out beside it, so the canonical policy, the explanation and the check all say
"ε ≤ 3 at δ ≤ 1e-5".
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from marketplace.policy.language import (
    AndGroup,
    Constraint,
    ConstraintNode,
    Permission,
    Policy,
    _fail,
    group_operator,
)
from marketplace.policy.templates import expand

if TYPE_CHECKING:
    from marketplace.policy.engine import RequestContext

DEFAULT_DP_DELTA = 1e-5
PRIVACY_OPERANDS = ("dpEpsilon", "dpDelta")

Location = tuple[str | int, ...]


def _privacy_atoms(
    nodes: list[ConstraintNode], loc: Location = ()
) -> list[tuple[Constraint, Location, bool]]:
    """Every dpEpsilon/dpDelta constraint with its location and whether it must hold for every
    use (every group above it is an ``and``)."""
    found: list[tuple[Constraint, Location, bool]] = []

    def walk(members: list[ConstraintNode], at: Location, always: bool) -> None:
        for index, node in enumerate(members):
            if isinstance(node, Constraint):
                if node.leftOperand in PRIVACY_OPERANDS:
                    found.append((node, (*at, index), always))
            else:
                operator = group_operator(node)
                walk(node.members, (*at, index, operator), always and operator == "and")

    walk(nodes, loc, True)
    return found


def refuse_privacy_operands(constraints: list[ConstraintNode], where: str) -> list[ConstraintNode]:
    """A prohibition's or a duty's constraints, refused if they name a privacy budget."""
    for atom, loc, _ in _privacy_atoms(constraints):
        _fail(
            (*loc, "leftOperand"),
            f"{atom.leftOperand} caps a permission to federate; it has no meaning in {where}",
            atom.leftOperand,
        )
    return constraints


def place_privacy_operands(action: str, constraints: list[ConstraintNode]) -> list[ConstraintNode]:
    """A permission's constraints with its privacy budget checked and its δ made explicit."""
    atoms = _privacy_atoms(constraints)
    for atom, loc, always in atoms:
        at, left = (*loc, "leftOperand"), atom.leftOperand
        if action != "federate":
            _fail(
                at, f"{left} caps federated learning: put it in a permission to federate, not {action}", left
            )
        if not always:
            _fail(at, f"{left} may not stand under or/xone: a privacy cap must hold for every use", left)
    lefts = [atom.leftOperand for atom, _, _ in atoms]
    if "dpDelta" in lefts and "dpEpsilon" not in lefts:
        _, loc, _ = atoms[lefts.index("dpDelta")]
        _fail(
            (*loc, "leftOperand"),
            "dpDelta needs a dpEpsilon in the same permission: δ alone bounds nothing",
            "dpDelta",
        )
    if "dpEpsilon" not in lefts or "dpDelta" in lefts:
        return constraints
    return _with_default_delta(constraints)


def _with_default_delta(nodes: list[ConstraintNode]) -> list[ConstraintNode]:
    """``nodes`` with ``dpDelta lteq 1e-5`` right after the first dpEpsilon (in its group)."""
    out: list[ConstraintNode] = []
    placed = False
    for node in nodes:
        out.append(node)
        if placed:
            continue
        if isinstance(node, Constraint) and node.leftOperand == "dpEpsilon":
            out.append(Constraint(leftOperand="dpDelta", operator="lteq", rightOperand=DEFAULT_DP_DELTA))
            placed = True
        elif isinstance(node, AndGroup) and _privacy_atoms(node.members):
            out[-1] = node.model_copy(update={"and_": _with_default_delta(node.members)})
            placed = True
    return out


def _bound(c: Constraint) -> float:
    """The largest value a constraint allows: ``lt 3`` allows the float just below 3."""
    value = float(c.rightOperand)  # type: ignore[arg-type]  # a privacy operand is a number
    return math.nextafter(value, 0.0) if c.operator == "lt" else value


def permission_cap(permission: Permission) -> tuple[float, float] | None:
    """The (ε, δ) cap one permission sets (the tightest of its constraints), or None."""
    atoms = [atom for atom, _, _ in _privacy_atoms(permission.constraints)]
    epsilons = [_bound(a) for a in atoms if a.leftOperand == "dpEpsilon"]
    if not epsilons:
        return None
    deltas = [_bound(a) for a in atoms if a.leftOperand == "dpDelta"]
    return min(epsilons), min(deltas, default=DEFAULT_DP_DELTA)


def privacy_cap(policy: Policy, context: RequestContext | None = None) -> tuple[float, float] | None:
    """The (ε cap, δ cap) a provider's federation code enforces every round, or None for no cap.

    With the agreement's ``context`` (who asked, for what, with which stated budget): the
    permissions to federate that grant it decide, and as any one of them suffices, the loosest
    applies (None if one sets no cap). Without a context, or when none grants it: the tightest
    cap any permission to federate sets, so a cap the provider wrote is never lost.
    """
    covering = [p for p in expand(policy).permissions if p.action in ("use", "federate")]
    caps = [(p, permission_cap(p)) for p in covering]
    if context is not None:
        from marketplace.policy.engine import compile_policy

        asked = context.model_copy(update={"mode": "federate"})
        granting = [cap for p, cap in caps if compile_policy(Policy(permissions=[p])).evaluate(asked).allowed]
        if granting:
            bounded = [cap for cap in granting if cap is not None]
            return max(bounded) if len(bounded) == len(granting) else None
    bounded = [cap for _, cap in caps if cap is not None]
    if not bounded:
        return None
    return min(e for e, _ in bounded), min(d for _, d in bounded)
