"""From float vectors to the integers secure aggregation adds up, and back.

A value ``x`` is clipped to ``[-c, c]`` and mapped onto ``[0, Q-1]`` (``Q`` the quantization
range) by ``(x + c)·(Q-1)/(2c)``, rounded up or down at random in proportion to its distance
(stochastic rounding: the rounding error averages out over values, clients and rounds instead
of drifting). The randomness of that rounding comes from ``os.urandom``; it hides nothing and
needs no seed. A client with ``n`` examples contributes ``n·q`` for every value and ``n`` in a
last slot, so the unmasked sum gives ``Σ nᵢ·x̂ᵢ`` and ``Σ nᵢ`` exactly.

Masked values travel packed: ``ceil(modulus_bits / 8)`` little-endian bytes each, no header
(the signed round message binds the body by its sha256 and states the length).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from federation.secagg.config import MAX_VECTOR, SecAggConfig, SecAggRejected
from federation.tensors import Weights

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]


def check_vector(vector: object) -> F64:
    """A client's own vector: one dimension, real finite numbers, 1 to ``MAX_VECTOR`` of them."""
    if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype.kind not in "fiu":
        raise SecAggRejected("secure aggregation: the input must be a one-dimensional numeric array")
    if not 1 <= vector.size <= MAX_VECTOR:
        raise SecAggRejected(
            f"secure aggregation: the input holds {vector.size} values; 1 to {MAX_VECTOR} allowed"
        )
    values = vector.astype(np.float64)
    if not bool(np.isfinite(values).all()):
        raise SecAggRejected("secure aggregation: the input holds values that are not finite")
    return values


def quantize(values: F64, config: SecAggConfig) -> U64:
    """Clip to ±clipping_range and round stochastically onto ``[0, quantization_range)``."""
    c, top = float(config.clipping_range), config.quantization_range - 1
    scaled = (np.clip(values, -c, c) + c) * (top / (2 * c))
    low = np.floor(scaled)
    uniform = (np.frombuffer(os.urandom(8 * values.size), dtype="<u8") >> np.uint64(11)) * 2.0**-53
    rounded: U64 = np.minimum(low + (uniform < scaled - low), top).astype(np.uint64)
    return rounded


def dequantize_sum(total: U64, examples: int, config: SecAggConfig) -> F64:
    """``Σ nᵢ·x̂ᵢ`` from ``Σ nᵢ·qᵢ`` and ``Σ nᵢ``: each ``q`` stands for ``q·step - c``."""
    return total.astype(np.float64) * config.step - float(config.clipping_range) * examples


def pack(values: U64, config: SecAggConfig) -> bytes:
    """The values as ``width`` little-endian bytes each."""
    raw = np.ascontiguousarray(values.astype("<u8")).view(np.uint8).reshape(-1, 8)
    return raw[:, : config.width].tobytes()


def unpack(data: object, count: int, config: SecAggConfig, *, what: str) -> U64:
    """``count`` values from packed bytes, refused unless the length and every value's range fit."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SecAggRejected(f"{what} must be bytes")
    size, width = len(data), config.width
    if size != count * width:
        raise SecAggRejected(
            f"{what} is {size} bytes; {count} values of {width} bytes ({count * width}) expected"
        )
    raw = np.zeros((count, 8), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(bytes(data), dtype=np.uint8).reshape(count, width)
    values = raw.view("<u8").reshape(count).astype(np.uint64)
    if config.modulus_bits < 64 and bool((values >> np.uint64(config.modulus_bits)).any()):
        raise SecAggRejected(f"{what} holds values of more than {config.modulus_bits} bits")
    return values


def expansion(config: SecAggConfig, length: int) -> float:
    """Bytes of one masked vector of ``length`` values over the ``4·length`` of its float32 form."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise SecAggRejected(
            f"secure aggregation: a vector length must be a positive integer, not {length!r}"
        )
    return (length + 1) * config.width / (4 * length)


def to_vector(weights: Mapping[str, np.ndarray]) -> F64:
    """The tensors, flattened and joined in their given (the model's) order, as float64."""
    if not weights:
        raise SecAggRejected("secure aggregation: there are no tensors to flatten")
    return np.concatenate([np.asarray(w, dtype=np.float64).ravel() for w in weights.values()])


def from_vector(vector: F64, like: Mapping[str, np.ndarray]) -> Weights:
    """Tensors shaped and typed like ``like`` from a flat vector made by :func:`to_vector`."""
    sizes = [int(np.asarray(w).size) for w in like.values()]
    if vector.ndim != 1 or vector.size != sum(sizes):
        raise SecAggRejected(f"secure aggregation: {vector.size} values cannot fill tensors of {sum(sizes)}")
    out: Weights = {}
    at = 0
    for (name, template), size in zip(like.items(), sizes, strict=True):
        template = np.asarray(template)
        out[name] = vector[at : at + size].reshape(template.shape).astype(template.dtype)
        at += size
    return out
