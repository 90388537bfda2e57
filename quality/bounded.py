"""Bounds for values that reach the catalog, a peer's included: each reader takes what it
expects (a list of dicts, a scalar, a finite number, a digest) and cuts it to its cap;
anything else is nothing. Standard library only."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_TEXT = 200
MAX_VALUE = 64  # a frequent value's text


def listed(value: Any, cap: int, *, dicts: bool = True) -> list[Any]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:cap] if isinstance(v, dict) == dicts]


def size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def text(value: Any) -> str:
    """A scalar as bounded text; anything else (a peer's nested structure) as nothing."""
    return str(value)[:MAX_TEXT] if isinstance(value, str | int | float) else ""


def scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    figure = number(value)
    return figure if figure is not None else text(value)[:MAX_VALUE]


def hexdigest(value: str | None) -> str:
    text = (value or "").removeprefix("sha256:").lower()
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else ""


def number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    return value if math.isfinite(value) and abs(value) < 1e300 else None


def integer(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else None
