"""The coordinator side of a federation's ONNX translation, for its tests: a minimal host (settings,
object store, sandbox), the digits, the example CNN trained briefly in the test process (node
code) and a federation row as :mod:`federation.final` hands it to the translator."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from federation import tensors
from federation.models import Federation
from node.settings import Settings
from node.storage import LocalObjectStore
from training_jobs import bundle as bundles
from training_jobs.sandbox import BubblewrapSandbox, Sandbox

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "federation" / "digits-cnn"
TOLERANCE = 1e-4


@dataclass
class Host:
    """What the translator needs of a node: its settings, its object store and its sandbox."""

    settings: Settings
    store: LocalObjectStore
    box: BubblewrapSandbox

    def sandbox(self) -> Sandbox:
        return self.box


@dataclass
class Digits:
    X: np.ndarray  # [n, 1, 8, 8] in [0, 1]
    y: np.ndarray


def make_host(home: Path) -> Host:
    box = BubblewrapSandbox()
    box.check()
    return Host(Settings(home=home), LocalObjectStore(home / "objects"), box)


def load_digits() -> Digits:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    return Digits((data.data / 16).astype(np.float32).reshape(-1, 1, 8, 8), data.target.astype(np.int64))


def make_model() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from model import make_model as factory
    finally:
        sys.path.remove(str(EXAMPLE))
    return factory()


def train(digits: Digits) -> tensors.Weights:
    """The CNN after three epochs on the digits: weights that mean something."""
    import torch

    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.from_numpy(digits.X), torch.from_numpy(digits.y)
    for _ in range(3):
        for batch in torch.randperm(len(y)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
            optimizer.step()
    return {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}


def torch_outputs(weights: tensors.Weights, X: np.ndarray) -> np.ndarray:
    import torch

    model = make_model()
    model.load_state_dict({name: torch.from_numpy(a) for name, a in weights.items()})
    model.eval()
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(X)).numpy())


def federation(
    host: Host, bundle_dir: Path, weights: tensors.Weights, **spec: Any
) -> tuple[Federation, bytes]:
    """A coordinator's federation row as :mod:`federation.final` hands it over, with the bundle and
    the global weights in the store."""
    code = host.store.put_bytes(bundles.pack(bundle_dir))
    blob = tensors.encode(weights)
    stored = host.store.put_bytes(blob)
    fed = Federation(
        id=f"urn:uuid:onnx-{code.sha256[:12]}",
        role="coordinator",
        name="digits-federated",
        coordinator="0x" + "11" * 20,
        spec={
            "name": "digits-federated",
            "model": {"factory": "model:make_model", "input_shape": [1, 8, 8], "seed": 0},
            "onnx": {"opset": 17, "tolerance": TOLERANCE},
            **spec,
        },
        code_digest=code.sha256,
        layout={name: [list(a.shape), str(a.dtype)] for name, a in weights.items()},
        global_sha256=stored.sha256,
    )
    return fed, blob
