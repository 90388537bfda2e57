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


def digits_partitions(
    directory: Path, count: int, *, iid: bool = True, alpha: float = 0.5, seed: int = 0
) -> list[Path]:
    """The digits split across ``count`` providers, one ``.npz`` each (same layout as
    :func:`digits_npz`): IID (a random equal split) or non-IID, where each class's images are
    shared out by a Dirichlet(``alpha``) draw, so providers hold very different label mixes
    (the usual federated-learning benchmark skew; smaller ``alpha``, stronger skew)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    if iid:
        parts = np.array_split(rng.permutation(len(y)), count)
    else:
        buckets: list[list[int]] = [[] for _ in range(count)]
        for label in range(10):
            members = rng.permutation(np.flatnonzero(y == label))
            shares = rng.dirichlet([alpha] * count)
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for bucket, chunk in zip(buckets, np.split(members, cuts), strict=True):
                bucket.extend(chunk.tolist())
        parts = [np.sort(np.array(b, dtype=np.int64)) for b in buckets]
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, rows in enumerate(parts):
        path = directory / f"digits-{'iid' if iid else 'noniid'}-{index + 1}-of-{count}.npz"
        with path.open("wb") as f:
            np.savez(f, X=X[rows], y=y[rows])
        paths.append(path)
    return paths
