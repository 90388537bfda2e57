"""The audit's count of the weights an exported model holds (``training_jobs.audit.expected``).

A federation's final ONNX model must hold the global weights its factory was given; the
exporter keeps most as they are and folds some (batch normalization into the convolution
before it), so the count is checked here on real exports, not on hand-made arrays alone.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest

from training_jobs.audit.expected import count_found
from training_jobs.audit.walk import weights


def exported(model: Any, shape: tuple[int, ...]) -> list[np.ndarray]:
    import onnx
    import torch

    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), buffer, dynamo=False, opset_version=17)
    return list(weights(onnx.load_model_from_string(buffer.getvalue())))


def floating(model: Any) -> list[np.ndarray]:
    return [
        t.detach().numpy() for t in model.state_dict().values() if t.dtype.is_floating_point and t.numel() > 1
    ]


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


def test_every_tensor_of_a_plain_network_is_found() -> None:
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    expected = floating(model)
    assert count_found(expected, exported(model, (2, 1, 8, 8))) == len(expected) == 4


def test_folded_batch_normalization_is_counted_as_missing_and_the_rest_found() -> None:
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 2.0)
    expected = floating(model)
    found = count_found(expected, exported(model, (2, 1, 8, 8)))
    assert len(expected) == 8
    assert 0 < found < len(expected)  # the convolution and its normalization became one tensor


def test_a_matrix_stored_transposed_is_found() -> None:
    from torch import nn

    model = nn.Linear(6, 5)  # on a 3-D input the exporter writes MatMul with the matrix transposed
    expected = floating(model)
    stored = exported(model, (2, 3, 6))
    assert not any(a.shape == expected[0].shape and np.array_equal(a, expected[0]) for a in stored)
    assert count_found(expected, stored) == len(expected) == 2  # the matrix and the bias


def test_a_model_built_from_other_weights_holds_none() -> None:
    from torch import nn

    given = floating(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)))
    own = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    assert count_found(given, exported(own, (2, 1, 8, 8))) == 0


def test_equal_values_of_another_shape_or_size_do_not_count() -> None:
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert count_found([matrix], [matrix.reshape(2, 6)]) == 1  # same numbers in the same order
    assert count_found([matrix], [matrix[:, ::-1].copy()]) == 0
    assert count_found([matrix], [matrix.reshape(-1)[:11]]) == 0
    assert count_found([matrix], [matrix.T.copy()]) == 1
    assert count_found([], [matrix]) == 0
