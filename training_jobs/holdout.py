"""The provider's split of its own data: what a job trains on, and what the node keeps back.

A dataset offering is an ``.npz`` with arrays ``X`` (features, any shape after the first
axis) and ``y`` (integer labels), or a CSV of numbers with a header whose label column is
``label`` (or the last column). The split is a permutation seeded by the dataset's sha256,
so every job on one dataset version holds back the same rows, and the training sandbox only
ever receives the training part: the held-out rows never reach the consumer's code.
"""

from __future__ import annotations

import csv
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel.errors import InvalidInput

MIN_ROWS = 10


class UnusableDataset(InvalidInput):
    type_slug = "unusable-dataset"
    title = "The dataset cannot be used for training"


@dataclass(frozen=True)
class Split:
    train_X: np.ndarray
    train_y: np.ndarray
    holdout_X: np.ndarray
    holdout_y: np.ndarray

    def write(self, train_path: Path, holdout_path: Path) -> None:
        np.savez(train_path, X=self.train_X, y=self.train_y)
        np.savez(holdout_path, X=self.holdout_X, y=self.holdout_y)


def read_dataset(data: bytes, media_type: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64) from an ``.npz`` or a CSV."""
    if data[:4] == b"PK\x03\x04" or media_type in ("application/x-npz", "application/zip"):
        return _from_npz(data)
    return _from_csv(data)


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
