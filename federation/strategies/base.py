"""What every aggregation strategy shares: its inputs, its refusal, its parameters, its interface.

A round's driver hands a strategy the global weights it sent out and what came back::

    config = strategy.configure_fit(round_number, global_weights)     # extra keys for the clients
    new_global = strategy.aggregate_fit(round_number, global_weights, results, failures)

Guarantees every strategy keeps, enforced here once rather than per strategy:

* the results are checked before any arithmetic: at least one, one per participant, a
  positive example count, exactly the global model's tensors (names, shapes, dtypes) and only
  finite values; anything else is :class:`AggregationFailed` with the reason;
* the results are put in one canonical order (by participant), so the order in which updates
  arrived never changes a single bit of the aggregate, nor which update Krum picks on a tie;
* arithmetic runs in float64 and every tensor goes back to its own dtype and shape (integer
  tensors such as BatchNorm's counters are rounded); an aggregate that does not fit its dtype
  (a float16 overflow) is refused, never returned as infinity;
* a refusal changes no state: server optimizer moments move only when a round succeeds.

Parameters are declared once per strategy as :class:`Param` (type, default, bounds, one line
of description): the same declaration validates what a federation spec gives, fills the
defaults, and yields the JSON Schema the spec publishes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from federation.tensors import Weights
from kernel.errors import AgoraError, FieldError, InvalidInput

Config = dict[str, float | int | str | bool]
"""What :meth:`Strategy.configure_fit` adds to every client's round config."""

Float64 = NDArray[np.float64]

MAX_EXAMPLES = 2**53
"""Largest example count a result may claim: every count up to it is exact as a float."""


class AggregationFailed(AgoraError):
    """A round's updates that cannot be aggregated; the detail says why (for the round record)."""

    type_slug = "aggregation-failed"
    status = 422
    title = "The round's updates cannot be aggregated"


@dataclass(frozen=True)
class FitResult:
    """One participant's answer to a round: its trained weights and how many examples made them."""

    participant: str
    weights: Weights
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """A participant that sent no usable update this round, and why (kept for the report only)."""

    participant: str
    reason: str


# parameters ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One strategy parameter: its type, default, bounds and what it means.

    ``default=None`` with ``required=False`` is an option that is off unless given.
    """

    name: str
    kind: Literal["number", "integer"]
    description: str
    default: float | int | None = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None

    def check(self, value: Any, owner: str) -> float | int | None:
        """``value`` as this parameter's type, or :class:`InvalidInput` naming the parameter."""
        if value is None and not self.required and self.default is None:
            return None
        problem = self._problem(value)
        if problem:
            raise InvalidInput(
                f"{owner}: parameter {self.name} {problem}",
                errors=[FieldError(f"params.{self.name}", problem)],
            )
        return int(value) if self.kind == "integer" else float(value)

    def _problem(self, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be {'an integer' if self.kind == 'integer' else 'a number'} (got {value!r:.40})"
        if self.kind == "integer" and not isinstance(value, int):
            return f"must be an integer (got {value!r})"
        if not math.isfinite(value):
            return f"must be a finite number (got {value!r})"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum:g} (got {value!r})"
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            return f"must be greater than {self.exclusive_minimum:g} (got {value!r})"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:g} (got {value!r})"
        if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
            return f"must be less than {self.exclusive_maximum:g} (got {value!r})"
        return None

    def json_schema(self) -> dict[str, Any]:
        """This parameter as a JSON Schema property (nullable when it is an option that is off)."""
        optional_off = self.default is None and not self.required
        schema: dict[str, Any] = {
            "type": [self.kind, "null"] if optional_off else self.kind,
            "description": self.description,
        }
        if self.default is not None:
            schema["default"] = self.default
        bounds = {
            "minimum": self.minimum,
            "maximum": self.maximum,
            "exclusiveMinimum": self.exclusive_minimum,
            "exclusiveMaximum": self.exclusive_maximum,
        }
        schema.update({key: bound for key, bound in bounds.items() if bound is not None})
        return schema


def validate_params(owner: str, declared: Sequence[Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """The effective parameters: ``given`` checked against ``declared``, defaults filled in.

    Unknown names, missing required ones, wrong types and out-of-range values are refused
    with :class:`InvalidInput` whose field paths (``params.<name>``) name every bad one.
    """
    known = {param.name: param for param in declared}
    errors: list[FieldError] = []
    details: list[str] = []
    for name in given:
        if not isinstance(name, str) or name not in known:
            takes = ", ".join(known) or "no parameters"
            errors.append(FieldError(f"params.{name}", "unknown parameter"))
            details.append(f"{owner} has no parameter {name!r} (it takes {takes})")
    effective: dict[str, Any] = {}
    for name, param in known.items():
        if name not in given and param.required:
            errors.append(FieldError(f"params.{name}", "required"))
            details.append(f"{owner}: parameter {name} is required ({param.description})")
            continue
        try:
            value = param.check(given.get(name, param.default), owner)
        except InvalidInput as exc:
            errors.extend(exc.errors)
            details.append(exc.detail)
            continue
        if value is not None:
            effective[name] = value
    if errors:
        raise InvalidInput("; ".join(details), errors=errors)
    return effective


def params_schema(declared: Sequence[Param]) -> dict[str, Any]:
    """The JSON Schema of a strategy's ``params`` object."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {param.name: param.json_schema() for param in declared},
    }
    required = [param.name for param in declared if param.required]
    if required:
        schema["required"] = required
    return schema


# the interface ------------------------------------------------------------------------------


class Strategy(ABC):
    """How a round's updates become the next global model.

    Subclasses declare ``name``, ``PARAMS`` and implement :meth:`_aggregate` over results
    already checked and ordered; those that work from the example-weighted mean alone set
    ``supports_secagg`` and implement :meth:`aggregate_mean`.
    """

    name: str = ""
    supports_secagg: bool = False
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = validate_params(self.name, self.PARAMS, params)
        # what the last successful aggregation did (participants used, failures, what the
        # strategy chose), for the round record
        self.report: dict[str, Any] = {}

    def configure_fit(self, round_number: int, global_weights: Weights) -> Config:
        """Keys every client receives with this round's global weights (none by default)."""
        check_round(round_number)
        return {}

    def aggregate_fit(
        self,
        round_number: int,
        global_weights: Weights,
        results: Sequence[FitResult],
        failures: Sequence[Failure] = (),
    ) -> Weights:
        """The next global weights from this round's results; ``failures`` are only reported."""
        check_round(round_number)
        ordered = checked_results(global_weights, results)
        new_global, notes = self._aggregate(round_number, global_weights, ordered)
        self.report = {
            "round": round_number,
            "strategy": self.name,
            "aggregated": [result.participant for result in ordered],
            "failures": [{"participant": f.participant, "reason": f.reason} for f in failures],
            **notes,
        }
        return new_global

    @abstractmethod
    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        """The new global weights and the notes for :attr:`report`, from checked, ordered results."""

    def aggregate_mean(
        self, round_number: int, global_weights: Weights, mean_weights: Weights, total_examples: int
    ) -> Weights:
        """The next global weights from the example-weighted mean alone (secure aggregation)."""
        raise AggregationFailed(
            f"{self.name} needs each client's own update; it cannot work from the securely aggregated mean"
        )

    def state(self) -> dict[str, Weights]:
        """What must survive a restart of the coordinator to resume exactly (none by default)."""
        return {}

    def load_state(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Resume from :meth:`state` as persisted after the last successful round."""
        if state:
            raise InvalidInput(
                f"{self.name} keeps no state, but state {', '.join(map(str, state))} was given"
            )

    def describe(self) -> dict[str, Any]:
        """The strategy's name and effective parameters: ``make_strategy(**describe())`` rebuilds it."""
        return {"name": self.name, "params": dict(self.params)}


# checks and arithmetic every strategy uses --------------------------------------------------


def check_round(round_number: int) -> None:
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 1:
        raise InvalidInput(f"the round number must be a positive integer (got {round_number!r})")


def checked_results(global_weights: Weights, results: Sequence[FitResult]) -> list[FitResult]:
    """``results`` in canonical order (by participant), or :class:`AggregationFailed` with why."""
    if not results:
        raise AggregationFailed("no client returned an update")
    seen: set[str] = set()
    for result in results:
        who = result.participant
        if not isinstance(who, str) or not who:
            raise AggregationFailed(f"an update names no participant ({who!r})")
        if who in seen:
            raise AggregationFailed(f"participant {who} returned more than one update this round")
        seen.add(who)
        count = result.num_examples
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_EXAMPLES:
            raise AggregationFailed(
                f"participant {who} reported {count!r} examples; a count must be an integer "
                f"from 1 to {MAX_EXAMPLES}"
            )
        check_layout(global_weights, result.weights, f"the update of {who}")
    return sorted(results, key=lambda result: result.participant)


def check_layout(
    global_weights: Weights, weights: Mapping[str, np.ndarray], what: str, *, same_dtype: bool = True
) -> None:
    """Refuse ``weights`` unless it holds exactly the global model's tensors, all finite."""
    extra = [name for name in weights if name not in global_weights]
    missing = [name for name in global_weights if name not in weights]
    if extra or missing:
        parts = [
            f"lacks {', '.join(missing[:5])}" if missing else "",
            f"has extra {', '.join(extra[:5])}" if extra else "",
        ]
        raise AggregationFailed(f"{what} does not match the model: {'; '.join(p for p in parts if p)}"[:500])
    for name, reference in global_weights.items():
        value = weights[name]
        if not isinstance(value, np.ndarray):
            raise AggregationFailed(f"{what}: tensor {name} is a {type(value).__name__}, not an array")
        if value.shape != reference.shape:
            raise AggregationFailed(
                f"{what}: tensor {name} has shape {list(value.shape)}, expected {list(reference.shape)}"
            )
        if same_dtype and value.dtype != reference.dtype:
            raise AggregationFailed(
                f"{what}: tensor {name} has dtype {value.dtype}, expected {reference.dtype}"
            )
        if value.dtype.kind not in "fiu":
            raise AggregationFailed(f"{what}: tensor {name} has dtype {value.dtype}, which is not numeric")
        if value.dtype.kind == "f" and not bool(np.isfinite(value).all()):
            raise AggregationFailed(f"{what}: tensor {name} holds values that are not finite")


def wide(value: np.ndarray) -> Float64:
    """A tensor in float64, the precision every strategy computes in."""
    return np.asarray(value, dtype=np.float64)


def weighted_mean(results: Sequence[FitResult]) -> dict[str, Float64]:
    """The example-weighted mean of the results' tensors, sum(n_i * w_i) / sum(n_i).

    It is summed as w_0 + sum(n_i * (w_i - w_0)) / sum(n_i) around the first result: the same
    value, but clients that agree give back exactly what they sent, to the last bit.
    """
    total = float(sum(result.num_examples for result in results))
    mean: dict[str, Float64] = {}
    for name in results[0].weights:
        pivot = wide(results[0].weights[name])
        acc = np.zeros(pivot.shape, dtype=np.float64)
        for result in results[1:]:
            acc += float(result.num_examples) * (wide(result.weights[name]) - pivot)
        mean[name] = np.asarray(pivot + acc / total)
    return mean


def stacked(results: Sequence[FitResult], name: str) -> Float64:
    """One tensor of every result, stacked along a new first axis (clients, then the tensor's axes)."""
    return np.stack([wide(result.weights[name]) for result in results])


def cast_like(value: Float64, like: np.ndarray, name: str) -> np.ndarray:
    """``value`` back in the dtype of ``like``: integers rounded and held to their range, and a
    float that overflows its dtype refused rather than returned as infinity."""
    value = np.asarray(value, dtype=np.float64)  # numpy hands back scalars for 0-d tensors
    if like.dtype.kind in "iu":
        info = np.iinfo(like.dtype)
        high = float(info.max)
        if int(high) > info.max:  # int64's maximum is not a float64: stay below it
            high = float(np.nextafter(high, 0.0))
        return np.asarray(np.clip(np.rint(value), float(info.min), high), dtype=like.dtype).reshape(
            like.shape
        )
    with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
        out = np.asarray(value, dtype=like.dtype).reshape(like.shape)
    if not bool(np.isfinite(out).all()):
        raise AggregationFailed(f"the aggregate of tensor {name} does not fit in {like.dtype} (it overflows)")
    return out


def cast_all(values: Mapping[str, Float64], like: Weights) -> Weights:
    """Every tensor of ``values`` in the dtype of the same tensor of ``like``, in ``like``'s order."""
    return {name: cast_like(values[name], reference, name) for name, reference in like.items()}
