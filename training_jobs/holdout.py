"""The provider's split of its own data: what a job trains on, and what the node keeps back.

A dataset version registered with a schema (declared, or inferred at registration) becomes a
training set by its columns' roles (:mod:`quality.table`: ids dropped, categories encoded,
gaps filled, each change noted). A version without one (registered before schemas) is read
as before: an ``.npz`` with arrays ``X`` (features, any shape after the first axis) and ``y``
(integer labels), or a CSV of numbers with a header whose label column is ``label`` (or the
last column). A version the node found untrainable at registration is refused before any
job code runs, with the reason it gave then.

The split is a permutation seeded by the dataset's sha256, so every job on one dataset
version holds back the same rows, and the training sandbox only ever receives the training
part: the held-out rows never reach the consumer's code.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from kernel.storage import ObjectStore
from marketplace.models import Offering, OfferingVersion
from quality.table import TrainingSet, UnusableDataset, training_set

MIN_ROWS = 10
__all__ = ["MIN_ROWS", "Split", "UnusableDataset", "load", "read_dataset", "split"]


class Untrained(UnusableDataset):
    """The version was found untrainable when it was registered (flagged, not refused)."""

    type_slug = "untrainable-version"
    title = "The dataset version cannot be trained on"


@dataclass(frozen=True)
class Split:
    train_X: np.ndarray
    train_y: np.ndarray
    holdout_X: np.ndarray
    holdout_y: np.ndarray

    def write(self, train_path: Path, holdout_path: Path) -> None:
        np.savez(train_path, X=self.train_X, y=self.train_y)
        np.savez(holdout_path, X=self.holdout_X, y=self.holdout_y)


def load(engine: Engine, store: ObjectStore, offering_id: str, sha256: str) -> TrainingSet:
    """The training set of an offering's version (looked up by its sha256), by its schema.

    Raises :class:`Untrained` for a version found untrainable at registration (its reason is
    the provider's own metadata, shown in the catalog) and :class:`UnusableDataset` when the
    bytes cannot be made into a training set (the detail may quote the data: provider only).
    """
    with Session(engine) as session:
        found = session.exec(
            select(OfferingVersion, Offering.media_type)
            .join(Offering, Offering.id == OfferingVersion.offering_id)  # type: ignore[arg-type]
            .where(OfferingVersion.offering_id == offering_id, OfferingVersion.asset_sha256 == sha256)
            # the newest version holding these bytes, as the job's lineage names it
            .order_by(col(OfferingVersion.version).desc())
        ).first()
    version, media_type = found if found is not None else (None, "")
    trainable = version.trainable if version is not None else None
    if trainable is not None and not trainable.get("ok"):
        raise Untrained(f"the dataset version cannot be trained on: {trainable.get('reason')}")
    data = b"".join(store.read(sha256))
    return _read(data, media_type, version.schema_doc if version is not None else None)


def read_dataset(
    data: bytes, media_type: str = "", schema: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64): by ``schema``'s roles (a version's stored
    ``schema_doc``), or, without one, from an ``.npz`` with X and y or a numeric CSV."""
    read = _read(data, media_type, schema)
    return read.features, read.labels


def _read(data: bytes, media_type: str, schema: dict[str, Any] | None) -> TrainingSet:
    if schema is not None:
        table = training_set(data, schema)
        features, labels = _checked(table.features, table.labels)
        return TrainingSet(features, labels, table.notes)
    if data[:4] == b"PK\x03\x04" or media_type in ("application/x-npz", "application/zip"):
        return TrainingSet(*_from_npz(data))
    return TrainingSet(*_from_csv(data))


def _from_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            if "X" not in archive or "y" not in archive:
                raise UnusableDataset(f"the .npz holds {sorted(archive.files)}; it needs arrays X and y")
            features, labels = archive["X"], archive["y"]
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise UnusableDataset(f"not a readable .npz: {exc}") from None
    return _checked(features, labels)


def _from_csv(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    except UnicodeDecodeError:
        raise UnusableDataset("the dataset is neither an .npz nor a UTF-8 CSV") from None
    if len(rows) < 2:
        raise UnusableDataset("the CSV has no data rows")
    header = [h.strip() for h in rows[0]]
    label = header.index("label") if "label" in header else len(header) - 1
    try:
        table = np.array([[float(v) for v in row] for row in rows[1:] if row], dtype=np.float64)
    except ValueError as exc:
        raise UnusableDataset(f"the CSV must hold numbers only: {exc}") from None
    if table.ndim != 2 or table.shape[1] != len(header):
        raise UnusableDataset("the CSV's rows do not all have as many columns as its header")
    features = np.delete(table, label, axis=1)
    return _checked(features, table[:, label])


def _checked(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if features.ndim < 2 or labels.ndim != 1 or len(features) != len(labels):
        raise UnusableDataset(
            f"X must be (rows, features…) and y (rows,) of the same length; got {features.shape} and "
            f"{labels.shape}"
        )
    if len(labels) < MIN_ROWS:
        raise UnusableDataset(f"the dataset has {len(labels)} rows; at least {MIN_ROWS} are needed")
    if not np.all(np.isfinite(features)):
        raise UnusableDataset("X holds NaN or infinite values")
    if not np.all(np.equal(np.mod(labels, 1), 0)):
        raise UnusableDataset("y must hold integer class labels")
    return features.astype(np.float32), labels.astype(np.int64)


def split(features: np.ndarray, labels: np.ndarray, *, fraction: float, seed_hex: str) -> Split:
    """Hold back ``fraction`` of the rows (at least one), chosen by a permutation seeded from
    ``seed_hex`` (the dataset's sha256)."""
    order = np.random.default_rng(int(seed_hex[:16], 16)).permutation(len(labels))
    held = max(1, min(len(labels) - 1, round(len(labels) * fraction)))
    keep, hold = np.sort(order[held:]), np.sort(order[:held])
    return Split(features[keep], labels[keep], features[hold], labels[hold])
