"""A bundle's own Flower-style client, run by the warm trainer in place of the node's recipe.

The bundle names ``module:ClassOrFactory``; it is called once with the training rows,
``(X_train, y_train)`` as numpy arrays, and the object it returns answers Flower's
``NumPyClient`` calls::

    fit(parameters: list[np.ndarray], config: dict) -> (list[np.ndarray], int, dict)
    evaluate(parameters: list[np.ndarray], config: dict) -> (float, int, dict)
    get_parameters(config: dict) -> list[np.ndarray]          # optional

Parameters are lists in the model's order: the node names that order at ``hello`` (the
federation's initial weights), and the arrays are named by position here. What the client
returns is passed on as it is: the node checks it, not this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .loading import Layout, arrays_layout, as_array_list, named, scalars


class ClientSession:
    """The client object, built once with the process's training rows."""

    def __init__(self, target: Callable[..., Any], X: np.ndarray | None, y: np.ndarray | None) -> None:
        if X is None or y is None:
            raise ValueError("a client needs training rows")
        self.client = target(X, y)
        if not callable(getattr(self.client, "fit", None)):
            raise TypeError("the client has no fit(parameters, config) method")

    def has_parameters(self) -> bool:
        return callable(getattr(self.client, "get_parameters", None))

    def parameters(self, names: list[str]) -> dict[str, np.ndarray]:
        arrays = as_array_list(self.client.get_parameters({}), "get_parameters()")
        return named(names, arrays, "get_parameters()")

    def layout(self, names: list[str]) -> Layout:
        return arrays_layout(names, self.parameters(names))

    def fit(
        self, names: list[str], arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], int, dict[str, Any]]:
        result = self.client.fit([np.array(arrays[name]) for name in names], dict(config))
        if not isinstance(result, tuple) or len(result) != 3:
            raise TypeError("fit() must return (parameters, num_examples, metrics)")
        parameters, count, metrics = result
        new = named(names, as_array_list(parameters, "fit()'s parameters"), "fit()'s parameters")
        return new, _count(count, "fit()"), scalars(metrics, "fit()'s metrics")

    def evaluate(
        self, names: list[str], arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        method = getattr(self.client, "evaluate", None)
        if not callable(method):
            raise TypeError("the client has no evaluate(parameters, config) method")
        result = method([np.array(arrays[name]) for name in names], dict(config))
        if not isinstance(result, tuple) or len(result) != 3:
            raise TypeError("evaluate() must return (loss, num_examples, metrics)")
        loss, count, metrics = result
        return float(loss), _count(count, "evaluate()"), scalars(metrics, "evaluate()'s metrics")


def _count(value: Any, what: str) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}'s num_examples must be an integer")
    return value
