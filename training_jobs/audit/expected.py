"""Whether the ONNX model holds the weights its factory was given: a count, and its limits.

A federation's final model is the bundle's factory filled with the global weights, exported
in a sandbox where the bundle's code runs. A factory whose model ignores ``load_state_dict``
(its own weights in place of the federated ones) would export a model the node would then
anchor as the federation's. The exporter stores a layer's weights as they are (a ``Gemm``
keeps its matrix, a ``MatMul`` may hold it transposed), but it may also fold some into
others (a convolution followed by batch normalization becomes one convolution), so the audit
counts the tensors it finds rather than asking for all of them, and refuses only a model
that holds none.

What it does not see: a model that holds the weights and computes something else as well.
The bundle's code decides what the model computes; the ONNX-against-native comparison only
shows that the translation computes what the bundle's model computed in the export run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def count_found(expected: Sequence[np.ndarray], stored: Sequence[np.ndarray]) -> int:
    """How many ``expected`` arrays appear exactly among ``stored`` (as they are, or a matrix
    transposed)."""
    by_size: dict[int, list[np.ndarray]] = defaultdict(list)
    for array in stored:
        by_size[int(array.size)].append(array)
    return sum(1 for array in expected if any(_same(array, c) for c in by_size.get(int(array.size), ())))


def _same(expected: np.ndarray, candidate: np.ndarray) -> bool:
    if np.array_equal(candidate.reshape(expected.shape), expected):
        return True
    if expected.ndim == 2:
        return bool(np.array_equal(candidate.reshape(expected.shape[::-1]), expected.T))
    return False
