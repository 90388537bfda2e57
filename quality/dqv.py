"""A dataset version's quality evidence as the catalog publishes it: the W3C Data Quality
Vocabulary (DQV) for the profile and the validation result, CSVW for the schema.

Three pure functions, no I/O and no heavy import:

* :func:`evidence` turns what a version holds (its schema, profile, validation summary,
  quality status, DVC source, validation anchor) into one bounded, typed dict — what
  ``CatalogEntry.document["agora:evidence"]`` keeps and the web UI shows;
* :func:`dataset_fields` renders that evidence as DCAT dataset properties
  (``csvw:tableSchema``, ``dqv:hasQualityMeasurement``, ``dqv:hasQualityAnnotation``, ``agora:…``);
* :func:`read_dataset` reads those properties back from a peer's DCAT dataset into the same
  evidence shape, under the same caps: a peer's document is hostile.

Guarantees: the renderer only ever sees the profile and the summary (aggregates the profile
module computed under its k-threshold), never the data; it drops anything that is not one of
the expected fields, every string is cut at :data:`MAX_TEXT`, every list at its cap, numbers
must be finite. A DVC repository's location is not published (a path on the provider's disk,
a URL that may hold a credential): only the commit, the path inside it and the md5.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote, unquote

from quality.spec import QUALITY_STATUSES

DQV = "http://www.w3.org/ns/dqv#"
CSVW = "http://www.w3.org/ns/csvw#"
OA = "http://www.w3.org/ns/oa#"
AGORA = "https://w3id.org/agora/ns#"
PREFIXES = {"dqv": DQV, "csvw": CSVW, "oa": OA, "agora": AGORA, "xsd": "http://www.w3.org/2001/XMLSchema#"}
CONTEXT_DOCUMENT: dict[str, Any] = {"@context": {"@version": 1.1, **PREFIXES}}

EVIDENCE = "agora:evidence"  # the key of the evidence in a catalog entry's document
STATUS = "agora:qualityStatus"  # the version's quality status, beside it (the list's badge)

MAX_COLUMNS = 256  # columns (and their measurements) a catalog entry carries
MAX_FREQUENT = 10
MAX_FAILING = 50
MAX_EXPECTATIONS = 500  # quality.spec.MAX_EXPECTATIONS
MAX_TEXT = 200
MAX_VALUE = 64  # a frequent value's text
MAX_STORED = 64 * 1024  # a peer's evidence, as JSON: past it only status, validation and source stay
SOURCE_FIELDS = ("kind", "path", "rev", "commit", "md5")

_DATATYPES = {
    "integer": "integer",
    "float": "double",
    "string": "string",
    "boolean": "boolean",
    "category": "string",
    "datetime": "dateTime",
}
_TYPES = {v: k for k, v in _DATATYPES.items() if k != "category"}
_METRICS = ("completeness", "min", "max", "mean", "std", "distinct")


# The evidence ------------------------------------------------------------------------------


def evidence(
    *,
    status: str,
    schema: dict[str, Any] | None,
    profile: dict[str, Any] | None,
    summary: dict[str, Any] | None,
    source: dict[str, Any] | None,
    validation_sha256: str | None = None,
    validation_asset_id: str | None = None,
    validation_anchor: str | None = None,
) -> dict[str, Any]:
    """A version's evidence, bounded: what the catalog keeps and renders.

    ``schema`` is the version's schema document (``{"columns": […]}`` or ``{"arrays": […]}``,
    possibly under ``"schema"`` with its ``origin``); ``profile`` the profile without rows
    (``rows`` and per column ``null_share``, ``min``/``max``/``mean``, ``distinct``,
    ``frequent`` ``[{value, count}]``); ``summary`` the validation summary (``success``,
    ``evaluated``/``passed``/``failed``, ``failing_columns``, ``failing``, ``suite``).
    """
    validation = validation_summary(summary)
    if validation is not None or validation_sha256:
        validation = {
            **(validation or _summary({})),
            "sha256": _hex(validation_sha256),
            "asset_id": _text(validation_asset_id or ""),
            "anchor_status": _text(validation_anchor or ""),
        }
    return {
        "status": status if status in QUALITY_STATUSES else "unknown",
        "schema": _schema(schema),
        "schema_origin": _text((schema or {}).get("origin") or (schema or {}).get("source") or ""),
        "profile": _profile(profile),
        "validation": validation,
        "source": _source(source),
    }


def _schema(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    inner: dict[str, Any] = doc["schema"] if isinstance(doc.get("schema"), dict) else doc
    columns, arrays = _list(inner.get("columns"), MAX_COLUMNS), _list(inner.get("arrays"), 64)
    if columns:
        return {
            "columns": [
                {
                    "name": _text(c.get("name")),
                    "type": _text(c.get("type")),
                    "role": _text(c.get("role") or "feature"),
                    "unit": _text(c.get("unit") or ""),
                }
                for c in columns
            ],
            "omitted": max(0, _count(inner.get("columns")) - len(columns)),
        }
    if arrays:
        return {
            "arrays": [
                {
                    "name": _text(a.get("name")),
                    "dtype": _text(a.get("dtype")),
                    "shape": [
                        s if isinstance(s, int) and not isinstance(s, bool) else None
                        for s in _list(a.get("shape"), 32, dicts=False)
                    ],
                    "role": _text(a.get("role") or "feature"),
                    "unit": _text(a.get("unit") or ""),
                }
                for a in arrays
            ],
            "omitted": 0,
        }
    return None


def _profile(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    raw = doc.get("columns")
    if isinstance(doc.get("arrays"), list):  # an .npz: each array measured like a column
        raw = [{**a, "type": a.get("dtype")} for a in _list(doc["arrays"], 64)]
    k = _integer(doc.get("min_count", doc.get("k")))
    columns = []
    for c in _list(raw, MAX_COLUMNS):
        null_share = _number(c.get("null_share", c.get("nulls")))
        if null_share is None and _number(c.get("completeness")) is not None:
            null_share = 1 - float(c["completeness"])
        columns.append(
            {
                "name": _text(c.get("name")),
                "type": _text(c.get("type") or ""),
                "null_share": null_share,
                "completeness": None if null_share is None else round(1 - null_share, 6),
                "min": _number(c.get("min")),
                "max": _number(c.get("max")),
                "mean": _number(c.get("mean")),
                "std": _number(c.get("std")),
                "distinct": _integer(c.get("distinct")),
                "frequent": [
                    {"value": _scalar(f.get("value")), "count": _integer(f.get("count"))}
                    for f in _list(c.get("top", c.get("frequent")), MAX_FREQUENT)
                    # held to the profile's own threshold again: a value seen fewer than k times
                    # would point at a record
                    if k is None or (_integer(f.get("count")) or 0) >= k
                ],
            }
        )
    rows = _integer(doc.get("rows", doc.get("row_count")))
    if rows is None and not columns:  # no profile (one that could not be made holds its reason)
        return None
    return {
        "rows": rows,
        "k": k,
        "columns": columns,
    }


def validation_summary(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    return _summary(doc) if isinstance(doc, dict) else None


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    passed, failed = _integer(doc.get("passed")), _integer(doc.get("failed"))
    evaluated = _integer(doc.get("evaluated"))
    if evaluated is None and passed is not None and failed is not None:
        evaluated = passed + failed
    success = doc.get("success")
    failing = []
    stated = (
        doc.get("failing")
        if "failing" in doc
        else [r for r in _list(doc.get("results"), MAX_EXPECTATIONS) if r.get("success") is False]
    )
    for f in _list(stated, MAX_FAILING):
        columns = f.get("columns") if isinstance(f.get("columns"), list) else [f.get("column") or ""]
        failing.append(
            {
                "expectation": _text(f.get("expectation") or f.get("type")),
                "column": _text(", ".join(str(c) for c in columns[:8] if c)),
            }
        )
    return {
        "success": success if isinstance(success, bool) else None,
        "evaluated": evaluated,
        "passed": passed,
        "failed": failed,
        "failing_columns": [_text(c) for c in _list(doc.get("failing_columns"), MAX_FAILING, dicts=False)],
        "failing": failing,
        "suite": _text(doc.get("suite") or ""),
    }


def _source(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(doc, dict) or not doc:
        return None
    return {k: _text(doc[k]) for k in SOURCE_FIELDS if isinstance(doc.get(k), str | int)}


# DCAT / DQV / CSVW -------------------------------------------------------------------------


def dataset_fields(found: dict[str, Any] | None, dataset_id: str) -> dict[str, Any]:
    """The DCAT dataset properties of a version's evidence (none for an entry without any)."""
    if not isinstance(found, dict):
        return {}
    fields: dict[str, Any] = {"agora:qualityStatus": found.get("status") or "unknown"}
    schema = found.get("schema")
    if schema and schema.get("columns"):
        fields["csvw:tableSchema"] = {
            "@type": "csvw:Schema",
            "csvw:column": [
                {
                    "@id": column_id(dataset_id, c["name"]),
                    "@type": "csvw:Column",
                    "csvw:name": c["name"],
                    "csvw:datatype": _DATATYPES.get(c["type"], "string"),
                    "agora:type": c["type"],
                    "agora:role": c["role"],
                    **({"agora:unit": c["unit"]} if c["unit"] else {}),
                }
                for c in schema["columns"]
            ],
            **({"agora:columnsOmitted": schema["omitted"]} if schema.get("omitted") else {}),
        }
    elif schema and schema.get("arrays"):
        fields["agora:arrays"] = [
            {
                "@type": "agora:Array",
                "agora:name": a["name"],
                "agora:dtype": a["dtype"],
                "agora:shape": a["shape"],
                "agora:role": a["role"],
                **({"agora:unit": a["unit"]} if a["unit"] else {}),
            }
            for a in schema["arrays"]
        ]
    if found.get("schema_origin"):
        fields["agora:schemaOrigin"] = found["schema_origin"]
    if found.get("profile"):
        fields["dqv:hasQualityMeasurement"] = _measurements(found["profile"], dataset_id)
        if found["profile"].get("k") is not None:
            fields["agora:profileThreshold"] = found["profile"]["k"]
    if found.get("validation"):
        fields["dqv:hasQualityAnnotation"] = [_annotation(found["validation"], dataset_id)]
    if found.get("source"):
        fields["agora:source"] = {f"agora:{k}": v for k, v in found["source"].items()}
    return fields


def column_id(dataset_id: str, name: str) -> str:
    return f"{dataset_id}/column/{quote(name, safe='')}"


def _measure(metric: str, on: str, value: Any) -> dict[str, Any]:
    return {
        "@type": "dqv:QualityMeasurement",
        "dqv:isMeasurementOf": {"@id": f"agora:{metric}"},
        "dqv:computedOn": {"@id": on},
        "dqv:value": value,
    }


def _measurements(profile: dict[str, Any], dataset_id: str) -> list[dict[str, Any]]:
    found = []
    if profile.get("rows") is not None:
        found.append(_measure("rowCount", dataset_id, profile["rows"]))
    for c in profile.get("columns") or []:
        on = column_id(dataset_id, c["name"])
        found += [_measure(m, on, c[m]) for m in _METRICS if c.get(m) is not None]
        if c.get("frequent"):
            found.append(_measure("frequentValues", on, {"@type": "@json", "@value": c["frequent"]}))
    return found


def _annotation(validation: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    body = {
        "@type": "agora:ValidationResult",
        "agora:success": validation.get("success"),
        "agora:expectationsEvaluated": validation.get("evaluated"),
        "agora:expectationsPassed": validation.get("passed"),
        "agora:expectationsFailed": validation.get("failed"),
        "agora:failingColumns": validation.get("failing_columns") or [],
        "agora:failingExpectations": [
            {"agora:expectation": f["expectation"], "agora:column": f["column"]}
            for f in validation.get("failing") or []
        ],
        "agora:suite": validation.get("suite") or "",
        "agora:sha256": validation.get("sha256") or "",
        "agora:assetId": validation.get("asset_id") or "",
        "agora:anchorStatus": validation.get("anchor_status") or "",
    }
    return {
        "@type": "dqv:QualityAnnotation",
        "oa:motivatedBy": {"@id": "dqv:qualityAssessment"},
        "oa:hasTarget": {"@id": dataset_id},
        "oa:hasBody": body,
    }


# A peer's dataset, read back ---------------------------------------------------------------


def read_dataset(dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The evidence a peer's DCAT dataset states, bounded as :func:`evidence` bounds ours
    (None when it states none)."""
    status = dataset.get(STATUS)
    if not isinstance(status, str):
        return None
    table = dataset.get("csvw:tableSchema")
    columns = _list(table.get("csvw:column"), MAX_COLUMNS) if isinstance(table, dict) else []
    schema: dict[str, Any] | None = None
    if columns:
        schema = {
            "columns": [
                {
                    "name": c.get("csvw:name"),
                    "type": c.get("agora:type") or _TYPES.get(str(c.get("csvw:datatype")), "string"),
                    "role": c.get("agora:role"),
                    "unit": c.get("agora:unit"),
                }
                for c in columns
            ]
        }
    elif isinstance(dataset.get("agora:arrays"), list):
        schema = {"arrays": [_unprefixed(a) for a in _list(dataset["agora:arrays"], 64)]}
    body = _first_body(dataset.get("dqv:hasQualityAnnotation"))
    summary = None
    if body is not None:
        summary = {
            "success": body.get("agora:success"),
            "evaluated": body.get("agora:expectationsEvaluated"),
            "passed": body.get("agora:expectationsPassed"),
            "failed": body.get("agora:expectationsFailed"),
            "failing_columns": body.get("agora:failingColumns"),
            "failing": [_unprefixed(f) for f in _list(body.get("agora:failingExpectations"), MAX_FAILING)],
            "suite": body.get("agora:suite"),
        }
    source = dataset.get("agora:source")
    found = evidence(
        status=status,
        schema=schema,
        profile=_read_profile(
            dataset.get("dqv:hasQualityMeasurement"),
            str(dataset.get("@id") or ""),
            dataset.get("agora:profileThreshold"),
        ),
        summary=summary,
        source=_unprefixed(source) if isinstance(source, dict) else None,
        validation_sha256=str(body.get("agora:sha256") or "") if body else None,
        validation_asset_id=str(body.get("agora:assetId") or "") if body else None,
        validation_anchor=str(body.get("agora:anchorStatus") or "") if body else None,
    ) | {"schema_origin": _text(dataset.get("agora:schemaOrigin") or "")}
    return (
        found if _size(found) <= MAX_STORED else found | {"schema": None, "profile": None, "truncated": True}
    )


def _read_profile(measurements: Any, dataset_id: str, threshold: Any) -> dict[str, Any] | None:
    items = _list(measurements, MAX_COLUMNS * (len(_METRICS) + 1) + 1)
    if not items:
        return None
    rows: Any = None
    columns: dict[str, dict[str, Any]] = {}
    prefix = f"{dataset_id}/column/"
    for m in items:
        metric = str((m.get("dqv:isMeasurementOf") or {}).get("@id", "")).removeprefix("agora:")
        on = str((m.get("dqv:computedOn") or {}).get("@id", ""))
        value = m.get("dqv:value")
        if metric == "rowCount" and on == dataset_id:
            rows = value
        elif on.startswith(prefix) and (metric in _METRICS or metric == "frequentValues"):
            name = unquote(on.removeprefix(prefix))
            if name not in columns and len(columns) >= MAX_COLUMNS:
                continue
            column = columns.setdefault(name, {"name": name})
            if metric == "frequentValues":
                column["frequent"] = value.get("@value") if isinstance(value, dict) else None
            elif metric == "completeness":
                column["completeness"] = value
            else:
                column[metric] = value
    return _profile({"rows": rows, "k": threshold, "columns": list(columns.values())})


def _first_body(annotations: Any) -> dict[str, Any] | None:
    for a in _list(annotations, 4):
        body = a.get("oa:hasBody")
        if isinstance(body, dict):
            return body
    return None


def _unprefixed(doc: dict[str, Any]) -> dict[str, Any]:
    return {str(k).removeprefix("agora:"): v for k, v in list(doc.items())[:32]}


# Bounds ------------------------------------------------------------------------------------


def _list(value: Any, cap: int, *, dicts: bool = True) -> list[Any]:
    if not isinstance(value, list):
        return []
    return [v for v in value[:cap] if isinstance(v, dict) == dicts]


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _text(value: Any) -> str:
    """A scalar as bounded text; anything else (a peer's nested structure) as nothing."""
    return str(value)[:MAX_TEXT] if isinstance(value, str | int | float) else ""


def _scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, bool):
        return value
    number = _number(value)
    return number if number is not None else _text(value)[:MAX_VALUE]


def _hex(value: str | None) -> str:
    text = (value or "").removeprefix("sha256:").lower()
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else ""


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) < 2**63 else None
    return value if math.isfinite(value) and abs(value) < 1e300 else None


def _integer(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else None
