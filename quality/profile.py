"""A dataset version's profile: what a consumer may learn of its contents without a row.

Tables (the DataFrame the validation ran on, read once): the row count and per column its
type, its share of nulls, for numbers min/max/mean/std, and for categories and strings the
number of distinct values and the most frequent ones, each listed only when it appears at
least ``k`` times (``AGORA_PROFILE_MIN_COUNT``, default 10): a value held by fewer records
than that is never named, so the profile cannot single out a record by its category. Nor by
the complement: when the records the listed values leave over (rows, less nulls, less the
listed counts) are more than none but fewer than ``k``, the least frequent listed values are
left out too until the rest is none or at least ``k`` (10 ``True`` and 1 ``False`` list
nothing). A number column with fewer than ``k`` non-null values shows no min/max/mean/std (a
table of one row would give its record away). A column whose role is ``id`` gets no values
at all (only its type and null share). ``.npz`` arrays: shape, dtype and, for numbers with
at least ``k`` rows (the first axis), min/max/mean; an array whose header says it would take
more memory than the run may use is refused before it is loaded (a zip of zeros compresses
a hundredfold and more).

Every figure is computed column by column with pandas' vectorised reductions, so the extra
memory is one column's temporary at a time, not a copy of the table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

TOP_VALUES = 10  # at most this many frequent values per column
MAX_VALUE_CHARS = 100  # a listed value is cut to this length
NUMERIC_TYPES = ("integer", "float")
VALUE_TYPES = ("category", "string", "boolean")


def profile_table(frame: pd.DataFrame, schema: dict[str, Any] | None, *, min_count: int) -> dict[str, Any]:
    """The profile of a table; ``schema`` (declared or inferred columns) gives each column's
    type and role, the DataFrame's dtypes stand in where it says nothing."""
    if min_count < 2:
        raise ValueError("a profile lists values held by at least 2 records (AGORA_PROFILE_MIN_COUNT >= 2)")
    declared = {c["name"]: c for c in (schema or {}).get("columns") or []}
    rows = len(frame)
    columns = []
    for name in frame.columns:
        spec = declared.get(str(name), {})
        series = frame[name]
        kind = spec.get("type") or dtype_kind(series)
        role = spec.get("role") or "feature"
        nulls = int(series.isna().sum())
        column: dict[str, Any] = {
            "name": str(name),
            "type": kind,
            "role": role,
            "null_share": nulls / rows if rows else 0.0,
        }
        if role != "id":
            column.update(_figures(series, kind, min_count))
        columns.append(column)
    return {"rows": rows, "min_count": min_count, "columns": columns}


class TooLarge(ValueError):
    """An ``.npz`` array would not fit the run's memory once loaded (its header says so)."""


def profile_arrays(path: Path, *, min_count: int, max_bytes: int) -> dict[str, Any]:
    """The profile of an ``.npz``: per array its shape and dtype, and min/max/mean of numbers
    (of arrays with at least ``min_count`` rows). Each array's size is read from its header
    first: one over ``max_bytes`` raises :class:`TooLarge` before anything is decompressed."""
    import numpy as np

    from quality.sampling import npz_headers

    if min_count < 2:
        raise ValueError("a profile lists values held by at least 2 records (AGORA_PROFILE_MIN_COUNT >= 2)")
    for header in npz_headers(path):
        size = math.prod(header.shape) * header.dtype.itemsize
        if size > max_bytes:
            raise TooLarge(
                f"the .npz array {header.name} takes {size} bytes once loaded; "
                f"the run may use {max_bytes} (AGORA_QUALITY_MAX_MEMORY)"
            )
    arrays = []
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            array = archive[name]
            entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "dtype": str(array.dtype)}
            rows = array.shape[0] if array.ndim else 1  # a 0-d array is one value
            if (
                array.size
                and rows >= min_count
                and np.issubdtype(array.dtype, np.number)
                and not np.issubdtype(array.dtype, np.complexfloating)
            ):
                entry.update(
                    min=_finite(array.min()),
                    max=_finite(array.max()),
                    mean=_finite(array.mean(dtype=np.float64)),
                )
            arrays.append(entry)
    return {"arrays": arrays}


def dtype_kind(series: pd.Series) -> str:
    """A column's type in the schema's words, from its pandas dtype."""
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def _figures(series: pd.Series, kind: str, min_count: int) -> dict[str, Any]:
    import pandas as pd

    if (
        kind in NUMERIC_TYPES
        and pd.api.types.is_numeric_dtype(series.dtype)
        and not pd.api.types.is_bool_dtype(series.dtype)
    ):
        if int(series.count()) < min_count:
            return {}  # the extremes of fewer than k values are those values
        return {
            "min": _finite(series.min()),
            "max": _finite(series.max()),
            "mean": _finite(series.mean()),
            "std": _finite(series.std()),
        }
    if kind in VALUE_TYPES or kind in NUMERIC_TYPES:  # numbers stored as text: counted as values
        counts = series.value_counts(dropna=True, sort=True)
        frequent = counts[counts >= min_count]
        if len(frequent) > TOP_VALUES:  # the cut falls inside a tie: keep everything tied with it
            frequent = frequent[frequent >= frequent.iloc[TOP_VALUES - 1]]
        top = sorted(((_value(v), int(c)) for v, c in frequent.items()), key=lambda t: (-t[1], str(t[0])))
        top = top[:TOP_VALUES]  # ties by value: stable
        rest = int(counts.sum()) - sum(c for _, c in top)  # the records no listed value holds
        while top and 0 < rest < min_count:  # the complement would single them out
            rest += top.pop()[1]
        return {"distinct": len(counts), "top": [{"value": v, "count": c} for v, c in top]}
    return {}  # datetimes: the type and the null share only


def _value(value: Any) -> str | int | float | bool:
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # a numpy scalar
        return _value(value.item())
    return str(value)[:MAX_VALUE_CHARS]


def _finite(value: Any) -> int | float | None:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None
