"""Small generated data sets for the demo, the tests and the benchmarks (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def digits_npz(path: Path) -> Path:
    """scikit-learn's 8x8 digits (1,797 images, bundled with the library) as a training-job npz.

    ``X`` is float32 of shape (n, 1, 8, 8) scaled to [0, 1], ``y`` int64 labels 0-9: the
    layout a job's ``/data/train.npz`` and the node's holdout use.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(f, X=X, y=y)
    return path
