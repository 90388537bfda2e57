"""Update norm clipping: no client moves the model further than ``max_update_norm`` in a round.

A client's update is its weights minus the global weights it trained from. Its L2 norm is
taken over all floating-point tensors together, as one flattened vector; when it exceeds the
bound, the whole update is scaled down to that norm (its direction kept), so a client that
scales its update by 10 gains nothing over one that sends an update of norm
``max_update_norm``::

    clipped = global + update * min(1, max_norm / ||update||)

Integer tensors are counters (BatchNorm's ``num_batches_tracked`` grows by the number of
batches a client ran), not coordinates of the model's function: counted in the norm they
would dominate it and scale every real update to nothing, and scaled they would round away.
They are left out of the norm and pass unclipped.

:func:`clip_update` is the plain function, for the provider's node to apply to its own update
before it leaves, and for :class:`Clipped`, the wrapper that clips every client's update on
the coordinator before any strategy sees it. Server-side clipping needs each update on its
own, so a clipped strategy does not run under secure aggregation (a provider can still clip
its own update there).

The bound holds for the update computed in float64; once the clipped weights are rounded back
to their dtype (float32, say), the update's norm may exceed it by that rounding, at most half
a unit in the last place of each coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.strategies.base import (
    Config,
    FitResult,
    Param,
    Strategy,
    cast_like,
    wide,
)
from federation.tensors import Weights
from kernel.errors import InvalidInput

CLIP_PARAM = Param(
    "max_update_norm",
    "number",
    "L2 norm (float tensors together) each client's update is clipped to before aggregation; off if absent",
    exclusive_minimum=0.0,
)

REPORT_KEYS = ("round", "strategy", "aggregated", "failures")


def update_norm(global_weights: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of ``weights - global_weights`` over the floating-point tensors, in float64."""
    _check_same_tensors(global_weights, weights)
    total = 0.0
    for name, value in weights.items():
        if np.asarray(value).dtype.kind != "f":
            continue
        difference = wide(value) - wide(global_weights[name])
        total += float(np.dot(difference.ravel(), difference.ravel()))
    return math.sqrt(total)


def clip_update(
    global_weights: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray], max_norm: float
) -> Weights:
    """``weights`` with its update scaled down to L2 norm ``max_norm`` if it is longer.

    Tensors keep their names, order, shapes and dtypes; integer tensors pass as they are, and
    an update within the bound comes back as it was (the same arrays).
    """
    if (
        isinstance(max_norm, bool)
        or not isinstance(max_norm, int | float)
        or not (math.isfinite(max_norm) and max_norm > 0)
    ):
        raise InvalidInput(f"the clipping norm must be a positive finite number (got {max_norm!r})")
    norm = update_norm(global_weights, weights)
    if norm <= max_norm:
        return dict(weights)
    scale = float(max_norm) / norm
    clipped: Weights = {}
    for name, value in weights.items():
        if value.dtype.kind != "f":
            clipped[name] = value
            continue
        start = wide(global_weights[name])
        clipped[name] = cast_like(start + (wide(value) - start) * scale, value, name)
    return clipped


def _check_same_tensors(global_weights: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray]) -> None:
    if set(weights) != set(global_weights):
        raise InvalidInput("the update does not hold the same tensors as the global weights")
    for name, value in weights.items():
        if np.shape(value) != np.shape(global_weights[name]):
            raise InvalidInput(
                f"the update's tensor {name} has shape {list(np.shape(value))}, "
                f"the global weights' {list(np.shape(global_weights[name]))}"
            )


class Clipped(Strategy):
    """Any strategy, fed every client's update clipped to ``max_update_norm`` first."""

    supports_secagg = False

    def __init__(self, inner: Strategy, max_update_norm: float) -> None:
        self.name = inner.name
        super().__init__()
        checked = CLIP_PARAM.check(max_update_norm, inner.name)
        if checked is None:
            raise InvalidInput(f"{inner.name}: a clipped strategy needs max_update_norm")
        self.inner = inner
        self.max_update_norm = float(checked)
        self.params = {**inner.params, CLIP_PARAM.name: self.max_update_norm}

    def configure_fit(self, round_number: int, global_weights: Weights) -> Config:
        return self.inner.configure_fit(round_number, global_weights)

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        clipped_results: list[FitResult] = []
        clipped: dict[str, float] = {}
        for result in results:
            norm = update_norm(global_weights, result.weights)
            if norm > self.max_update_norm:
                clipped[result.participant] = norm
                weights = clip_update(global_weights, result.weights, self.max_update_norm)
                result = FitResult(result.participant, weights, result.num_examples, result.metrics)
            clipped_results.append(result)
        new_global = self.inner.aggregate_fit(round_number, global_weights, clipped_results)
        notes = {key: value for key, value in self.inner.report.items() if key not in REPORT_KEYS}
        return new_global, {**notes, "clipped": clipped, "max_update_norm": self.max_update_norm}

    def state(self) -> dict[str, Weights]:
        return self.inner.state()

    def load_state(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self.inner.load_state(state)
