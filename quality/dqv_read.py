"""A peer's DCAT dataset read back into quality evidence (:func:`quality.dqv.evidence`'s shape).

The peer's document is hostile: only the properties :func:`quality.dqv.dataset_fields` writes
are read, each through :mod:`quality.bounded`, and the result passes through
:func:`quality.dqv.evidence`, so it is held to the same caps as this node's own evidence.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from quality.bounded import count, integer, listed, text
from quality.dqv import MAX_COLUMNS, MAX_FAILING, METRICS, STATUS, TYPES, evidence


def read_dataset(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The evidence a peer's DCAT dataset states (None when it states none)."""
    status = dataset.get(STATUS)
    if not isinstance(status, str):
        return None
    schema = _schema(dataset)
    body = _first_body(dataset.get("dqv:hasQualityAnnotation"))
    summary = None
    if body is not None:
        summary = {
            "success": body.get("agora:success"),
            "evaluated": body.get("agora:expectationsEvaluated"),
            "passed": body.get("agora:expectationsPassed"),
            "failed": body.get("agora:expectationsFailed"),
            "failing_columns": body.get("agora:failingColumns"),
            "failing": [_unprefixed(f) for f in listed(body.get("agora:failingExpectations"), MAX_FAILING)],
            "suite": body.get("agora:suite"),
        }
    profile = _profile(dataset)
    if profile and schema:  # a measurement names its column, the schema its type
        described = schema.get("columns") or schema.get("arrays") or []
        types = {c.get("name"): c.get("type") or c.get("dtype") for c in described}
        for column in profile["columns"]:
            column["type"] = types.get(column["name"])
    source = dataset.get("agora:source")
    found = evidence(
        status=status,
        schema=schema,
        profile=profile,
        summary=summary,
        source=_unprefixed(source) if isinstance(source, dict) else None,
        validation_sha256=str(body.get("agora:sha256") or "") if body else None,
        validation_asset_id=str(body.get("agora:assetId") or "") if body else None,
        validation_anchor=str(body.get("agora:anchorStatus") or "") if body else None,
    )
    if dataset.get("agora:frequentValuesOmitted") is True:
        found["frequent_omitted"] = True
    return found


def _schema(dataset: dict[str, Any]) -> dict[str, Any] | None:
    stated = dataset.get("csvw:tableSchema")
    table: dict[str, Any] = stated if isinstance(stated, dict) else {}
    columns = listed(table.get("csvw:column"), MAX_COLUMNS)
    origin = text(dataset.get("agora:schemaOrigin") or "")
    if columns:
        return {
            "origin": origin,
            "columns": [
                {
                    "name": c.get("csvw:name"),
                    "type": c.get("agora:type") or TYPES.get(str(c.get("csvw:datatype")), "string"),
                    "role": c.get("agora:role"),
                    "unit": c.get("agora:unit"),
                }
                for c in columns
            ],
            "omitted": (integer(table.get("agora:columnsOmitted")) or 0)
            + max(0, count(table.get("csvw:column")) - MAX_COLUMNS),
        }
    if isinstance(dataset.get("agora:arrays"), list):
        return {"origin": origin, "arrays": [_unprefixed(a) for a in listed(dataset["agora:arrays"], 64)]}
    return None


def _profile(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The profile the measurements state: the row count of the dataset, the figures of each
    column (by the column IRI :func:`quality.dqv.column_id` gives it)."""
    items = listed(dataset.get("dqv:hasQualityMeasurement"), MAX_COLUMNS * (len(METRICS) + 1) + 1)
    if not items:
        return None
    dataset_id = str(dataset.get("@id") or "")
    rows: Any = None
    columns: dict[str, dict[str, Any]] = {}
    prefix = f"{dataset_id}/column/"
    for m in items:
        metric = _ref(m.get("dqv:isMeasurementOf")).removeprefix("agora:")
        on = _ref(m.get("dqv:computedOn"))
        value = m.get("dqv:value")
        if metric == "rowCount" and on == dataset_id:
            rows = value
        elif on.startswith(prefix) and (metric in METRICS or metric == "frequentValues"):
            name = unquote(on.removeprefix(prefix))
            if name not in columns and len(columns) >= MAX_COLUMNS:
                continue
            column = columns.setdefault(name, {"name": name})
            if metric == "frequentValues":
                column["frequent"] = value.get("@value") if isinstance(value, dict) else None
            else:
                column[metric] = value
    return {
        "rows": rows,
        "k": dataset.get("agora:profileThreshold"),
        "columns": list(columns.values()),
        "omitted": dataset.get("agora:profileColumnsOmitted"),
    }


def _ref(node: Any) -> str:
    """The ``@id`` of a node reference (``{"@id": …}``), bounded; anything else: ""."""
    return text(node.get("@id")) if isinstance(node, dict) else ""


def _first_body(annotations: Any) -> dict[str, Any] | None:
    for a in listed(annotations, 4):
        body = a.get("oa:hasBody")
        if isinstance(body, dict):
            return body
    return None


def _unprefixed(doc: dict[str, Any]) -> dict[str, Any]:
    return {str(k).removeprefix("agora:"): v for k, v in list(doc.items())[:32]}
