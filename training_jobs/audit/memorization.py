"""Whether a model's numbers hold rows of the provider's data: the memorization check.

A model that stores training rows (nearest neighbours, support vectors, or a row hidden in a
weight) would hand the data to whoever receives the model. The check looks for any run of
:data:`WINDOW` consecutive feature values of a row (the whole row when it is shorter)
appearing within ``tolerance`` as a contiguous run of a flattened weight array — every
tensor and numeric attribute of the model, in C order and, for arrays of two or more
dimensions, column-major over the last axis as well (a transposed copy of the data).

It has to be fast on a model of millions of weights and a dataset of many rows, so it hashes:

* every weight value is quantised to bins of width ``BIN_FACTOR * tolerance``, and every
  window of :data:`KEY` consecutive bins of an array is hashed (vectorised: one
  multiply-add per key position);
* each row contributes the keys of its windows starting every :data:`STRIDE` values (so a
  stored run of ``WINDOW + STRIDE - 1`` values always contains one). A row value within
  ``tolerance`` of a bin edge may meet its stored copy in the neighbouring bin, so its
  window contributes the keys of both bins: no match within the tolerance is missed;
* only arrays positions whose hash is a row key are compared in full.

Windows that are almost all zeros say nothing about a row (a zero-padded weight matches
them), so a window counts only with at least :data:`MIN_NONZERO` values and three distinct
values away from zero; rows without such a window are reported as unchecked, as are all
rows when a row has fewer than :data:`MIN_FEATURES` values.

What it does not see: rows stored transformed (scaled, rotated, permuted, encoded in the
low bits of the weights). The job's consumer wrote the model; a determined one can encode
data in any set of numbers, and the offering's terms and use counts bound how much.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

WINDOW = 16
KEY = 8
STRIDE = 4
MIN_FEATURES = 8
MIN_NONZERO = 4
BIN_FACTOR = 32.0
RELATIVE_TOLERANCE = 1e-3
MAX_ENUMERATED = 64  # keys one window may contribute (near-edge values double them)
_BIN_LIMIT = 2**40
_MULTIPLIERS = np.random.default_rng(20261201).integers(1, 2**63, size=KEY, dtype=np.uint64) | np.uint64(1)


@dataclass(frozen=True)
class Memorized:
    """What the check found: indices of the rows stored in the weights, and how many rows it
    could not judge."""

    rows: frozenset[int]
    unchecked: int
    tolerance: float


def tolerance_for(rows: np.ndarray) -> float:
    """The match tolerance: a thousandth of the data's largest magnitude."""
    scale = float(np.max(np.abs(rows), initial=0.0)) if rows.size else 0.0
    return RELATIVE_TOLERANCE * (scale if scale > 0 else 1.0)


def _bins(values: np.ndarray, width: float) -> np.ndarray:
    return np.clip(np.floor(values / width + 0.5), -_BIN_LIMIT, _BIN_LIMIT).astype(np.int64)


def _hash(bins: np.ndarray) -> np.ndarray:
    """Hashes of the last axis of ``bins`` (shape ``(..., KEY)``) as uint64."""
    hashed: np.ndarray = (bins.astype(np.uint64) * _MULTIPLIERS).sum(axis=-1, dtype=np.uint64)
    return hashed


def _window_hashes(flat: np.ndarray, width: float) -> np.ndarray:
    """The hash of every run of KEY consecutive bins of ``flat`` (length ``len(flat) - KEY + 1``)."""
    bins = _bins(flat, width).astype(np.uint64)
    count = len(flat) - KEY + 1
    total = np.zeros(count, dtype=np.uint64)
    for i in range(KEY):
        total += bins[i : i + count] * _MULTIPLIERS[i]
    return total


class _RowIndex:
    """Row windows by the hash of their first KEY values."""

    def __init__(self, rows: np.ndarray, tolerance: float) -> None:
        self.rows = rows
        self.tolerance = tolerance
        self.width = BIN_FACTOR * tolerance
        self.length = min(WINDOW, rows.shape[1])
        self.by_key: dict[int, list[tuple[int, int]]] = {}
        self.checked: set[int] = set()
        d = rows.shape[1]
        starts = sorted({*range(0, d - self.length + 1, STRIDE), d - self.length})
        for start in starts:
            self._add_windows(start)

    def _add_windows(self, start: int) -> None:
        windows = self.rows[:, start : start + self.length]
        bins = _bins(windows, self.width)
        nonzero = bins != 0
        informative = nonzero.sum(axis=1) >= MIN_NONZERO
        ordered = np.sort(bins, axis=1)
        distinct = 1 + (np.diff(ordered, axis=1) != 0).sum(axis=1) - (~nonzero).any(axis=1)
        informative &= distinct >= 3
        key_bins = bins[:, :KEY]
        scaled = windows[:, :KEY] / self.width
        # a value within the tolerance of a bin edge may be stored in the neighbouring bin
        edge = self.tolerance / self.width
        lower = scaled - (key_bins - 0.5) < edge
        upper = (key_bins + 0.5) - scaled < edge
        base = _hash(key_bins)
        for r in map(int, np.flatnonzero(informative)):
            self.checked.add(r)
            if not (lower[r].any() or upper[r].any()):
                self.by_key.setdefault(int(base[r]), []).append((r, start))
                continue
            options = [
                [b] + ([b - 1] if lo else []) + ([b + 1] if up else [])
                for b, lo, up in zip(key_bins[r].tolist(), lower[r], upper[r], strict=True)
            ]
            for combination in itertools.islice(itertools.product(*options), MAX_ENUMERATED):
                key = int(_hash(np.array(combination, dtype=np.int64)))
                self.by_key.setdefault(key, []).append((r, start))

    def keys(self) -> np.ndarray:
        return np.fromiter(self.by_key.keys(), dtype=np.uint64, count=len(self.by_key))

    def matches(self, flat: np.ndarray) -> set[int]:
        """Rows with a window stored in ``flat``."""
        if len(flat) < self.length or not self.by_key:
            return set()
        hashes = _window_hashes(flat, self.width)[: len(flat) - self.length + 1]
        found: set[int] = set()
        for position in np.flatnonzero(np.isin(hashes, self.keys())):
            stored = flat[position : position + self.length]
            for row, start in self.by_key.get(int(hashes[position]), ()):
                if row in found:
                    continue
                window = self.rows[row, start : start + self.length]
                if np.max(np.abs(stored - window)) <= self.tolerance:
                    found.add(row)
        return found


def layouts(array: np.ndarray) -> Iterable[np.ndarray]:
    """The flat sequences an array can hold a row in: C order, and column-major over its last
    axis (a transposed copy) when it has two or more dimensions."""
    values = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    yield values.reshape(-1)
    if values.ndim >= 2 and values.shape[-1] > 1:
        yield values.reshape(-1, values.shape[-1]).T.reshape(-1)


def find_memorized(
    rows: np.ndarray, arrays: Iterable[np.ndarray], *, tolerance: float | None = None
) -> Memorized:
    """Rows of ``rows`` (one per row, any shape after the first axis) stored in ``arrays``."""
    table = np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)
    tol = tolerance if tolerance is not None else tolerance_for(table)
    if table.shape[1] < MIN_FEATURES or len(table) == 0:
        return Memorized(frozenset(), len(table), tol)
    index = _RowIndex(table, tol)
    found: set[int] = set()
    for array in arrays:
        for flat in layouts(array):
            found |= index.matches(flat)
    return Memorized(frozenset(found), len(table) - len(index.checked), tol)
