"""Secure aggregation's parameters, its two errors, and the neighbour graph every party derives alike.

The coordinator fixes a :class:`SecAggConfig` for a round and sends it to the providers in the
round's start message; a provider rebuilds it with :meth:`SecAggConfig.from_wire`, which holds it
to the same rules, so a coordinator cannot lower the threshold below what keeps a single
provider's update hidden.

``num_shares`` is the size of each participant's neighbourhood, itself included (it keeps one
share of its own secrets): with up to ``num_shares`` participants everyone is everyone's
neighbour (SecAgg); with more, the neighbours are the ``num_shares // 2`` on each side in a ring
whose order is hashed from the round context (SecAgg+'s sparse graph), so every party computes
the same graph and the coordinator cannot pick one that isolates a provider.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kernel.errors import AgoraError, InvalidInput

MAX_PARTICIPANTS = 1024
MAX_ID = 0xFFFF  # ids travel as two bytes in the encrypted shares
MAX_CONTEXT_BYTES = 256
MAX_VECTOR = 1 << 24  # values in one masked vector (a 16.7-million-parameter model)
GRAPH_LABEL = b"agora-secagg graph v1"


class SecAggRejected(InvalidInput):
    """A secure-aggregation message or parameter this party refuses; nothing was changed."""

    type_slug = "secagg-rejected"
    title = "Secure aggregation message rejected"


class SecAggFailed(AgoraError):
    """The round's secure aggregation cannot finish: too few participants, inputs or shares."""

    type_slug = "secagg-failed"
    status = 409
    title = "Secure aggregation failed"


def _int(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SecAggRejected(
            f"secure aggregation: {name} must be an integer from {low} to {high}, not {value!r}"
        )
    return value


@dataclass(frozen=True)
class SecAggConfig:
    """One round's secure-aggregation parameters.

    Each value of a client's vector is clipped to ``±clipping_range`` and quantized with
    stochastic rounding to an integer in ``[0, quantization_range)``; the client multiplies it
    by its ``num_examples`` (at most ``max_examples``) and appends ``num_examples`` itself, so
    the server learns the example-weighted sum and the total count exactly, and the weighted
    mean's error is one quantization step at most, however uneven the providers' sizes.
    Everything is added modulo ``2**modulus_bits``, which must hold the largest honest sum.
    """

    num_shares: int
    reconstruction_threshold: int
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_bits: int = 48
    max_examples: int = 2**20

    def __post_init__(self) -> None:
        shares = _int(self.num_shares, "num_shares", 2, MAX_PARTICIPANTS)
        threshold = _int(self.reconstruction_threshold, "reconstruction_threshold", 2, shares)
        if 2 * threshold <= shares:
            raise SecAggRejected(
                f"secure aggregation: reconstruction_threshold {threshold} must be more than half of "
                f"num_shares {shares}, or a coordinator could obtain both secrets of one participant"
            )
        c = self.clipping_range
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or not 0 < c <= 1e6:
            raise SecAggRejected(
                f"secure aggregation: clipping_range must be a number in (0, 1e6], not {c!r}"
            )
        bits = _int(self.modulus_bits, "modulus_bits", 8, 64)
        _int(self.quantization_range, "quantization_range", 2, 2**52)  # exact in a float64
        _int(self.max_examples, "max_examples", 1, 2**40)
        self._check_room(2, bits)

    @classmethod
    def fitted(
        cls,
        participants: int,
        reconstruction_threshold: int,
        *,
        num_shares: int | None = None,
        clipping_range: float = 8.0,
        quantization_range: int = 2**22,
        max_examples: int = 2**20,
    ) -> SecAggConfig:
        """The configuration with the fewest whole bytes per value that still holds the sum of
        ``participants`` inputs (the masked vector's size is what secure aggregation adds)."""
        room = (
            _int(participants, "participants", 2, MAX_PARTICIPANTS) * max_examples * (quantization_range - 1)
        )
        bits = min(64, max(8, -(-room.bit_length() // 8) * 8))
        return cls(
            num_shares=participants if num_shares is None else num_shares,
            reconstruction_threshold=reconstruction_threshold,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_bits=bits,
            max_examples=max_examples,
        )

    @property
    def step(self) -> float:
        """The distance between two quantization levels: the error bound of one value."""
        return 2 * float(self.clipping_range) / (self.quantization_range - 1)

    @property
    def width(self) -> int:
        """Bytes per value of a masked vector."""
        return (self.modulus_bits + 7) // 8

    def _check_room(self, participants: int, bits: int | None = None) -> None:
        bits = self.modulus_bits if bits is None else bits
        largest = participants * self.max_examples * (self.quantization_range - 1)
        if largest >= 2**bits:
            raise SecAggRejected(
                f"secure aggregation: {participants} participants x max_examples {self.max_examples} x "
                f"quantization_range {self.quantization_range} does not fit in modulus_bits {bits} "
                f"(needs {largest.bit_length()} bits)"
            )

    def check_participants(self, participants: Iterable[object]) -> list[int]:
        """The sorted participant ids, refused unless they fit this configuration."""
        ids = [_int(i, "a participant id", 0, MAX_ID) for i in participants]
        if len(set(ids)) != len(ids):
            raise SecAggRejected("secure aggregation: a participant id is named twice")
        if not 2 <= len(ids) <= MAX_PARTICIPANTS:
            raise SecAggRejected(
                f"secure aggregation needs 2 to {MAX_PARTICIPANTS} participants, not {len(ids)}"
            )
        self._check_room(len(ids))
        holders = min(self.num_shares, len(ids))
        if self.reconstruction_threshold > holders:
            raise SecAggRejected(
                f"secure aggregation: reconstruction_threshold {self.reconstruction_threshold} exceeds "
                f"the {holders} holders of each secret"
            )
        if self.num_shares < len(ids) and self.num_shares % 2 == 0:
            raise SecAggRejected(
                f"secure aggregation: with {len(ids)} participants num_shares must be odd (the ring takes "
                f"as many neighbours on each side), not {self.num_shares}"
            )
        return sorted(ids)

    def wire(self) -> dict[str, Any]:
        """The configuration as JSON-safe values, for the round's start message."""
        return asdict(self)

    @classmethod
    def from_wire(cls, data: object) -> SecAggConfig:
        """A configuration another node sent, held to the same rules as one made here."""
        if not isinstance(data, Mapping):
            raise SecAggRejected("secure aggregation: the configuration must be an object")
        fields = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in data if k not in fields)
        missing = sorted(k for k in ("num_shares", "reconstruction_threshold") if k not in data)
        if unknown or missing:
            raise SecAggRejected(
                f"secure aggregation: configuration fields unknown {unknown or '-'}, missing {missing or '-'}"
            )
        return cls(**{str(k): v for k, v in data.items()})


def check_context(round_context: object) -> bytes:
    """The round context (names the federation and the round): bytes, 1 to 256 of them."""
    if not isinstance(round_context, bytes) or not 1 <= len(round_context) <= MAX_CONTEXT_BYTES:
        raise SecAggRejected(f"secure aggregation: the round context must be 1 to {MAX_CONTEXT_BYTES} bytes")
    return round_context


def framed(round_context: bytes, *ids: int) -> bytes:
    """The round context and ids, length-prefixed so no two (context, ids) give the same bytes."""
    return struct.pack(">H", len(round_context)) + round_context + b"".join(struct.pack(">H", i) for i in ids)


def neighbours(config: SecAggConfig, ids: list[int], round_context: bytes) -> dict[int, frozenset[int]]:
    """Each participant's neighbourhood (itself included): all, or a hashed ring of ``num_shares``."""
    if config.num_shares >= len(ids):
        everyone = frozenset(ids)
        return {i: everyone for i in ids}
    order = sorted(ids, key=lambda i: hashlib.sha256(GRAPH_LABEL + framed(round_context, i)).digest())
    half = config.num_shares // 2
    n = len(order)
    return {
        node: frozenset(order[(at + offset) % n] for offset in range(-half, half + 1))
        for at, node in enumerate(order)
    }
