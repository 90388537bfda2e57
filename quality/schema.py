"""Dataset schemas: inferred from the bytes when none is declared, checked against the bytes
when one is; and, for compute and federate offerings, whether the node can build a training
set from them (:func:`trainability`).

Inference (from :mod:`quality.sampling`'s bounded reads):

* types: ``integer``, ``float``, ``boolean``, ``datetime`` (ISO dates), ``category`` (a text
  column whose sample repeats few values: at most :data:`CATEGORY_MAX` distinct, each seen
  twice on average) or ``string``; Parquet types come from its Arrow schema (dictionary
  columns are categories); ``.npz`` arrays keep their dtype and shape;
* roles: the column (or array) named ``label``, ``target``, ``class`` or ``y`` is the label;
  ``id``, a name ending ``_id``, or a text column whose sample values are all distinct is an
  ``id``; columns of types the node cannot use (nested Parquet types, object arrays) are
  ``ignored``; the rest are features.

An inferred schema names columns and types only: no value of the file (a category's values
are not listed; the table builder takes them from the version itself).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kernel.errors import FieldError
from quality import sampling
from quality.intake import Intake
from quality.sampling import DatasetProblem
from quality.spec import ArrayRole, ArraySpec, ColumnRole, ColumnSpec, ColumnType, DatasetSchema

LABEL_NAMES = ("label", "target", "class", "y")  # in this order when several are present
CATEGORY_MAX = 50
TRAINING_MODES = ("compute", "federate")
NUMERIC = ("integer", "float", "boolean")
_ISO_DATE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$"
_NPY_KINDS = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex", "U": "str", "S": "bytes"}


class Untrainable(DatasetProblem):
    """A compute or federate offering the node cannot build a training set from, under
    ``on_untrainable: reject``: the registration is refused with the reason."""

    type_slug = "untrainable-dataset"
    title = "The node cannot build a training set from this dataset"


@dataclass
class FileShape:
    """What the node read of a file: its format, and per column (or array) the inferred spec."""

    format: str
    columns: list[ColumnSpec] = field(default_factory=list)
    arrays: list[ArraySpec] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # npz: the full shapes
    binary: set[str] = field(default_factory=set)  # csv: integer columns whose sample holds only 0 and 1

    def schema(self) -> DatasetSchema:
        try:
            return DatasetSchema(columns=self.columns, arrays=self.arrays)
        except ValidationError as exc:
            raise DatasetProblem(f"no schema can be inferred: {exc.errors()[0]['msg']}") from None


def assess(path: Path, media_type: str, declared: dict[str, Any], modes: list[str]) -> Intake:
    """The schema (declared and checked against the file, or inferred) and, for compute and
    federate offerings, the trainability of the file at ``path``.

    A declared schema the file does not match is a :class:`DatasetProblem` naming the column;
    an unreadable file is one when a schema is declared or the offering is for training (a
    download-only offering of another format simply has no schema). Raises
    :class:`Untrainable` when the node cannot train on it and ``on_untrainable`` is ``reject``.
    """
    wanted = DatasetSchema.model_validate(declared["schema"]) if declared.get("schema") else None
    trains = any(m in TRAINING_MODES for m in modes)
    try:
        found = read_shape(path, media_type)
    except DatasetProblem as exc:
        if wanted is not None:
            raise
        if not trains:
            return Intake(schema=None, trainable=None)
        return _outcome(None, _refusal(exc.detail), declared)
    if wanted is not None:
        check_declared(wanted, found)
    schema = wanted or found.schema()
    doc = schema_doc(schema, "declared" if wanted is not None else "inferred")
    return _outcome(doc, trainability(schema, found) if trains else None, declared)


def _outcome(
    doc: dict[str, Any] | None, trainable: dict[str, Any] | None, declared: dict[str, Any]
) -> Intake:
    if trainable is not None and not trainable["ok"] and declared.get("on_untrainable") == "reject":
        raise Untrainable(
            f"the node cannot build a training set from this file: {trainable['reason']} "
            "(on_untrainable: register-flagged registers it with the reason shown)",
            errors=[FieldError("file", trainable["reason"])],
            trainable=trainable,
        )
    return Intake(schema=doc, trainable=trainable)


def schema_doc(schema: DatasetSchema, source: str) -> dict[str, Any]:
    """A schema as a version stores it: every column's name, type and role, and what else was said."""
    if schema.arrays:
        return {"source": source, "arrays": [_spec_doc(a) for a in schema.arrays]}
    return {"source": source, "columns": [_spec_doc(c) for c in schema.columns]}


def _spec_doc(spec: ColumnSpec | ArraySpec) -> dict[str, Any]:
    return {**spec.model_dump(exclude_defaults=True), "role": spec.role}


def stored_schema(doc: dict[str, Any]) -> DatasetSchema:
    """A version's stored schema back as a :class:`DatasetSchema`."""
    return DatasetSchema.model_validate({k: doc[k] for k in ("columns", "arrays") if k in doc})


# Inference -----------------------------------------------------------------------------------


def read_shape(path: Path, media_type: str) -> FileShape:
    """Infer each column's (or array's) type and role from a bounded read of the file."""
    kind = sampling.file_format(path, media_type)
    if kind == "csv":
        return _csv_shape(sampling.csv_sample(path))
    if kind == "parquet":
        return _parquet_shape(sampling.parquet_schema(path))
    if kind == "npz":
        return _npz_shape(sampling.npz_headers(path))
    raise DatasetProblem(
        "the node reads schemas from CSV, Parquet and .npz files, not "
        + (sampling.shown(media_type) or "this file")
    )


def _label_of(names: list[str]) -> str | None:
    lowered = [n.lower() for n in names]
    for wanted in LABEL_NAMES:
        if wanted in lowered:
            return names[lowered.index(wanted)]
    return None


def _named_id(name: str) -> bool:
    lowered = name.lower()
    return lowered == "id" or lowered.endswith("_id")


def _csv_shape(frame: Any) -> FileShape:
    names = [str(n) for n in frame.columns]
    label = _label_of(names)
    shape = FileShape("csv")
    for name in names:
        series = frame[name]
        kind, distinct = _column_type(series)
        if kind == "integer" and bool(series.dropna().isin([0, 1]).all()):
            shape.binary.add(name)
        role: ColumnRole
        if name == label:
            role = "label"
        elif _named_id(name) or (kind == "string" and distinct >= 2 and distinct == series.count()):
            role = "id"
        else:
            role = "feature"
        shape.columns.append(ColumnSpec(name=name, type=kind, role=role))
    return shape


def _column_type(series: Any) -> tuple[ColumnType, int]:
    """A sample column's type, and its number of distinct non-missing values."""
    from pandas.api import types

    present = series.dropna()
    if types.is_bool_dtype(series):
        return "boolean", 2
    if types.is_integer_dtype(series):
        return "integer", 0
    if types.is_float_dtype(series):
        whole = len(present) > 0 and bool((present % 1 == 0).all()) and len(present) < len(series)
        return ("integer" if whole else "float"), 0  # pandas reads whole numbers with gaps as floats
    if types.is_datetime64_any_dtype(series):
        return "datetime", 0
    text = present.astype(str).str.strip()
    distinct = int(text.nunique())
    if len(text) and bool(text.str.lower().isin(["true", "false"]).all()):
        return "boolean", distinct
    if len(text) and bool(text.str.match(_ISO_DATE).all()) and _dates(text):
        return "datetime", distinct
    if len(text) and distinct <= CATEGORY_MAX and distinct * 2 <= len(text):
        return "category", distinct
    return "string", distinct


def _dates(text: Any) -> bool:
    import pandas as pd

    try:
        return bool(pd.to_datetime(text, errors="coerce", format="ISO8601").notna().all())
    except (ValueError, OverflowError):
        return False


def _parquet_shape(schema: Any) -> FileShape:
    import pyarrow as pa

    label = _label_of(list(schema.names))
    shape = FileShape("parquet")
    for column in schema:
        t = column.type
        role: ColumnRole = "label" if column.name == label else "id" if _named_id(column.name) else "feature"
        kind: ColumnType
        if pa.types.is_boolean(t):
            kind = "boolean"
        elif pa.types.is_integer(t):
            kind = "integer"
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            kind = "float"
        elif pa.types.is_timestamp(t) or pa.types.is_date(t):
            kind = "datetime"
        elif pa.types.is_dictionary(t):
            kind = "category"
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            kind = "string"
        else:  # nested, binary, intervals: nothing the node can encode
            kind, role = "string", "ignored"
        shape.columns.append(ColumnSpec(name=column.name, type=kind, role=role))
    return shape


def _npz_shape(headers: list[sampling.NpyHeader]) -> FileShape:
    label = _label_of([h.name for h in headers])
    shape = FileShape("npz")
    for h in headers:
        role: ArrayRole = "label" if h.name == label else "feature" if h.dtype.kind in "biuf" else "ignored"
        if len(h.shape) > 32:
            raise DatasetProblem(f"the .npz array {h.name} has {len(h.shape)} dimensions; at most 32")
        dtype = re.sub(r"[^a-z0-9].*$", "", h.dtype.name) or _NPY_KINDS.get(h.dtype.kind, "void")
        shape.arrays.append(ArraySpec(name=h.name, dtype=dtype, shape=list(h.shape), role=role))
        shape.shapes[h.name] = h.shape
    return shape


# A declared schema against the file ------------------------------------------------------------

# what a sample's inferred type may be for each declared type
_PLAUSIBLE = {
    "integer": {"integer", "boolean"},
    "float": {"integer", "float"},
    "boolean": {"boolean", "integer"},
    "datetime": {"datetime"},
    "category": {"category", "string", "integer", "boolean", "float"},
    "string": {"category", "string", "integer", "boolean", "float", "datetime"},
}


def check_declared(wanted: DatasetSchema, found: FileShape) -> None:
    """Every declared column (array) is in the file, with a type its sample can have."""
    if wanted.columns and found.format == "npz":
        raise DatasetProblem("the schema declares columns (a table) but the file is an .npz: declare arrays")
    if wanted.arrays and found.format != "npz":
        raise DatasetProblem(f"the schema declares arrays (an .npz) but the file is a {found.format} table")
    inferred = {c.name: c for c in found.columns}
    for i, column in enumerate(wanted.columns):
        at = f"schema.columns.{i}"
        seen = inferred.get(column.name)
        if seen is None:
            raise DatasetProblem(
                f"the schema declares column {sampling.shown(column.name)}, "
                "which the file's header does not have",
                errors=[FieldError(f"{at}.name", "not in the file")],
            )
        if not _plausible(column, seen, found):
            raise DatasetProblem(
                f"column {sampling.shown(column.name)} is declared {column.type} but the file's "
                f"{'first rows hold' if found.format == 'csv' else 'schema says'} {seen.type}",
                errors=[FieldError(f"{at}.type", f"the file holds {seen.type}")],
            )
    arrays = {a.name: a for a in found.arrays}
    for i, array in enumerate(wanted.arrays):
        at = f"schema.arrays.{i}"
        got = arrays.get(array.name)
        if got is None:
            raise DatasetProblem(
                f"the schema declares array {array.name}, which the .npz does not hold",
                errors=[FieldError(f"{at}.name", "not in the file")],
            )
        if _npy_kind(array.dtype) != _npy_kind(got.dtype):
            raise DatasetProblem(
                f"array {array.name} is declared {array.dtype} but the .npz holds {got.dtype}",
                errors=[FieldError(f"{at}.dtype", f"the file holds {got.dtype}")],
            )
        actual = found.shapes[array.name]
        if array.shape and (
            len(array.shape) != len(actual)
            or any(d is not None and d != n for d, n in zip(array.shape, actual, strict=True))
        ):
            raise DatasetProblem(
                f"array {array.name} is declared of shape {array.shape} but the .npz holds {list(actual)}",
                errors=[FieldError(f"{at}.shape", f"the file holds {list(actual)}")],
            )


def _plausible(column: ColumnSpec, seen: ColumnSpec, found: FileShape) -> bool:
    if seen.type not in _PLAUSIBLE[column.type]:
        return False
    if column.type == "boolean" and seen.type == "integer" and found.format == "csv":
        return column.name in found.binary
    return not (column.type == "integer" and seen.type == "boolean")


def _npy_kind(dtype: str) -> str:
    head = re.sub(r"[0-9]+$", "", dtype)
    aliases = {"uint": "int", "int": "int", "float": "float", "bool": "bool", "str": "str", "bytes": "bytes"}
    return aliases.get(head, head)


# Trainability ---------------------------------------------------------------------------------


def trainability(schema: DatasetSchema, found: FileShape | None = None) -> dict[str, Any]:
    """Whether the node can build a training set from a dataset of this schema: a label of a
    class type, and at least one feature it can turn into numbers (a number, a boolean, a
    category or a text column with declared categories or encoding, a numeric array)."""
    if schema.arrays:
        return _array_trainability(schema, found)
    label = next((c for c in schema.columns if c.role == "label"), None)
    features: list[str] = []
    encoded: list[dict[str, str]] = []
    dropped: list[dict[str, str]] = []
    declared = {c.name for c in schema.columns}
    for extra in (c.name for c in (found.columns if found else []) if c.name not in declared):
        dropped.append({"name": extra, "reason": "not in the declared schema"})
    for c in schema.columns:
        if c.role != "feature":
            if c.role != "label":
                dropped.append({"name": c.name, "reason": c.role})
        elif c.type in NUMERIC:
            features.append(c.name)
        elif c.type == "category" or (c.type == "string" and (c.categories or c.encoding)):
            features.append(c.name)
            encoded.append({"name": c.name, "encoding": c.encoding or "onehot"})
        else:
            why = "free text (declare it a category to encode it)" if c.type == "string" else c.type
            dropped.append({"name": c.name, "reason": why})
    reason = ""
    if label is None:
        reason = "no label column: give one the role label (or name it label, target, class or y)"
    elif label.type in ("float", "datetime"):
        reason = (
            f"the label {label.name} is {label.type}: "
            "the node trains classifiers on integer, boolean or category labels"
        )
    elif not features:
        reason = "no usable feature: every column is an id, ignored, free text or a datetime"
    ok = not reason and label is not None
    if ok and label is not None:
        reason = f"label {label.name}; {len(features)} feature columns, {len(encoded)} of them encoded"
    return {
        "ok": ok,
        "reason": reason,
        "label": label.name if label else None,
        "features": features,
        "encoded": encoded,
        "dropped": dropped,
    }


def _array_trainability(schema: DatasetSchema, found: FileShape | None) -> dict[str, Any]:
    shapes = found.shapes if found else {}
    label = next((a for a in schema.arrays if a.role == "label"), None)
    features = [
        a.name
        for a in schema.arrays
        if a.role == "feature" and _npy_kind(a.dtype) in ("int", "float", "bool")
    ]
    dropped = [{"name": a.name, "reason": a.role if a.role != "feature" else f"dtype {a.dtype}"}
               for a in schema.arrays if a.role != "label" and a.name not in features]  # fmt: skip
    rows = {shapes[n][0] for n in [*features, *([label.name] if label else [])] if shapes.get(n)}
    reason = ""
    if label is None:
        reason = "no label array: give one the role label (or name it y)"
    elif _npy_kind(label.dtype) not in ("int", "bool", "str"):
        reason = (
            f"the label array {label.name} is {label.dtype}: the node trains classifiers on integer labels"
        )
    elif label.name in shapes and len(shapes[label.name]) != 1:
        reason = (
            f"the label array {label.name} has shape {list(shapes[label.name])}: it must be one value per row"
        )
    elif not features:
        reason = "no usable feature array: every array is the label, ignored or not numeric"
    elif len(rows) > 1:
        reason = f"the arrays have different numbers of rows ({', '.join(map(str, sorted(rows)))})"
    ok = not reason
    return {
        "ok": ok,
        "reason": reason or f"label {label.name if label else ''}; {len(features)} feature arrays",
        "label": label.name if label else None,
        "features": features,
        "encoded": [],
        "dropped": dropped,
    }


def _refusal(reason: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason, "label": None, "features": [], "encoded": [], "dropped": []}
