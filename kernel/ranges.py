"""HTTP byte ranges (RFC 9110 §14): resumable downloads of large objects."""

from __future__ import annotations

import re

from kernel.errors import AgoraError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(AgoraError):
    type_slug = "range-not-satisfiable"
    status = 416
    title = "Range not satisfiable"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end_exclusive)`` for a single-range header, ``None`` for the whole body.

    Multi-range requests are answered with the whole body, as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(f"empty suffix range; the object has {size} bytes", size=size)
        return max(size - length, 0), size
    start = int(first)
    end = size if last == "" else min(int(last) + 1, size)
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {header} is outside the object's {size} bytes", size=size)
    return start, end
