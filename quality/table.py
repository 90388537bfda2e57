"""A training set from a dataset version's bytes and its schema (declared or inferred): the
features as float32 and the labels as int64, built by column roles.

* ``id`` and ``ignored`` columns, and columns the schema does not name, are left out; so are
  free-text and datetime features (:func:`quality.schema.trainability` says which, at
  registration, in the same words);
* integer and float features become float32, booleans 0/1 (``true/false``, ``1/0``,
  ``yes/no``, ``t/f``, ``y/n``, any case);
* category features are one-hot encoded (the default) or ordinal (their position), in the
  order of the declared ``categories``, else of the version's own distinct values sorted
  (deterministic: two jobs on one version see the same columns);
* the label: integers are kept, booleans become 0/1, categories and text are numbered in the
  order of the declared ``categories``, else sorted;
* ``.npz`` with declared arrays: the feature arrays by role (one keeps its shape, several are
  flattened per row and put side by side) and the label array.

Missing values: a row without a label is dropped; a missing number or boolean (or one that
is not a number) takes the column's median over the version; a missing category, or a value
outside the declared categories, is encoded as no category (all zeros one-hot, -1 ordinal);
a label outside the declared categories drops its row. Every such change is counted in
:attr:`TrainingSet.notes` (counts and column names only, never a value: the median is a
row's value). ``.npz`` arrays are taken as they are (NaN features are refused).

Everything is done column-wise by pandas and numpy; the table reads only the columns it uses.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernel.errors import InvalidInput
from quality.schema import stored_schema, trainability
from quality.spec import ColumnSpec, DatasetSchema

MAX_CATEGORIES = 1_000  # distinct values a category feature or a label may take in one version
MAX_TRAINING_BYTES = 4 * 1024**3  # the float32 feature matrix of one training set
TRUE = ("true", "1", "1.0", "yes", "t", "y")
FALSE = ("false", "0", "0.0", "no", "f", "n")


class UnusableDataset(InvalidInput):
    type_slug = "unusable-dataset"
    title = "The dataset cannot be used for training"


@dataclass(frozen=True)
class TrainingSet:
    features: np.ndarray
    labels: np.ndarray
    notes: list[str] = field(default_factory=list)  # what was dropped, imputed or unknown (counts)


def training_set(data: bytes, schema_doc: dict[str, Any]) -> TrainingSet:
    """Features and labels of a version's bytes by the roles of its stored schema."""
    schema = stored_schema(schema_doc)
    plan = trainability(schema)
    if not plan["ok"]:
        raise UnusableDataset(f"no training set can be built: {plan['reason']}")
    if schema.arrays:
        return _from_arrays(data, schema, plan)
    columns = {c.name: c for c in schema.columns}
    used = [plan["label"], *plan["features"]]
    frame = _read_table(data, [columns[n] for n in used])
    return _from_frame(frame, columns[plan["label"]], [columns[n] for n in plan["features"]])


def _read_table(data: bytes, used: list[ColumnSpec]) -> Any:
    """The used columns of a Parquet file or a CSV (text columns as strings, numbers parsed)."""
    import pandas as pd

    names = [c.name for c in used]
    if data[:4] == b"PAR1":
        try:
            return pd.read_parquet(io.BytesIO(data), columns=names)
        except (OSError, ValueError, KeyError) as exc:
            raise UnusableDataset(
                f"the Parquet file cannot be read by its schema: {type(exc).__name__}"
            ) from None
    first = data[: data.find(b"\n") + 1 if b"\n" in data else len(data)]
    try:
        raw = next(csv.reader([first.decode("utf-8-sig").rstrip("\r\n")]), [])
    except UnicodeDecodeError:
        raise UnusableDataset("the CSV's header is not UTF-8 text") from None
    by_name = {r.strip(): r for r in raw}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UnusableDataset(f"the CSV has no column {missing[0][:60]} of its schema")
    text = {by_name[c.name]: "str" for c in used if c.type not in ("integer", "float")}
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            usecols=[by_name[n] for n in names],
            dtype=text,
            encoding="utf-8-sig",
            low_memory=False,
        )
    except UnicodeDecodeError:
        raise UnusableDataset("the CSV is not UTF-8 text") from None
    except (pd.errors.ParserError, ValueError, OverflowError):
        raise UnusableDataset("the CSV cannot be parsed by its schema") from None
    return frame.rename(columns={raw_name: name for name, raw_name in by_name.items()})


def _from_frame(frame: Any, label: ColumnSpec, features: list[ColumnSpec]) -> TrainingSet:
    notes: list[str] = []
    labels, keep = _labels(frame[label.name], label, notes)
    kept = frame.loc[keep]
    widths = [len(_categories(kept[c.name], c)) if _onehot(c) else 1 for c in features]
    if sum(widths) * len(kept) * 4 > MAX_TRAINING_BYTES:
        raise UnusableDataset(
            f"the training set would be {len(kept)} rows by {sum(widths)} features: "
            f"over {MAX_TRAINING_BYTES // 1024**3} GiB"
        )
    blocks = [_feature(kept[c.name], c, notes) for c in features]
    return TrainingSet(np.hstack(blocks).astype(np.float32, copy=False), labels, notes)


def _onehot(column: ColumnSpec) -> bool:
    return column.type in ("category", "string") and (column.encoding or "onehot") == "onehot"


def _labels(series: Any, column: ColumnSpec, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The label as int64 and the mask of the rows kept (a label present and readable)."""
    import pandas as pd

    present = series.notna().to_numpy()
    if not present.all():
        notes.append(f"{int((~present).sum())} rows without a label ({column.name}) dropped")
    if column.type == "integer":
        values = pd.to_numeric(series[present], errors="coerce").to_numpy(dtype=np.float64)
        bad = int((~np.isfinite(values) | (np.mod(values, 1) != 0)).sum())
        if bad:
            raise UnusableDataset(f"the label {column.name} holds {bad} values that are not whole numbers")
        return values.astype(np.int64), present
    if column.type == "boolean":
        values = _booleans(series[present]).to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            raise UnusableDataset(
                f"the label {column.name} holds {int(np.isnan(values).sum())} values that are not booleans"
            )
        return values.astype(np.int64), present
    text = series.astype("string").str.strip()
    categories = _categories(text[present], column)
    if len(categories) > MAX_CATEGORIES:
        raise UnusableDataset(f"the label {column.name} has over {MAX_CATEGORIES} classes")
    codes = _codes(text, categories)
    unknown = present & (codes < 0)
    if unknown.any():
        notes.append(
            f"{int(unknown.sum())} rows whose label ({column.name}) is outside its declared "
            "categories dropped"
        )
    keep = present & (codes >= 0)
    return codes[keep].astype(np.int64), keep


def _categories(series: Any, column: ColumnSpec) -> list[str]:
    """A category column's values in encoding order: as declared, else sorted (this version's)."""
    if column.categories:
        return list(dict.fromkeys(column.categories))
    distinct = series.astype("string").str.strip().dropna().unique()
    if len(distinct) > MAX_CATEGORIES:
        raise UnusableDataset(
            f"column {column.name} has over {MAX_CATEGORIES} distinct values: declare its categories, "
            "or its role ignored"
        )
    return sorted(str(v) for v in distinct)


def _codes(text: Any, categories: list[str]) -> np.ndarray:
    """Each value's position among ``categories``; -1 for a missing or unknown one."""
    import pandas as pd

    return np.asarray(pd.Index(categories, dtype="string").get_indexer(text), dtype=np.int64)


def _booleans(series: Any) -> Any:
    import pandas as pd
    from pandas.api import types

    if types.is_bool_dtype(series):
        return series.astype("float64")
    words = series.astype("string").str.strip().str.lower()
    mapping = {**dict.fromkeys(TRUE, 1.0), **dict.fromkeys(FALSE, 0.0)}
    return pd.to_numeric(words.map(mapping), errors="coerce")


def _feature(series: Any, column: ColumnSpec, notes: list[str]) -> np.ndarray:
    """One feature column as a float32 block of one column (several for one-hot)."""
    import pandas as pd

    if column.type in ("category", "string"):
        text = series.astype("string").str.strip()
        categories = _categories(text, column)
        codes = _codes(text, categories)
        unknown = int((text.notna().to_numpy() & (codes < 0)).sum())
        if unknown:
            notes.append(f"column {column.name}: {unknown} values outside its declared categories")
        if column.encoding == "ordinal":
            return codes.astype(np.float32).reshape(-1, 1)
        block = np.zeros((len(codes), len(categories)), dtype=np.float32)
        rows = np.flatnonzero(codes >= 0)
        block[rows, codes[rows]] = 1.0
        return block
    values: np.ndarray
    if column.type == "boolean":
        values = _booleans(series).to_numpy(dtype=np.float64, copy=True)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    unreadable = int((series.notna().to_numpy() & ~np.isfinite(values)).sum())
    if unreadable:
        notes.append(f"column {column.name}: {unreadable} values that are not {column.type} taken as missing")
    gaps = ~np.isfinite(values)
    if gaps.any():
        fill = float(np.median(values[~gaps])) if (~gaps).any() else 0.0
        values[gaps] = fill
        notes.append(f"column {column.name}: {int(gaps.sum())} missing values filled with its median")
    return values.astype(np.float32).reshape(-1, 1)


def _from_arrays(data: bytes, schema: DatasetSchema, plan: dict[str, Any]) -> TrainingSet:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            parts = [np.asarray(archive[name]) for name in plan["features"]]
            raw = np.asarray(archive[plan["label"]])
    except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError):
        raise UnusableDataset("the .npz cannot be read by its schema") from None
    if any(len(p) != len(raw) for p in parts):
        raise UnusableDataset("the .npz's feature and label arrays have different numbers of rows")
    features = parts[0] if len(parts) == 1 else np.hstack([p.reshape(len(p), -1) for p in parts])
    if raw.dtype.kind in "US":
        distinct, labels = np.unique(raw, return_inverse=True)
        if len(distinct) > MAX_CATEGORIES:
            raise UnusableDataset(f"the label array {plan['label']} has over {MAX_CATEGORIES} classes")
        return TrainingSet(features.astype(np.float32, copy=False), labels.astype(np.int64))
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw) & (np.mod(raw, 1) == 0)):
        raise UnusableDataset(f"the label array {plan['label']} holds values that are not whole numbers")
    return TrainingSet(features.astype(np.float32, copy=False), raw.astype(np.int64))
