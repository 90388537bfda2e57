"""A dataset version's quality evidence as the catalog publishes it: the W3C Data Quality
Vocabulary (DQV) for the profile and the validation result, CSVW for the schema.

Pure functions, no I/O and no heavy import:

* :func:`evidence` turns what a version holds (its schema, profile, validation summary,
  quality status, DVC source, validation anchor) into one bounded, typed dict — what
  ``CatalogEntry.document["agora:evidence"]`` keeps and the web UI shows;
* :func:`dataset_fields` renders that evidence as DCAT dataset properties
  (``csvw:tableSchema``, ``dqv:hasQualityMeasurement``, ``dqv:hasQualityAnnotation``, ``agora:…``);
* :func:`quality.dqv_read.read_dataset` reads those properties back from a peer's DCAT dataset
  into the same evidence shape, under the same caps: a peer's document is hostile.

Guarantees: the renderer only ever sees the profile and the summary (aggregates the profile
module computed under its k-threshold), never the data; it drops anything that is not one of
the expected fields, every string is cut at :data:`MAX_TEXT`, every list at its cap, numbers
must be finite. A DVC repository's location is not published (a path on the provider's disk,
a URL that may hold a credential): only the commit, the path inside it and the md5.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from quality.bounded import (
    count,
    hexdigest,
    integer,
    listed,
    number,
    scalar,
    size,
    text,
)
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
MAX_STORED = 64 * 1024  # the evidence as JSON (see _fit)
SOURCE_FIELDS = ("kind", "path", "rev", "commit", "md5")

_DATATYPES = {
    "integer": "integer",
    "float": "double",
    "string": "string",
    "boolean": "boolean",
    "category": "string",
    "datetime": "dateTime",
}
TYPES = {v: k for k, v in _DATATYPES.items() if k != "category"}
METRICS = ("completeness", "min", "max", "mean", "std", "distinct")


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
            "sha256": hexdigest(validation_sha256),
            "asset_id": text(validation_asset_id or ""),
            "anchor_status": text(validation_anchor or ""),
        }
    return _fit(
        {
            "status": status if status in QUALITY_STATUSES else "unknown",
            "schema": _schema(schema),
            "schema_origin": text((schema or {}).get("origin") or (schema or {}).get("source") or ""),
            "profile": _profile(profile),
            "validation": validation,
            "source": _source(source),
        }
    )


def _fit(found: dict[str, Any]) -> dict[str, Any]:
    """The evidence within :data:`MAX_STORED` (ours as a peer will keep it, a peer's as this node
    keeps it): first without frequent values, then with half the columns, and half again. With
    no column left, what stays (status, validation, source) is bounded by its caps far below."""
    if size(found) <= MAX_STORED:
        return found
    schema, profile = found.get("schema"), found.get("profile")
    if profile:
        profile = {**profile, "columns": [{**c, "frequent": []} for c in profile["columns"]]}
        found = {**found, "profile": profile, "frequent_omitted": True}
    keep = MAX_COLUMNS
    while size(found) > MAX_STORED and keep > 0:
        keep //= 2
        if schema and schema.get("columns"):
            total = len(schema["columns"]) + schema["omitted"]
            found["schema"] = {"columns": schema["columns"][:keep], "omitted": max(0, total - keep)}
        if profile:
            total = len(profile["columns"]) + profile["omitted"]
            found["profile"] = {
                **profile,
                "columns": profile["columns"][:keep],
                "omitted": max(0, total - keep),
            }
    return found


def _schema(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(doc, dict):
        return None
    inner: dict[str, Any] = doc["schema"] if isinstance(doc.get("schema"), dict) else doc
    columns, arrays = listed(inner.get("columns"), MAX_COLUMNS), listed(inner.get("arrays"), 64)
    if columns:
        return {
            "columns": [
                {
                    "name": text(c.get("name")),
                    "type": text(c.get("type")),
                    "role": text(c.get("role") or "feature"),
                    "unit": text(c.get("unit") or ""),
                }
                for c in columns
            ],
            "omitted": max(0, count(inner.get("columns")) - len(columns))
            + (integer(inner.get("omitted")) or 0),
        }
    if arrays:
        return {
            "arrays": [
                {
                    "name": text(a.get("name")),
                    "dtype": text(a.get("dtype")),
                    "shape": [
                        s if isinstance(s, int) and not isinstance(s, bool) else None
                        for s in listed(a.get("shape"), 32, dicts=False)
                    ],
                    "role": text(a.get("role") or "feature"),
                    "unit": text(a.get("unit") or ""),
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
        raw = [{**a, "type": a.get("dtype")} for a in listed(doc["arrays"], 64)]
    k = integer(doc.get("min_count", doc.get("k")))
    columns = []
    for c in listed(raw, MAX_COLUMNS):
        null_share = number(c.get("null_share", c.get("nulls")))
        if null_share is None and number(c.get("completeness")) is not None:
            null_share = 1 - float(c["completeness"])
        columns.append(
            {
                "name": text(c.get("name")),
                "type": text(c.get("type") or ""),
                "null_share": null_share,
                "completeness": None if null_share is None else round(1 - null_share, 6),
                "min": number(c.get("min")),
                "max": number(c.get("max")),
                "mean": number(c.get("mean")),
                "std": number(c.get("std")),
                "distinct": integer(c.get("distinct")),
                "frequent": [
                    {"value": scalar(f.get("value")), "count": integer(f.get("count"))}
                    for f in listed(c.get("top", c.get("frequent")), MAX_FREQUENT)
                    # held to the profile's own threshold again: a value seen fewer than k times
                    # would point at a record
                    if k is None or (integer(f.get("count")) or 0) >= k
                ],
            }
        )
    rows = integer(doc.get("rows", doc.get("row_count")))
    if rows is None and not columns:  # no profile (one that could not be made holds its reason)
        return None
    overflow = max(0, count(raw) - len(columns))
    return {
        "rows": rows,
        "k": k,
        "columns": columns,
        "omitted": overflow + (integer(doc.get("omitted")) or 0),
    }


def validation_summary(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    return _summary(doc) if isinstance(doc, dict) else None


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    passed, failed = integer(doc.get("passed")), integer(doc.get("failed"))
    evaluated = integer(doc.get("evaluated"))
    if evaluated is None and passed is not None and failed is not None:
        evaluated = passed + failed
    success = doc.get("success")
    failing = []
    stated = (
        doc.get("failing")
        if "failing" in doc
        else [r for r in listed(doc.get("results"), MAX_EXPECTATIONS) if r.get("success") is False]
    )
    for f in listed(stated, MAX_FAILING):
        columns = f.get("columns") if isinstance(f.get("columns"), list) else [f.get("column") or ""]
        failing.append(
            {
                "expectation": text(f.get("expectation") or f.get("type")),
                "column": text(", ".join(str(c) for c in columns[:8] if c)),
            }
        )
    return {
        "success": success if isinstance(success, bool) else None,
        "evaluated": evaluated,
        "passed": passed,
        "failed": failed,
        "failing_columns": [text(c) for c in listed(doc.get("failing_columns"), MAX_FAILING, dicts=False)],
        "failing": failing,
        "suite": text(doc.get("suite") or ""),
    }


def _source(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(doc, dict) or not doc:
        return None
    return {k: text(doc[k]) for k in SOURCE_FIELDS if isinstance(doc.get(k), str | int)}


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
        if found["profile"].get("omitted"):
            fields["agora:profileColumnsOmitted"] = found["profile"]["omitted"]
        if found.get("frequent_omitted"):
            fields["agora:frequentValuesOmitted"] = True
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
        found += [_measure(m, on, c[m]) for m in METRICS if c.get(m) is not None]
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
