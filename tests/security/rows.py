"""Counting the provider's rows in what a consumer received: the measure of the hostile job tests.

The digits dataset's pixels are multiples of 1/16 in [0, 1], so a row is 64 integers 0-16.
The counter looks for any row, whole and in order, in every sequence of numbers the consumer
can read, in two spellings: the pixel values themselves (within 0.02/16) and the integers
0-16. The sequences come from

* JSON documents (status, result, log lines, provenance): the numbers in document order, and
  the numbers written inside every string;
* an ONNX file: every tensor and numeric attribute (in C order and, for matrices, column
  major), the numbers written in every string field it holds, and its raw bytes read as
  float32 and float64 at every alignment;
* any other bytes: read the same way, and as text, and base64-decoded where they look it.

It is independent of the node's own memorization check: a different method, so the test does
not grade the product with the product's code.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROW = 64
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
BASE64 = re.compile(rb"[A-Za-z0-9+/]{88,}={0,2}")
_WEIGHTS = np.random.default_rng(64).integers(1, 2**62, size=ROW, dtype=np.int64).astype(np.uint64)


def digit_rows(npz: Path) -> np.ndarray:
    """The dataset's rows as integers 0-16, shape (n, 64)."""
    with np.load(npz) as data:
        X = data["X"].reshape(len(data["X"]), -1)
    return np.rint(X * 16).astype(np.int64)


def _hash(windows: np.ndarray) -> np.ndarray:
    hashed: np.ndarray = (windows.astype(np.uint64) * _WEIGHTS).sum(axis=-1, dtype=np.uint64)
    return hashed


class RowCounter:
    """Which rows of the dataset appear in a set of received documents and files."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self._by_hash: dict[int, list[int]] = {}
        for i, h in enumerate(_hash(rows).tolist()):
            self._by_hash.setdefault(int(h), []).append(i)
        self._keys = np.fromiter(self._by_hash, dtype=np.uint64)

    def in_numbers(self, values: Iterable[float] | np.ndarray) -> set[int]:
        with np.errstate(invalid="ignore", over="ignore"):
            v = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
        v = np.nan_to_num(v.reshape(-1), nan=-1.0, posinf=-1.0, neginf=-1.0)
        if len(v) < ROW:
            return set()
        found: set[int] = set()
        scaled = v * 16
        pixels = np.where(
            (np.abs(scaled - np.rint(scaled)) < 0.02) & (scaled > -0.5) & (scaled < 16.5), np.rint(scaled), -1
        )
        integers = np.where((v == np.rint(v)) & (v >= 0) & (v <= 16), v, -1)
        for view in (pixels.astype(np.int64), integers.astype(np.int64)):
            windows = np.lib.stride_tricks.sliding_window_view(view, ROW)
            hashes = _hash(windows)
            for at in np.flatnonzero(np.isin(hashes, self._keys)):
                for row in self._by_hash[int(hashes[at])]:
                    if np.array_equal(windows[at], self.rows[row]):
                        found.add(row)
        return found

    def in_text(self, text: str) -> set[int]:
        return self.in_numbers([float(m) for m in NUMBER.findall(text) if len(m) < 40])

    def in_bytes(self, data: bytes) -> set[int]:
        found = self.in_text(data.decode("utf-8", "replace"))
        for dtype, size in ((np.float32, 4), (np.float64, 8), (np.float16, 2)):
            for offset in range(size):
                usable = (len(data) - offset) // size * size
                if usable >= ROW * size:
                    found |= self.in_numbers(np.frombuffer(data[offset : offset + usable], dtype=dtype))
        for match in BASE64.findall(data):
            try:
                decoded = base64.b64decode(match + b"=" * (-len(match) % 4))
            except (binascii.Error, ValueError):
                continue
            found |= self.in_bytes(decoded) if len(decoded) < len(data) else set()
        return found

    def in_json(self, document: Any) -> set[int]:
        numbers: list[float] = []
        found: set[int] = set()
        for value in _leaves(document):
            if isinstance(value, str):
                found |= self.in_text(value)
                numbers.extend(float(m) for m in NUMBER.findall(value) if len(m) < 40)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers.append(float(value))
        found |= self.in_numbers(numbers)
        return found | self.in_text(json.dumps(document))

    def in_onnx(self, data: bytes) -> set[int]:
        found = self.in_bytes(data)
        try:
            import onnx
            from onnx import numpy_helper

            model = onnx.load_model_from_string(data)
        except Exception:  # not an ONNX file: its bytes were read above
            return found
        from training_jobs.audit.walk import graphs

        for graph in graphs(model.graph):
            tensors = list(graph.initializer)
            for node in graph.node:
                for attribute in node.attribute:
                    found |= self.in_numbers(list(attribute.floats)) | self.in_numbers(list(attribute.ints))
                    tensors.extend([attribute.t] if attribute.HasField("t") else [])
                    tensors.extend(attribute.tensors)
            for tensor in tensors:
                try:
                    array = numpy_helper.to_array(tensor).astype(np.float64)
                except Exception:
                    continue
                found |= self.in_numbers(array.reshape(-1))
                if array.ndim >= 2:
                    found |= self.in_numbers(array.reshape(-1, array.shape[-1]).T.reshape(-1))
        found |= self.in_text(" ".join(_strings(model)))
        return found


def _leaves(document: Any) -> Iterator[Any]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield key
            yield from _leaves(value)
    elif isinstance(document, list):
        for value in document:
            yield from _leaves(value)
    else:
        yield document


def _strings(message: Any) -> Iterator[str]:
    """Every string and bytes field anywhere in a protobuf message, as text."""
    for field, value in message.ListFields():
        values = list(value) if field.is_repeated else [value]
        for item in values:
            if hasattr(item, "ListFields"):
                yield from _strings(item)
            elif isinstance(item, str):
                yield item
            elif isinstance(item, bytes) and field.name != "raw_data":
                yield item.decode("utf-8", "replace")
