"""What the node reads of a dataset file at registration, and never more: a CSV's header and a
bounded sample of its first rows, a Parquet file's schema (its footer, no rows), an ``.npz``'s
array names, dtypes and shapes (each member's ``.npy`` header, no array data).

Guarantees:

* at most :data:`SAMPLE_BYTES` of a CSV are read, cut at the last complete record (a quoted
  field may hold line breaks), and at most :data:`SAMPLE_ROWS` rows of it are parsed; a header
  line over :data:`MAX_HEADER_BYTES` or over :data:`quality.spec.MAX_COLUMNS` names is refused;
* an ``.npz`` is opened with ``allow_pickle=False`` semantics: object arrays are named, never
  loaded; headers are bounded by numpy's ``max_header_size``;
* a file that cannot be read is a :class:`DatasetProblem` (422) in the node's own words: a
  parser's message can quote the file's bytes, so it is not passed on.
"""

from __future__ import annotations

import csv
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np

from kernel.errors import InvalidInput
from quality.spec import MAX_COLUMNS

SAMPLE_BYTES = 8 * 1024 * 1024
SAMPLE_ROWS = 10_000
MAX_HEADER_BYTES = 1024 * 1024
MAX_ARRAYS = 64  # DatasetSchema.arrays
MAX_NPY_HEADER = 10_000  # numpy's own default bound
NAME = re.compile(r"^[^\x00-\x1f]{1,200}$")  # quality.spec.ColumnSpec.name
ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")  # quality.spec.ArraySpec.name
CSV_TYPES = {"text/csv", "application/csv", "text/comma-separated-values"}
PARQUET_TYPES = {"application/vnd.apache.parquet", "application/parquet", "application/x-parquet"}
NPZ_TYPES = {"application/x-npz", "application/npz", "application/zip"}
# the one parser message that quotes nothing but numbers
_FIELDS = re.compile(r"Expected \d+ fields in line \d+, saw \d+")


class DatasetProblem(InvalidInput):
    """The file cannot be read as a dataset, or does not match the schema declared for it."""

    type_slug = "invalid-dataset"
    status = 422
    title = "The dataset file does not fit its declaration"


@dataclass(frozen=True)
class NpyHeader:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]


def file_format(path: Path, media_type: str) -> str | None:
    """``csv``, ``parquet`` or ``npz`` by the file's magic bytes, else by its media type."""
    with path.open("rb") as f:
        head = f.read(4)
    media = media_type.split(";")[0].strip().lower()
    if head == b"PAR1" or media in PARQUET_TYPES:
        return "parquet"
    if head == b"PK\x03\x04" or media in NPZ_TYPES:
        return "npz"
    if media in CSV_TYPES:
        return "csv"
    return None


def shown(name: str) -> str:
    """A column or member name as an error message may quote it (bounded, printable)."""
    text = "".join(c if c.isprintable() else "?" for c in name[:60])
    return text + ("…" if len(name) > 60 else "")


def record_end(chunk: bytes) -> int:
    """Where the last complete CSV record of ``chunk`` ends: after the last line break outside
    quotes (a break is a record's end when an even number of quotes precede it)."""
    raw = np.frombuffer(chunk, dtype=np.uint8)
    quotes = np.flatnonzero(raw == ord('"'))
    breaks = np.flatnonzero(raw == ord("\n"))
    ends = breaks[np.searchsorted(quotes, breaks) % 2 == 0]
    return int(ends[-1]) + 1 if ends.size else 0


def header_names(first_line: bytes) -> list[str]:
    """A CSV's column names from its header line, checked: UTF-8, at most MAX_COLUMNS, each
    named (printable, at most 200 characters) and none repeated."""
    try:
        text = first_line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DatasetProblem("the CSV's header is not UTF-8 text") from None
    names = [n.strip() for n in next(csv.reader([text]), [])]
    if len(names) > MAX_COLUMNS:
        raise DatasetProblem(f"the CSV has {len(names)} columns; at most {MAX_COLUMNS} are read")
    for i, name in enumerate(names):
        if not NAME.match(name):
            raise DatasetProblem(
                f"column {i + 1} of the CSV's header has no usable name (1 to 200 printable characters)"
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetProblem(f"the CSV's header repeats {', '.join(shown(n) for n in repeated[:5])}")
    if not names:
        raise DatasetProblem("the CSV has no header")
    return names


def csv_sample(path: Path) -> Any:
    """The CSV's header and first rows as a pandas DataFrame (columns named as the header,
    stripped): at most SAMPLE_BYTES read and SAMPLE_ROWS parsed."""
    import io

    import pandas as pd

    with path.open("rb") as f:
        chunk = f.read(SAMPLE_BYTES + 1)
    whole = len(chunk) <= SAMPLE_BYTES
    chunk = chunk[:SAMPLE_BYTES]
    line_end = chunk.find(b"\n")
    header = chunk if line_end < 0 else chunk[: line_end + 1]
    if len(header) > MAX_HEADER_BYTES or (line_end < 0 and not whole):
        raise DatasetProblem(f"the CSV's header line is longer than {MAX_HEADER_BYTES // 1024} KiB")
    names = header_names(header)
    if not whole:
        end = record_end(chunk)
        if end <= line_end + 1:
            raise DatasetProblem(f"the CSV's first row is longer than {SAMPLE_BYTES // (1024 * 1024)} MiB")
        chunk = chunk[:end]
    try:
        frame = pd.read_csv(io.BytesIO(chunk), nrows=SAMPLE_ROWS, encoding="utf-8-sig", low_memory=False)
    except UnicodeDecodeError:
        raise DatasetProblem("the CSV is not UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise DatasetProblem("the CSV is empty") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        raise DatasetProblem(parse_failure(exc)) from None
    if frame.shape[1] != len(names):
        raise DatasetProblem(
            f"the CSV's header names {len(names)} columns but its rows hold {frame.shape[1]}"
        )
    frame.columns = names
    return frame


def parse_failure(exc: Exception) -> str:
    """A parser's failure in the node's words: only a field-count message (numbers) is kept."""
    found = _FIELDS.search(str(exc))
    detail = (
        f": {found.group(0)}" if found else " (a row with more fields than the header, or an unclosed quote)"
    )
    return "the CSV cannot be parsed" + detail


def parquet_schema(path: Path) -> Any:
    """A Parquet file's Arrow schema, from its footer (no row is read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError):
        raise DatasetProblem("the file is not a readable Parquet file") from None
    if len(schema) > MAX_COLUMNS:
        raise DatasetProblem(f"the Parquet file has {len(schema)} columns; at most {MAX_COLUMNS} are read")
    for i, name in enumerate(schema.names):
        if not NAME.match(name.strip()) or name != name.strip():
            raise DatasetProblem(f"column {i + 1} of the Parquet file has no usable name")
    if len(set(schema.names)) != len(schema.names):
        raise DatasetProblem("the Parquet file's column names repeat")
    return schema


def npz_headers(path: Path) -> list[NpyHeader]:
    """Each array of an ``.npz``: name, dtype and shape from its ``.npy`` header alone."""
    from numpy.lib import format as npy

    headers: list[NpyHeader] = []
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ARRAYS:
                raise DatasetProblem(f"the .npz holds {len(members)} members; at most {MAX_ARRAYS} are read")
            for member in members:
                name = member.filename.removesuffix(".npy")
                if not member.filename.endswith(".npy") or not ARRAY_NAME.match(name):
                    raise DatasetProblem(
                        f"the .npz member {shown(member.filename)} is not a named .npy array"
                    )
                with archive.open(member) as f:
                    version = npy.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = npy.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
                    elif version == (2, 0):
                        shape, _, dtype = npy.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
                    else:
                        raise DatasetProblem(f"the .npz array {name} uses .npy format {version}")
                headers.append(NpyHeader(name, dtype, tuple(int(n) for n in shape)))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, SyntaxError, TypeError, TokenError):
        raise DatasetProblem("the file is not a readable .npz (a zip of .npy arrays)") from None
    if not headers:
        raise DatasetProblem("the .npz holds no arrays")
    return headers
