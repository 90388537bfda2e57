"""A dataset version checked against its expectation suite with Great Expectations 1.x, and
what of the outcome may leave the node.

:func:`validate` runs the suite on a DataFrame already read (the profile reads the same one):
an ephemeral context, a pandas data source, a dataframe asset with a whole-dataframe batch
definition, the suite built from the stored dicts, one ``ValidationDefinition`` run. Usage
analytics are off twice over (``GX_ANALYTICS_ENABLED=False`` before GX is imported, and the
context's own ``analytics_enabled``); GX 1.24 sends nothing anyway, but a later release may.

GX's results carry rows: ``partial_unexpected_list``, index lists, counts per unexpected
value, observed values that are lists of the data's values. The kept document is built from
an allow-list, so a field GX adds later is left out rather than let through:

* per expectation its type, the provider's own kwargs (as declared, not GX's echo), success,
  ``element_count``, ``unexpected_count``, ``unexpected_percent``, ``missing_count`` and an
  ``observed_value`` only when it is a single finite number and its column is not an ``id``;
* an expectation that could not run says so in a fixed sentence (GX's message may quote data);
* an expectation with a ``row_condition`` or ``condition_parser`` keeps neither counts nor an
  observed value (:mod:`quality.spec` refuses them at declaration; a suite stored before that
  still cannot single out records through them).

Checking a declared expectation's type (:func:`check_type`) reads the committed list of GX's
names (``gx_expectations.json``) and never imports GX: it runs on every registration.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

NAMES_FILE = Path(__file__).with_name("gx_expectations.json")
COLUMN_KWARGS = ("column", "column_A", "column_B")
COLUMN_LIST_KWARGS = ("column_list",)
CONDITION_KWARGS = ("row_condition", "condition_parser")  # as quality.spec refuses them
COUNTS = ("element_count", "unexpected_count", "unexpected_percent", "missing_count")
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}  # no row is even collected


@functools.cache
def gx_names() -> dict[str, list[str]]:
    """The committed GX 1.x expectation names: ``pandas`` (what runs on a file) and ``sql_only``."""
    data: dict[str, Any] = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
    return {"pandas": list(data["pandas"]), "sql_only": list(data["sql_only"])}


def check_type(name: str) -> str:
    """``name`` if Great Expectations can run it on a file; ``ValueError`` saying why not."""
    names = gx_names()
    if name in names["pandas"]:
        return name
    if name in names["sql_only"]:
        raise ValueError(f"{name} needs a SQL data source; datasets are validated with pandas")
    raise ValueError(f"{name} is not a Great Expectations expectation type")


def columns_of(kwargs: dict[str, Any]) -> list[str]:
    """The column names an expectation's kwargs point at (provider-declared names, not data)."""
    found = [kwargs[k] for k in COLUMN_KWARGS if isinstance(kwargs.get(k), str)]
    for key in COLUMN_LIST_KWARGS:
        value = kwargs.get(key)
        if isinstance(value, list):
            found += [c for c in value if isinstance(c, str)]
    return list(dict.fromkeys(found))


class SuiteError(ValueError):
    """The suite cannot run at all (an expectation's kwargs do not fit its type)."""


def validate(frame: pd.DataFrame, suite: dict[str, Any], *, id_columns: set[str]) -> list[dict[str, Any]]:
    """Run ``suite`` on ``frame``; one kept row per declared expectation, in the suite's order."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # read by GX when it is imported
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    declared = suite["expectations"]
    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("agora")
        .add_dataframe_asset("version")
        .add_batch_definition_whole_dataframe("whole")
    )
    gx_suite = gx.ExpectationSuite(name=str(suite.get("name") or "suite"))
    for number, item in enumerate(declared):
        try:
            expectation = ExpectationConfiguration(
                type=item["type"], kwargs=dict(item.get("kwargs") or {}), meta=dict(item.get("meta") or {})
            ).to_domain_obj()
        except Exception as exc:  # pydantic (v1) inside GX, or GX's own configuration errors
            raise SuiteError(f"expectation {number + 1} ({item['type']}): {_config_problem(exc)}") from None
        gx_suite.add_expectation(expectation)
    gx_suite = context.suites.add(gx_suite)
    order = {e.id: n for n, e in enumerate(gx_suite.expectations)}
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="agora", data=batch, suite=gx_suite)
    )
    outcome = definition.run(batch_parameters={"dataframe": frame}, result_format=RESULT_FORMAT)
    rows: list[dict[str, Any] | None] = [None] * len(declared)
    for result in outcome.results:
        config = result.expectation_config
        if config is None or config.id not in order:
            continue  # reported below as no result
        number = order[config.id]
        rows[number] = kept_result(
            declared[number],
            success=bool(result.success),
            result=dict(result.result or {}),
            raised=_raised(result.exception_info),
            id_columns=id_columns,
        )
    missing = [n + 1 for n, row in enumerate(rows) if row is None]
    if missing:
        raise SuiteError(f"Great Expectations returned no result for expectation(s) {missing}")
    return [row for row in rows if row is not None]


def kept_result(
    declared: dict[str, Any],
    *,
    success: bool,
    result: dict[str, Any],
    raised: bool,
    id_columns: set[str],
) -> dict[str, Any]:
    """One expectation's outcome without a row of the data (the allow-list above)."""
    kwargs = dict(declared.get("kwargs") or {})
    row: dict[str, Any] = {"type": declared["type"], "kwargs": kwargs, "success": success and not raised}
    if any(key in kwargs for key in CONDITION_KWARGS):
        return row  # figures of the rows a condition picks are figures of those records
    for key in COUNTS:
        value = _number(result.get(key))
        if value is not None:
            row[key] = value
    observed = _number(result.get("observed_value"))
    if observed is not None and not set(columns_of(kwargs)) & id_columns:
        row["observed_value"] = observed
    if raised:
        row["error"] = (
            "it could not be evaluated on this data (a column it names is missing or of another type)"
        )
    return row


def document(
    rows: list[dict[str, Any]], *, suite: dict[str, Any], offering_id: str, version: int, dataset_sha256: str
) -> dict[str, Any]:
    """The validation result the node stores and notarizes (canonical JSON, no timestamps: the
    same version, suite and engine give the same document and the same hash)."""
    import great_expectations

    passed = sum(1 for r in rows if r["success"])
    return {
        "type": "agora.validation-result",
        "offering": offering_id,
        "version": version,
        "dataset_sha256": dataset_sha256,
        "suite": str(suite.get("name") or "suite"),
        "engine": f"great_expectations {great_expectations.__version__}",
        "success": passed == len(rows),
        "statistics": {"evaluated": len(rows), "passed": passed, "failed": len(rows) - passed},
        "results": rows,
    }


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What the API and the catalog show of a stored result: counts, failing columns, and per
    expectation a compact row (type, columns, success, the figures kept)."""
    failing: list[str] = []
    compact = []
    for row in doc["results"]:
        columns = columns_of(row["kwargs"])
        if not row["success"]:
            failing += [c for c in columns if c not in failing]
        item: dict[str, Any] = {"type": row["type"], "columns": columns, "success": row["success"]}
        for key in ("unexpected_count", "unexpected_percent", "observed_value", "error"):
            if key in row:
                item[key] = row[key]
        compact.append(item)
    stats = doc["statistics"]
    return {
        "success": doc["success"],
        "evaluated": stats["evaluated"],
        "passed": stats["passed"],
        "failed": stats["failed"],
        "failing_columns": failing,
        "suite": doc["suite"],
        "results": compact,
    }


def _number(value: Any) -> int | float | None:
    """A single finite number (numpy scalars included), else None: lists, strings, dates and
    dicts are values taken from the data."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def _raised(info: Any) -> bool:
    """GX reports an exception flat (``raised_exception``) or per metric (a dict of those)."""
    if not isinstance(info, dict):
        return False
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _config_problem(exc: Exception) -> str:
    """Which kwargs are wrong, from pydantic's error list (field names and messages only: the
    provider's own values are not repeated)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            found = errors()
        except Exception:
            found = []
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in found[:5]]
        if parts:
            return "; ".join(dict.fromkeys(parts))
    return f"its kwargs do not fit the expectation ({type(exc).__name__})"
