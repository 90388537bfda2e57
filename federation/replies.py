"""What the node accepts of a warm trainer's reply, and how it says no.

The trainer's process runs the bundle's code beside the provider's rows, so everything in a
reply is the code's choice. What goes on is checked here: the weights (safetensors, then
:func:`federation.tensors.check_update` against the federation's layout), the layout a
process reports at ``hello``, the metrics (at most 8, under declared names, finite, rounded
to 4 significant digits), counts within the rows the node gave and figures within their
range. A refusal is :class:`UpdateRefused` in the node's own words: it names the
federation's tensors and the node's numbers, never a name, shape, size or text the code
chose (that would be a channel out of the provider); the full detail is in ``private``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from federation.tensors import ALLOWED_DTYPES, UpdateRejected, Weights, check_update, decode, in_order
from federation.warm_process import TrainerFailed
from training_jobs.job_metrics import MAX_METRICS, rounded

Layout = Mapping[str, tuple[list[int], str]]
MAX_LAYOUT_ENTRIES = 10_000
MAX_DIMS, MAX_SIZE, MAX_NAME = 8, 2**31, 300
_EXPECTED_NAME = re.compile(r"tensor (\S+) (has shape|has dtype|holds values)")
_REFUSALS = {
    "has shape": "has the wrong shape",
    "has dtype": "has the wrong dtype",
    "holds values": "holds values that are not finite (NaN or infinity)",
}


class UpdateRefused(TrainerFailed):
    """What the trainer returned may not leave the node (tensors, metrics or counts)."""

    type_slug = "update-refused"
    title = "Local update refused"


def checked_weights(payload: bytes, layout: Layout, max_bytes: int, what: str) -> Weights:
    """The weights of a reply, in the layout's order, or :class:`UpdateRefused`."""
    try:
        weights = decode(payload, what=what)
    except UpdateRejected as exc:
        raise UpdateRefused(
            f"{what} the trainer returned is not a safetensors file", private=exc.detail
        ) from None
    try:
        check_update(weights, layout, max_bytes=max_bytes, what=what)
    except UpdateRejected as exc:
        raise UpdateRefused(public_refusal(exc.detail, what, layout), private=exc.detail) from None
    return in_order(weights, list(layout))


def checked_metrics(raw: Any, declared: Sequence[str]) -> dict[str, float]:
    """At most 8 finite numbers under declared names, rounded, in the declared order."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UpdateRefused("the trainer's metrics are not named numbers")
    if len(raw) > MAX_METRICS:
        raise UpdateRefused(f"the trainer reported more than {MAX_METRICS} metrics")
    metrics: dict[str, float] = {}
    for name, value in raw.items():
        if name not in declared:
            raise UpdateRefused("the trainer reported a metric the federation does not declare")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UpdateRefused(f"the trainer's metric {name} is not a finite number")
        metrics[name] = rounded(float(value))
    return {name: metrics[name] for name in declared if name in metrics}


def reported_layout(raw: Any, role: str) -> dict[str, tuple[list[int], str]]:
    """The [[name, shape, dtype], …] a process reports at ``hello``, as a layout."""
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_LAYOUT_ENTRIES:
        raise UpdateRefused(f"the {role} reported no usable layout of the model")
    layout: dict[str, tuple[list[int], str]] = {}
    for entry in raw:
        if not _layout_entry(entry):
            raise UpdateRefused(f"the {role} reported no usable layout of the model")
        layout[entry[0]] = (list(entry[1]), entry[2])
    return layout


def _layout_entry(entry: Any) -> bool:
    """``[name, [sizes…], dtype]``."""
    if not (isinstance(entry, list) and len(entry) == 3):
        return False
    name, shape, dtype = entry
    sizes_ok = (
        isinstance(shape, list)
        and len(shape) <= MAX_DIMS
        and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_SIZE for d in shape)
    )
    return isinstance(name, str) and len(name) <= MAX_NAME and dtype in ALLOWED_DTYPES and sizes_ok


def same_layout(reported: Layout, expected: Layout, role: str) -> None:
    """The model the bundle builds has exactly the federation's tensors (names said are ours)."""
    differs = f"the model the bundle builds in the {role} does not match the federation's weights"
    extra = [name for name in reported if name not in expected]
    if extra:
        raise UpdateRefused(f"{differs}: it has {len(extra)} tensors the federation's weights do not")
    for name, (shape, dtype) in expected.items():
        if name not in reported:
            raise UpdateRefused(f"{differs}: it lacks the tensor {name}")
        if reported[name] != (shape, dtype):
            raise UpdateRefused(f"{differs}: tensor {name} has another shape or dtype than {shape} {dtype}")


def public_refusal(detail: str, what: str, layout: Layout) -> str:
    """``check_update``'s refusal said in words that quote nothing the trainer chose: only a
    name of the federation's own tensors, never the trainer's names, shapes or sizes."""
    if detail.startswith(f"{what} holds tensors"):
        return f"{what} was refused: it holds tensors the model does not have"
    if detail.startswith(f"{what} lacks"):
        return f"{what} was refused: it lacks tensors of the model"
    found = _EXPECTED_NAME.match(detail, len(what) + 2)
    if found and found.group(1) in layout:
        kind = _REFUSALS[found.group(2)]
        return f"{what} was refused: tensor {found.group(1)} {kind}"
    return f"{what} was refused: it is over the size cap"


def count_within(value: Any, rows: int, what: str) -> int:
    """A count of examples the process reports: an integer within the rows it was given."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= rows:
        raise UpdateRefused(
            f"the number of examples the trainer reported for {what} is not within its {rows} rows"
        )
    return value


def figure(value: Any, name: str, *, low: float, high: float = math.inf) -> float:
    """A finite number within [low, high], rounded like the metrics."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise UpdateRefused(f"the {name} the trainer reported is not a number within [{low:g}, {high:g}]")
    return rounded(float(value))
