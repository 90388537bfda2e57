"""How a federation's round turns its clients' updates into the next global model.

One interface (:class:`Strategy`), nine strategies, one wrapper, one factory::

    strategy = make_strategy("fedadam", {"eta": 0.05})            # InvalidInput names a bad parameter
    config = strategy.configure_fit(round_number, global_weights)   # extra keys for every client
    new_global = strategy.aggregate_fit(round_number, global_weights, results, failures)
    new_global = strategy.aggregate_mean(round_number, global_weights, mean, total_examples)
    strategy.state() / strategy.load_state(state)                   # server optimizer moments

========================  =====================================================  ========
name                      what the coordinator does with the updates              secagg
========================  =====================================================  ========
``fedavg``                example-weighted mean                                   yes
``fedprox``               the same; clients get ``proximal_mu``                   yes
``fedadagrad``            server Adagrad step on the mean's pseudo-gradient       yes
``fedadam``               server Adam step                                        yes
``fedyogi``               server Yogi step                                        yes
``fedmedian``             coordinate-wise median                                  no
``fedtrimmedavg``         coordinate-wise trimmed mean (``beta`` at each end)     no
``krum``                  the update nearest its n - f - 2 neighbours             no
``multikrum``             mean of the ``num_selected`` best Krum scores           no
========================  =====================================================  ========

Every strategy also takes ``max_update_norm``: each client's update is then clipped to that
L2 norm before the strategy sees it (:class:`Clipped`), which needs individual updates, so a
clipped strategy never runs under secure aggregation. Whether one may is the instance's
``supports_secagg``; :data:`SECAGG_COMPATIBLE` names the strategies that can when unclipped.

:data:`PARAMETERS` declares every strategy's parameters (type, default, bounds, meaning) and
:func:`strategy_schema` turns them into the JSON Schema a federation spec's ``strategy`` obeys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from federation.strategies.base import (
    AggregationFailed,
    Config,
    Failure,
    FitResult,
    Param,
    Strategy,
    params_schema,
    validate_params,
)
from federation.strategies.clipping import CLIP_PARAM, Clipped, clip_update, update_norm
from federation.strategies.fedavg import FedAvg, FedProx
from federation.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from federation.strategies.robust import FedMedian, FedTrimmedAvg, Krum, MultiKrum
from kernel.errors import FieldError, InvalidInput

__all__ = [
    "PARAMETERS",
    "SECAGG_COMPATIBLE",
    "STRATEGIES",
    "AggregationFailed",
    "Clipped",
    "Config",
    "Failure",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "FitResult",
    "Krum",
    "MultiKrum",
    "Param",
    "Strategy",
    "clip_update",
    "make_strategy",
    "strategy_schema",
    "update_norm",
    "validate_params",
]

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (FedAvg, FedProx, FedAdagrad, FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum, MultiKrum)
}

SECAGG_COMPATIBLE: frozenset[str] = frozenset(name for name, cls in STRATEGIES.items() if cls.supports_secagg)

PARAMETERS: dict[str, tuple[Param, ...]] = {
    name: (*cls.PARAMS, CLIP_PARAM) for name, cls in STRATEGIES.items()
}
"""Every parameter each strategy accepts, the clipping bound included."""


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with ``params`` (defaults filled in), clipped if ``max_update_norm`` is given.

    Refuses an unknown name, unknown parameters, a missing required one and wrong types or
    out-of-range values with :class:`InvalidInput` whose field paths are ``name`` and
    ``params.<parameter>`` (a spec puts them under its ``strategy`` with ``.under``).
    """
    cls = STRATEGIES.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(STRATEGIES)
        raise InvalidInput(
            f"unknown strategy {name!r:.60}; one of {known}",
            errors=[FieldError("name", f"unknown strategy; one of {known}")],
        )
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidInput(
            f"{name}: the parameters must be a mapping of names to values",
            errors=[FieldError("params", "must be an object")],
        )
    validate_params(name, PARAMETERS[name], params)  # every bad parameter named at once
    own = {key: value for key, value in params.items() if key != CLIP_PARAM.name}
    strategy = cls(**own)
    max_norm = params.get(CLIP_PARAM.name)
    return strategy if max_norm is None else Clipped(strategy, max_norm)


def strategy_schema() -> dict[str, Any]:
    """The JSON Schema of a spec's ``strategy``: ``{"name": ..., "params": {...}}``, one branch per name."""
    branches = [
        {
            "type": "object",
            "description": (cls.__doc__ or name).strip().splitlines()[0],
            "additionalProperties": False,
            "required": ["name", *(["params"] if any(p.required for p in PARAMETERS[name]) else [])],
            "properties": {"name": {"const": name}, "params": params_schema(PARAMETERS[name])},
        }
        for name, cls in STRATEGIES.items()
    ]
    return {"oneOf": branches}
