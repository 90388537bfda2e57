"""The bundle's code and the weights, as the sandboxed trainer handles them.

The bundle (mounted read-only at ``/job``) names its model factory or its client as
``module:attribute``; the module is imported from the bundle, which comes last on
``sys.path`` so that it cannot stand in for a module of the trainer or of Python itself.
Weights cross the channel as safetensors bytes in both directions.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")

Layout = list[tuple[str, list[int], str]]


def add_bundle(path: str) -> None:
    """Make the bundle's modules importable, after everything else."""
    if path not in sys.path:
        sys.path.append(path)


def resolve(entry: str) -> Callable[..., Any]:
    """The callable ``module:attribute`` names."""
    if not ENTRY.match(entry):
        raise ValueError(f"{entry!r} is not of the form module:attribute")
    module_name, attribute = entry.split(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attribute, None)
    if not callable(target):
        raise ValueError(f"{entry} is not a callable of the bundle")
    return target  # type: ignore[no-any-return]


def arrays_layout(names: list[str], arrays: dict[str, np.ndarray]) -> Layout:
    return [(name, [int(d) for d in arrays[name].shape], str(arrays[name].dtype)) for name in names]


def decode(payload: bytes) -> dict[str, np.ndarray]:
    return dict(load_numpy(payload))


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    return save_numpy({name: np.ascontiguousarray(value) for name, value in arrays.items()})


def as_array_list(value: Any, what: str) -> list[np.ndarray]:
    """A client's parameters as a list of numpy arrays (Flower's ``NDArrays``)."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what} must be a list of numpy arrays, not {type(value).__name__}")
    arrays = []
    for i, item in enumerate(value):
        array = np.asarray(item)
        if array.dtype == object:
            raise TypeError(f"{what}: item {i} is not a numeric array")
        arrays.append(array)
    return arrays


def named(names: list[str], arrays: list[np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``arrays`` under the model's names, in the model's order."""
    if len(arrays) != len(names):
        raise ValueError(f"{what} has {len(arrays)} arrays; the model has {len(names)} tensors")
    return dict(zip(names, arrays, strict=True))


def scalars(metrics: Any, what: str) -> dict[str, Any]:
    """A client's metrics as JSON values (numpy scalars become Python numbers)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"{what} must be a dict, not {type(metrics).__name__}")
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"{what}: the value of {str(key)[:40]!r} is not a number")
        out[str(key)] = value
    return out
