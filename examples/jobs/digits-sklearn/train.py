"""Fit a scaled logistic regression on the provider's digits inside the sandbox.

Reads ``$AGORA_DATA/train.npz`` (``X`` of shape (n, 1, 8, 8) or (n, 64), ``y``) and the
job's parameters (``$AGORA_PARAMS_FILE``: C, max_iter), writes ``model.joblib`` (a fitted
``Pipeline(StandardScaler, LogisticRegression)``) and ``metrics.json`` to ``$AGORA_OUTPUT``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

DEFAULTS = {"C": 1.0, "max_iter": 1000}


def main() -> None:
    data = Path(os.environ.get("AGORA_DATA", "/data"))
    out = Path(os.environ.get("AGORA_OUTPUT", "/out"))
    seed = int(os.environ.get("AGORA_SEED", "0"))
    params = dict(DEFAULTS)
    params_file = os.environ.get("AGORA_PARAMS_FILE")
    if params_file and Path(params_file).exists():
        params.update(json.loads(Path(params_file).read_text()))

    with np.load(data / "train.npz", allow_pickle=False) as npz:
        X = npz["X"].astype(np.float32).reshape(len(npz["X"]), -1)
        y = npz["y"].astype(np.int64)

    started = time.perf_counter()
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "classify",
                LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]), random_state=seed),
            ),
        ]
    )
    model.fit(X, y)
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    metrics = {  # named numbers only: the node passes on nothing else (names in job.yaml)
        "train_loss": float(log_loss(y, model.predict_proba(X))),
        "train_accuracy": float(model.score(X, y)),
        "n_train": len(X),
        "n_features": X.shape[1],
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"train accuracy {metrics['train_accuracy']:.3f}, log loss {metrics['train_loss']:.4f}")


if __name__ == "__main__":
    main()
