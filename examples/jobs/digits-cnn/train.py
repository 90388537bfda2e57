"""Train DigitsCNN on the provider's data inside the sandbox.

Reads ``$AGORA_DATA/train.npz`` (``X`` float32 (n, 1, 8, 8), ``y`` int64) and the job's
parameters (``$AGORA_PARAMS_FILE``: epochs, lr, batch_size, save), trains deterministically
on the CPU with the seed ``$AGORA_SEED``, and writes to ``$AGORA_OUTPUT``:

* ``model.pt`` — TorchScript (``save: torchscript``, the default) or the state dict
  (``save: state_dict``, for ``output.format: torch-state-dict`` with ``factory: model:make_model``);
* ``metrics.json`` — the run's own figures: final training loss and accuracy, epochs, rows, seed, seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from model import make_model
from torch import nn

DEFAULTS = {"epochs": 8, "lr": 0.01, "batch_size": 64, "save": "torchscript"}


def load_params() -> dict[str, object]:
    params = dict(DEFAULTS)
    params_file = os.environ.get("AGORA_PARAMS_FILE")
    if params_file and Path(params_file).exists():
        params.update(json.loads(Path(params_file).read_text()))
    if params["save"] not in ("torchscript", "state_dict"):
        sys.exit(f"parameter save must be torchscript or state_dict, not {params['save']!r}")
    return params


def main() -> None:
    data = Path(os.environ.get("AGORA_DATA", "/data"))
    out = Path(os.environ.get("AGORA_OUTPUT", "/out"))
    seed = int(os.environ.get("AGORA_SEED", "0"))
    params = load_params()
    epochs, lr, batch_size = int(params["epochs"]), float(params["lr"]), int(params["batch_size"])

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    with np.load(data / "train.npz", allow_pickle=False) as npz:
        X = torch.from_numpy(npz["X"].astype(np.float32).reshape(-1, 1, 8, 8))
        y = torch.from_numpy(npz["y"].astype(np.int64))

    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    history = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss, correct = 0.0, 0
        for batch in torch.randperm(len(X), generator=order).split(batch_size):
            optimizer.zero_grad()
            logits = model(X[batch])
            loss = loss_fn(logits, y[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(dim=1) == y[batch]).sum())
        history.append({"epoch": epoch, "loss": total_loss / len(X), "accuracy": correct / len(X)})
        print(
            f"epoch {epoch}/{epochs}: loss {history[-1]['loss']:.4f}, accuracy {history[-1]['accuracy']:.3f}"
        )
        print(f"##agora progress={epoch / epochs:.3f}", flush=True)  # the node's progress bar

    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    if params["save"] == "torchscript":
        torch.jit.save(torch.jit.script(model), str(out / "model.pt"))
    else:
        torch.save(model.state_dict(), out / "model.pt")
    metrics = {  # named numbers only: the node passes on nothing else (names in job.yaml)
        "train_loss": history[-1]["loss"],
        "train_accuracy": history[-1]["accuracy"],
        "epochs": len(history),
        "n_train": len(X),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
