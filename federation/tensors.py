"""Model weights on the wire and on disk: safetensors bytes, their digest, and the update check.

Weights are a ``dict[str, numpy.ndarray]`` keyed by state-dict names; a decoded file comes in
safetensors' own order, so code that needs the model's order uses :func:`in_order` with the
federation's layout.
They travel and are stored only as ``safetensors`` (a JSON header and raw little-endian
tensor bytes: nothing in it executes when read, unlike a pickle). A digest names the exact
bytes, so a signed message binds the tensors it carries by their sha256.

:func:`check_update` is the provider node's gate before an update leaves it: exactly the
federation's tensors (names, shapes, dtypes), every value finite, within the size cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from kernel.errors import InvalidInput

Weights = dict[str, np.ndarray]

ALLOWED_DTYPES = ("float32", "float64", "float16", "int64", "int32")


class UpdateRejected(InvalidInput):
    """Tensors that may not leave (or enter) this node: the detail names the tensor and why."""

    type_slug = "update-rejected"
    status = 422
    title = "Model update rejected"


def encode(weights: Mapping[str, np.ndarray]) -> bytes:
    """The safetensors bytes of ``weights`` (names kept in the given order in the header)."""
    return save({name: np.ascontiguousarray(value) for name, value in weights.items()})


def decode(data: bytes, *, what: str = "the tensors") -> Weights:
    """Weights from safetensors bytes; anything else is :class:`UpdateRejected`."""
    try:
        loaded = load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise UpdateRejected(f"{what} are not a safetensors file: {str(exc)[:200]}") from None
    except Exception:  # e.g. a dtype NumPy has no type for (BF16, F8): a KeyError inside the loader
        raise UpdateRejected(f"{what} hold a tensor type this node does not read") from None
    return dict(loaded)


def in_order(weights: Mapping[str, np.ndarray], names: list[str]) -> Weights:
    """``weights`` in the model's order (safetensors keeps its own order of names)."""
    return {name: weights[name] for name in names}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(weights: Mapping[str, np.ndarray]) -> str:
    """The sha256 of the safetensors encoding of ``weights``."""
    return sha256_bytes(encode(weights))


def layout(weights: Mapping[str, np.ndarray]) -> dict[str, tuple[list[int], str]]:
    """Name → (shape, dtype): what every update of a federation must match."""
    return {name: (list(value.shape), str(value.dtype)) for name, value in weights.items()}


def size_of(weights: Mapping[str, np.ndarray]) -> int:
    return sum(int(value.nbytes) for value in weights.values())


def check_update(
    weights: Mapping[str, np.ndarray],
    expected: Mapping[str, tuple[list[int], str]],
    *,
    max_bytes: int,
    what: str = "the update",
) -> None:
    """Raise :class:`UpdateRejected` unless ``weights`` has exactly the expected tensors
    (names, shapes, dtypes), only finite values, and at most ``max_bytes`` of them."""
    names, wanted = list(weights), list(expected)
    extra = [n for n in names if n not in expected]
    missing = [n for n in wanted if n not in weights]
    if extra:
        raise UpdateRejected(f"{what} holds tensors the model does not have: {', '.join(extra[:5])[:300]}")
    if missing:
        raise UpdateRejected(f"{what} lacks the tensors {', '.join(missing[:5])[:300]}")
    total = size_of(weights)
    if total > max_bytes:
        raise UpdateRejected(f"{what} is {total} bytes, over the cap of {max_bytes}")
    for name in wanted:
        value = weights[name]
        shape, dtype = expected[name]
        if list(value.shape) != list(shape):
            raise UpdateRejected(f"{what}: tensor {name} has shape {list(value.shape)}, expected {shape}")
        if str(value.dtype) != dtype:
            raise UpdateRejected(f"{what}: tensor {name} has dtype {value.dtype}, expected {dtype}")
        if value.dtype.kind == "f" and not bool(np.isfinite(value).all()):
            raise UpdateRejected(f"{what}: tensor {name} holds values that are not finite (NaN or infinity)")
