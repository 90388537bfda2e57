"""The metrics a job reports about itself: a small typed document, not a free channel.

A job may write a metrics file (``output.metrics``); its consumer reads what the node makes
of it. Free text or arrays there would carry the provider's data out, so the node accepts
only a JSON object of at most :data:`MAX_METRICS` finite numbers, under names the job spec
declared before the job saw any data (``output.metric_names``, each
``[A-Za-z][A-Za-z0-9_.-]{0,63}``), and rounds every value to :data:`SIGNIFICANT_DIGITS`
significant digits. The consumer gets them in the declared order. Anything else — nested
objects, strings, booleans, undeclared or repeated names, too many entries, a file over
:data:`MAX_BYTES` — fails the job, with a reason that quotes nothing from the file.

What remains is a bounded channel: at most 8 numbers of 4 significant digits — with sign and
exponent about 23.4 bits each, 187 bits per job (and a bit for each declared name left out).
That is less than one row of the digits (64 pixels of 17 levels: 262 bits); a dataset with
narrow rows can lose about one row per job this way, bounded by the agreement's uses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training_jobs.failures import JobFailed

MAX_METRICS = 8
MAX_BYTES = 4096
SIGNIFICANT_DIGITS = 4


class MetricsRejected(JobFailed):
    """The job's metrics file is not the small document the node accepts."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise MetricsRejected("the metrics file names one metric twice")
    return dict(pairs)


def rounded(value: float) -> float:
    """``value`` to :data:`SIGNIFICANT_DIGITS` significant digits."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def read_metrics(path: Path, declared: Sequence[str]) -> dict[str, float]:
    """The metrics the node passes on, or :class:`MetricsRejected` with the node's reason."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise MetricsRejected(f"the metrics file is larger than {MAX_BYTES} bytes")
    try:
        document = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError):
        raise MetricsRejected("the metrics file is not JSON") from None
    if not isinstance(document, dict):
        raise MetricsRejected("the metrics file is not a JSON object of named numbers")
    if len(document) > MAX_METRICS:
        raise MetricsRejected(f"the metrics file has more than {MAX_METRICS} entries")
    metrics: dict[str, float] = {}
    for position, (name, value) in enumerate(document.items(), start=1):
        if name not in declared:
            raise MetricsRejected(
                f"entry {position} of the metrics file is not a metric the job spec declared "
                "(output.metric_names)"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricsRejected(f"the metric {name} is not a number")
        number = float(value) if abs(value) < 1e300 else math.inf
        if not math.isfinite(number):
            raise MetricsRejected(f"the metric {name} is not a finite number")
        metrics[name] = rounded(number)
    return {name: metrics[name] for name in declared if name in metrics}
