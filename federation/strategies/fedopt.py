"""Server optimizers: FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021, "Adaptive Federated
Optimization").

Each round the clients' example-weighted mean gives a pseudo-gradient, delta = mean - global,
and the coordinator takes one optimizer step with it, per coordinate::

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * delta
    v_t = v_{t-1} + delta^2                                          FedAdagrad
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * delta^2                  FedAdam
    v_t = v_{t-1} - (1 - beta_2) * delta^2 * sign(v_{t-1} - delta^2)  FedYogi
    global_{t+1} = global_t + eta_t * m_t / (sqrt(v_t) + tau)

with m and v starting at zero. The parameters, their defaults and FedAdam's bias-corrected
step size ``eta_t = eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` (t the round number)
are Flower's, so a federation moved over from Flower follows the same trajectory; FedAdagrad
and FedYogi step with ``eta`` itself. FedAdagrad's ``beta_1`` defaults to 0 as in Flower (the
paper allows momentum there too).

Only the mean is needed, so all three run under secure aggregation. The moments m_t and v_t
are the strategy's state: :meth:`FedOpt.state` hands them out as float64 tensors keyed like
the model, to be persisted with each round, and :meth:`FedOpt.load_state` takes them back, so
a restarted coordinator continues with exactly the step it would have taken. The moments move
only when a round's aggregate is accepted.

Integer tensors (counters such as BatchNorm's ``num_batches_tracked``) are not parameters an
optimizer moves: they take the clients' mean, rounded, and have no moments.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

from federation.strategies.base import AggregationFailed, Float64, Param, cast_all, wide
from federation.strategies.fedavg import FedAvg
from federation.tensors import Weights
from kernel.errors import InvalidInput

MOMENTS = ("m_t", "v_t")


def _eta(default: float) -> Param:
    return Param("eta", "number", "server learning rate", default=default, exclusive_minimum=0.0)


def _beta_1(default: float) -> Param:
    return Param(
        "beta_1",
        "number",
        "decay of the first moment (momentum) of the pseudo-gradient",
        default=default,
        minimum=0.0,
        exclusive_maximum=1.0,
    )


def _beta_2(default: float) -> Param:
    return Param(
        "beta_2",
        "number",
        "decay of the second moment of the pseudo-gradient",
        default=default,
        minimum=0.0,
        exclusive_maximum=1.0,
    )


def _tau(default: float) -> Param:
    return Param(
        "tau",
        "number",
        "adaptivity: added to sqrt(v_t) in the denominator of the step",
        default=default,
        exclusive_minimum=0.0,
    )


class FedOpt(FedAvg):
    """FedAvg's mean followed by one server optimizer step; subclasses give the second moment."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.eta = float(self.params["eta"])
        self.beta_1 = float(self.params["beta_1"])
        self.tau = float(self.params["tau"])
        self._m: dict[str, Float64] | None = None
        self._v: dict[str, Float64] | None = None

    def _step_size(self, round_number: int) -> float:
        return self.eta

    @abstractmethod
    def _second_moment(self, v: Float64, delta: Float64) -> Float64:
        """v_t from v_{t-1} and this round's pseudo-gradient."""

    def _step(self, round_number: int, global_weights: Weights, mean: dict[str, Float64]) -> Weights:
        trained = [name for name, value in global_weights.items() if value.dtype.kind == "f"]
        if self._m is not None:
            self._check_moments(self._m, global_weights, trained)
        eta_t = self._step_size(round_number)
        m_next: dict[str, Float64] = {}
        v_next: dict[str, Float64] = {}
        new: dict[str, Float64] = dict(mean)  # integer tensors keep the mean
        for name in trained:
            current = wide(global_weights[name])
            delta = mean[name] - current
            m_prev = self._m[name] if self._m is not None else np.zeros_like(delta)
            v_prev = self._v[name] if self._v is not None else np.zeros_like(delta)
            m_next[name] = np.asarray(self.beta_1 * m_prev + (1.0 - self.beta_1) * delta)
            v_next[name] = np.asarray(self._second_moment(v_prev, delta))
            new[name] = current + eta_t * m_next[name] / (np.sqrt(v_next[name]) + self.tau)
        new_global = cast_all(new, global_weights)  # may refuse: then the moments stay as they were
        self._m, self._v = m_next, v_next
        return new_global

    def _check_moments(
        self, moments: dict[str, Float64], global_weights: Weights, trained: list[str]
    ) -> None:
        if sorted(moments) != sorted(trained) or any(
            moments[name].shape != global_weights[name].shape for name in trained
        ):
            raise AggregationFailed(
                f"the {self.name} moments are for other tensors than the model's "
                "(the state loaded does not belong to this federation)"
            )

    def state(self) -> dict[str, Weights]:
        if self._m is None or self._v is None:
            return {}
        return {
            "m_t": {name: value.copy() for name, value in self._m.items()},
            "v_t": {name: value.copy() for name, value in self._v.items()},
        }

    def load_state(self, state: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        if not state:
            self._m = self._v = None
            return
        if sorted(state) != sorted(MOMENTS):
            raise InvalidInput(
                f"{self.name} state holds {', '.join(map(str, state))}; "
                f"it must hold exactly {', '.join(MOMENTS)}"
            )
        m, v = state["m_t"], state["v_t"]
        if set(m) != set(v) or any(np.shape(m[name]) != np.shape(v[name]) for name in m):
            raise InvalidInput(f"{self.name} state: m_t and v_t hold different tensors")
        loaded_m = {name: wide(value).copy() for name, value in m.items()}
        loaded_v = {name: wide(value).copy() for name, value in v.items()}
        for name in loaded_m:
            if not (np.isfinite(loaded_m[name]).all() and np.isfinite(loaded_v[name]).all()):
                raise InvalidInput(f"{self.name} state: the moments of {name} are not finite")
            if bool((loaded_v[name] < 0).any()):
                raise InvalidInput(f"{self.name} state: the second moment of {name} is negative")
        self._m, self._v = loaded_m, loaded_v


class FedAdagrad(FedOpt):
    """Adagrad on the server: the second moment sums every round's squared pseudo-gradient."""

    name = "fedadagrad"
    PARAMS = (_eta(0.1), _beta_1(0.0), _tau(1e-9))

    def _second_moment(self, v: Float64, delta: Float64) -> Float64:
        return v + delta * delta


class FedAdam(FedOpt):
    """Adam on the server, with Flower's bias-corrected step size."""

    name = "fedadam"
    PARAMS = (_eta(0.1), _beta_1(0.9), _beta_2(0.99), _tau(1e-9))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.beta_2 = float(self.params["beta_2"])

    def _step_size(self, round_number: int) -> float:
        exponent = round_number + 1.0
        return (
            self.eta
            * math.sqrt(1.0 - math.pow(self.beta_2, exponent))
            / (1.0 - math.pow(self.beta_1, exponent))
        )

    def _second_moment(self, v: Float64, delta: Float64) -> Float64:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta * delta


class FedYogi(FedOpt):
    """Yogi on the server: the second moment moves towards delta^2 by a bounded, additive step."""

    name = "fedyogi"
    PARAMS = (_eta(0.01), _beta_1(0.9), _beta_2(0.99), _tau(1e-3))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.beta_2 = float(self.params["beta_2"])

    def _second_moment(self, v: Float64, delta: Float64) -> Float64:
        squared = delta * delta
        return v - (1.0 - self.beta_2) * squared * np.sign(v - squared)
