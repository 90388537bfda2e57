"""A provider's privacy ledger for one federation: the DP events of every round it contributed.

The ledger is the provider node's own record, kept with the federation's state and put into
the round records: which events each contributed round spent, and the epsilon they add up to
at a given delta. Events are ``dp_accounting`` events; on disk they are plain JSON
(``{"type": "gaussian", "noise_multiplier": 0.5}`` …), read back strictly, so a damaged or
edited record is refused rather than silently under-counted.

Only rounds the provider actually contributed are recorded: a coordinator that samples clients
per round could claim amplification by sampling, but the provider cannot check its sampling,
so none is assumed.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from kernel.errors import InvalidInput
from kernel.limits import JSON, check_json


class _QuietOrders(logging.Filter):
    """Drops the RDP accountant's warning that one fractional order did not converge: the
    accountant leaves that order out, which can only raise the epsilon it reports (safe),
    and a node checking a cap every round would otherwise log it every round."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("_compute_log_a_frac failed to converge")


logging.getLogger("absl").addFilter(_QuietOrders())

Accountant = Literal["rdp", "pld"]
LEDGER_VERSION = 1
MAX_ROUNDS = 10_000
MAX_COUNT = 10_000_000
MAX_DEPTH = 6
LEDGER_JSON = replace(JSON, max_tokens=60 * MAX_ROUNDS)  # a round is about 30 tokens


# events as JSON ------------------------------------------------------------------------------


def event_data(event: dp_event.DpEvent) -> dict[str, Any]:
    """The JSON form of one of the events a round can spend (others are refused)."""
    if isinstance(event, dp_event.GaussianDpEvent):
        return {"type": "gaussian", "noise_multiplier": float(event.noise_multiplier)}
    if isinstance(event, dp_event.PoissonSampledDpEvent):
        return {
            "type": "poisson_sampled",
            "sampling_probability": float(event.sampling_probability),
            "event": event_data(event.event),
        }
    if isinstance(event, dp_event.SelfComposedDpEvent):
        return {"type": "self_composed", "count": int(event.count), "event": event_data(event.event)}
    if isinstance(event, dp_event.ComposedDpEvent):
        return {"type": "composed", "events": [event_data(e) for e in event.events]}
    if isinstance(event, dp_event.NonPrivateDpEvent):
        return {"type": "non_private"}
    raise ValueError(f"the privacy ledger does not record {type(event).__name__}")


def _bad(path: str, message: str) -> InvalidInput:
    return InvalidInput(f"invalid privacy ledger: {path}: {message}")


def _number(data: Mapping[str, Any], key: str, path: str, low: float, high: float) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{path}.{key}", f"expected a finite number, got {value!r}")
    if not low < value <= high:
        raise _bad(f"{path}.{key}", f"must be in ({low}, {high}], got {value!r}")
    return float(value)


def event_from_data(data: Any, path: str = "event", depth: int = 0) -> dp_event.DpEvent:
    """An event from its JSON form; anything else is :class:`InvalidInput` naming the path."""
    if depth > MAX_DEPTH:
        raise _bad(path, f"events nest at most {MAX_DEPTH} deep")
    if not isinstance(data, Mapping):
        raise _bad(path, f"expected an object, got {type(data).__name__}")
    kind = data.get("type")
    keys = {
        "gaussian": {"type", "noise_multiplier"},
        "poisson_sampled": {"type", "sampling_probability", "event"},
        "self_composed": {"type", "count", "event"},
        "composed": {"type", "events"},
        "non_private": {"type"},
    }
    if not isinstance(kind, str) or kind not in keys:
        raise _bad(f"{path}.type", f"unknown event type {kind!r} (one of {', '.join(keys)})")
    if set(data) != keys[kind]:
        raise _bad(path, f"a {kind} event has exactly the fields {', '.join(sorted(keys[kind]))}")
    if kind == "gaussian":
        return dp_event.GaussianDpEvent(_number(data, "noise_multiplier", path, 0, 1e6))
    if kind == "poisson_sampled":
        q = _number(data, "sampling_probability", path, 0, 1)
        return dp_event.PoissonSampledDpEvent(q, event_from_data(data["event"], f"{path}.event", depth + 1))
    if kind == "self_composed":
        count = data["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise _bad(f"{path}.count", f"expected a whole number from 1 to {MAX_COUNT}, got {count!r}")
        return dp_event.SelfComposedDpEvent(event_from_data(data["event"], f"{path}.event", depth + 1), count)
    if kind == "composed":
        members = data["events"]
        if not isinstance(members, list) or len(members) > 64:
            raise _bad(f"{path}.events", "expected a list of at most 64 events")
        return dp_event.ComposedDpEvent(
            [event_from_data(e, f"{path}.events.{i}", depth + 1) for i, e in enumerate(members)]
        )
    return dp_event.NonPrivateDpEvent()


def _key(event: dp_event.DpEvent) -> str:
    return json.dumps(event_data(event), sort_keys=True)


def ledger_epsilon(events: Iterable[dp_event.DpEvent], delta: float, accountant: Accountant = "rdp") -> float:
    """The epsilon at ``delta`` of all ``events`` composed (0 for none, inf with a non-private one).

    Identical events are grouped, so a long federation costs one evaluation per distinct event,
    not one per round. For RDP, each distinct event's curve (its Rényi divergence at every
    order) is computed once per process and curves add up under composition: the check a
    provider makes before every round then costs well under a millisecond instead of the
    tens of milliseconds a sampled DP-SGD event takes to evaluate.
    """
    counts: dict[str, tuple[dp_event.DpEvent, int]] = {}
    for event in events:
        key = _key(event)
        seen = counts.get(key)
        counts[key] = (event, seen[1] + 1 if seen else 1)
    if not counts:
        return 0.0
    if accountant == "rdp":
        total = sum(
            (n * _rdp_curve(key, event) for key, (event, n) in counts.items()), np.zeros_like(_ORDERS)
        )
        # an order the accountant could not evaluate is inf and so never the minimum; a
        # non-private event makes every order inf, and the epsilon with it
        return float(compute_epsilon(_ORDERS, total, delta)[0])
    composed = dp_event.ComposedDpEvent(
        [e if n == 1 else dp_event.SelfComposedDpEvent(e, n) for e, n in counts.values()]
    )
    engine = PLDAccountant()
    engine.compose(composed)
    return float(engine.get_epsilon(delta))


_ORDERS: np.ndarray = np.array(RdpAccountant()._orders, dtype=np.float64)
_CURVES: dict[str, np.ndarray] = {}


def _rdp_curve(key: str, event: dp_event.DpEvent) -> np.ndarray:
    """The RDP of ``event`` at the accountant's default orders, as ``RdpAccountant`` computes
    it (read from the accountant after composing the one event; a test holds the sum of curves
    equal to the accountant's own composition, so a change of the library is caught)."""
    curve = _CURVES.get(key)
    if curve is None:
        engine = RdpAccountant()
        engine.compose(event)
        curve = np.array(engine._rdp, dtype=np.float64)
        if len(_CURVES) < 4096:
            _CURVES[key] = curve
    return curve


def is_node_side(event: dp_event.DpEvent) -> bool:
    """The node's own Gaussian on the whole update (DP-SGD's events are sampled compositions)."""
    return isinstance(event, dp_event.GaussianDpEvent)


# the ledger ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerRound:
    """The events one contributed round spent."""

    round: int
    events: tuple[dp_event.DpEvent, ...]


class PrivacyLedger:
    """The DP events of one provider in one federation, round by round."""

    def __init__(self, rounds: Sequence[LedgerRound] = ()) -> None:
        self._rounds: list[LedgerRound] = list(rounds)
        self._memo: dict[tuple[float, str, bool], float] = {}

    @property
    def rounds(self) -> tuple[LedgerRound, ...]:
        return tuple(self._rounds)

    def add_round(self, events: Sequence[dp_event.DpEvent], round_number: int | None = None) -> None:
        """Record a round this provider contributed to (numbers must increase)."""
        last = self._rounds[-1].round if self._rounds else 0
        number = last + 1 if round_number is None else round_number
        if isinstance(number, bool) or not isinstance(number, int) or number <= last:
            raise ValueError(f"round {number!r} does not come after the ledger's last round {last}")
        if len(self._rounds) >= MAX_ROUNDS:
            raise ValueError(f"a ledger holds at most {MAX_ROUNDS} rounds")
        recorded = tuple(events) or (dp_event.NonPrivateDpEvent(),)
        for event in recorded:
            event_data(event)  # refuses an event the ledger could not write back
        self._rounds.append(LedgerRound(number, recorded))
        self._memo.clear()

    def events(self) -> list[dp_event.DpEvent]:
        return [event for r in self._rounds for event in r.events]

    def epsilon(self, delta: float, accountant: Accountant = "rdp") -> float:
        """Epsilon at ``delta`` of every recorded event composed: what a cap is checked against.

        RDP takes milliseconds; PLD is tighter (4-10 % below RDP for the node's Gaussian, equal
        to the exact figure) but takes seconds once epsilon passes about 30."""
        return self._cached(delta, accountant, node_only=False)

    def node_epsilon(self, delta: float, accountant: Accountant = "rdp") -> float:
        """Epsilon of the node-side mechanism alone: what holds whatever the model code does.

        A round without node-side noise counts as non-private here (infinite)."""
        return self._cached(delta, accountant, node_only=True)

    def _cached(self, delta: float, accountant: Accountant, *, node_only: bool) -> float:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), not {delta!r}")
        key = (delta, accountant, node_only)
        if key not in self._memo:
            if node_only:
                events: list[dp_event.DpEvent] = []
                for r in self._rounds:
                    own = [e for e in r.events if is_node_side(e)]
                    events.extend(own or [dp_event.NonPrivateDpEvent()])
            else:
                events = self.events()
            self._memo[key] = ledger_epsilon(events, delta, accountant)
        return self._memo[key]

    def figures(self, delta: float) -> dict[str, Any]:
        """What a round record shows: epsilon (composed) and the node-side part, at ``delta``;
        an unbounded epsilon is ``None`` (JSON has no infinity)."""

        def finite(value: float) -> float | None:
            return None if math.isinf(value) else round(value, 6)

        epsilon, node = finite(self.epsilon(delta)), finite(self.node_epsilon(delta))
        if epsilon is None:
            note = "some round had no differential privacy: ε is unbounded"
        elif node is None:
            note = "DP-SGD only: ε assumes the model code writes nothing into the weights but gradient steps"
        else:
            note = "the node's own noise: ε holds whatever the model code does"
        return {
            "epsilon": epsilon,
            "node_epsilon": node,
            "delta": delta,
            "rounds": len(self._rounds),
            "accountant": "rdp",
            "note": note,
        }

    # JSON -------------------------------------------------------------------------------------

    def to_data(self) -> dict[str, Any]:
        return {
            "version": LEDGER_VERSION,
            "rounds": [{"round": r.round, "events": [event_data(e) for e in r.events]} for r in self._rounds],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_data(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> PrivacyLedger:
        """A ledger from :meth:`to_json`'s text or :meth:`to_data`'s object, checked strictly."""
        if isinstance(data, str | bytes):
            check_json(data, LEDGER_JSON, what="the privacy ledger")
            try:
                data = json.loads(data)
            except ValueError:
                raise _bad("(root)", "not JSON") from None
        if not isinstance(data, Mapping) or set(data) != {"version", "rounds"}:
            raise _bad("(root)", "expected an object with exactly version and rounds")
        if data["version"] != LEDGER_VERSION:
            raise _bad("version", f"this node reads version {LEDGER_VERSION}, got {data['version']!r}")
        rounds = data["rounds"]
        if not isinstance(rounds, list) or len(rounds) > MAX_ROUNDS:
            raise _bad("rounds", f"expected a list of at most {MAX_ROUNDS} rounds")
        ledger = cls()
        for index, item in enumerate(rounds):
            path = f"rounds.{index}"
            if not isinstance(item, Mapping) or set(item) != {"round", "events"}:
                raise _bad(path, "expected an object with exactly round and events")
            events = item["events"]
            if not isinstance(events, list) or not 1 <= len(events) <= 16:
                raise _bad(f"{path}.events", "expected a list of 1 to 16 events")
            parsed = [event_from_data(e, f"{path}.events.{i}") for i, e in enumerate(events)]
            try:
                ledger.add_round(parsed, item["round"])
            except ValueError as exc:
                raise _bad(f"{path}.round", str(exc)) from None
        return ledger
