"""The negotiation's states, its legal moves, and which event makes which move on each side.

Both roles walk the same Dataspace Protocol states (a :class:`kernel.lifecycle.Lifecycle`
each, so a move the protocol does not have is refused the same way as a job's or a
federation's); what differs is who makes a move: the provider offers, agrees and
finalizes, the consumer accepts and verifies, and each records the other's move when its
message arrives. :data:`TRANSITIONS` names those events per role; :func:`next_state`
resolves one against the role's lifecycle. Either side may terminate until a final state.
The log of moves is the ``NegotiationEvent`` table, with each move's message and signer.
"""

from __future__ import annotations

from kernel import lifecycle
from kernel.lifecycle import Lifecycle

REQUESTED = "REQUESTED"
TERMINATED = "TERMINATED"
_MOVES = {
    REQUESTED: ("OFFERED", "AGREED", TERMINATED),
    "OFFERED": ("ACCEPTED", REQUESTED, TERMINATED),  # REQUESTED: the consumer asks again (counter-request)
    "ACCEPTED": ("AGREED", TERMINATED),
    "AGREED": ("VERIFIED", TERMINATED),
    "VERIFIED": ("FINALIZED", TERMINATED),
    "FINALIZED": (),
    TERMINATED: (),
}
CONSUMER = Lifecycle.of("consumer's negotiation", _MOVES, initial=REQUESTED)
PROVIDER = Lifecycle.of("provider's negotiation", _MOVES, initial=REQUESTED)
LIFECYCLES = {"consumer": CONSUMER, "provider": PROVIDER}
FINAL = tuple(sorted(CONSUMER.final | PROVIDER.final))  # ("FINALIZED", "TERMINATED")

# (role, state now, what happens) -> state next
TRANSITIONS: dict[tuple[str, str | None, str], str] = {
    ("provider", None, "request"): REQUESTED,
    ("provider", "REQUESTED", "offer"): "OFFERED",
    ("provider", "REQUESTED", "agree"): "AGREED",
    ("provider", "OFFERED", "requested"): REQUESTED,
    ("provider", "OFFERED", "accepted"): "ACCEPTED",
    ("provider", "ACCEPTED", "agree"): "AGREED",
    ("provider", "AGREED", "verified"): "VERIFIED",
    ("provider", "VERIFIED", "finalize"): "FINALIZED",
    ("consumer", None, "request"): REQUESTED,
    ("consumer", "REQUESTED", "offered"): "OFFERED",
    ("consumer", "OFFERED", "accept"): "ACCEPTED",
    ("consumer", "OFFERED", "request"): REQUESTED,
    ("consumer", "REQUESTED", "agreed"): "AGREED",
    ("consumer", "ACCEPTED", "agreed"): "AGREED",
    ("consumer", "AGREED", "verify"): "VERIFIED",
    ("consumer", "VERIFIED", "finalized"): "FINALIZED",
}


class IllegalTransition(lifecycle.IllegalTransition):
    """The lifecycle's refusal, titled for a peer's message (same problem type and status)."""

    title = "The message does not fit the negotiation's state"


def next_state(role: str, state: str | None, event: str) -> str:
    """The state ``event`` moves a ``role``'s negotiation in ``state`` (``None``: none yet) to,
    or :class:`IllegalTransition`."""
    if event == "terminate":
        if state in FINAL:
            raise IllegalTransition(f"the negotiation is already {state}")
        target = TERMINATED
    else:
        found = TRANSITIONS.get((role, state, event))
        if found is None:
            raise IllegalTransition(f"'{event}' is not allowed for a {role} in state {state}")
        target = found
    LIFECYCLES[role].check(state, target)
    return target
