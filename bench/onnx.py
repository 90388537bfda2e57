"""ONNX Runtime against PyTorch eager for the digits CNN, in one process.

Trains the example bundle's ``DigitsCNN`` (examples/jobs/digits-cnn/model.py) for a few epochs
on the generated digits, exports it with the node's own exporter
(``training_jobs.export.export_torch``: opset 17, dynamic batch), then times single forward
passes of the same weights in PyTorch eager (``torch.inference_mode``) and in an ONNX Runtime
CPU session, at batch 1 and batch 64: warm-up first, then many iterations, median latency.
``torch.set_num_threads`` and ONNX Runtime's intra-op threads are set to the same ``--threads``.

    .venv/bin/python bench/onnx.py                # 1 thread
    .venv/bin/python bench/onnx.py --threads 2 --iterations 5000
    .venv/bin/python bench/onnx.py --job-runs 0   # inference only, no end-to-end job

Then the end-to-end time of the digits CNN as a compute-to-data job (see bench/_job.py).

Target: ONNX Runtime at least 1.5x faster than eager at batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BATCHES = (1, 64)
SPEEDUP_TARGET = 1.5


def median_latency(run: Callable[[], object], iterations: int, warmup: int) -> float:
    """Median seconds of one call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train(model, X: np.ndarray, y: np.ndarray, epochs: int) -> None:  # type: ignore[no-untyped-def]
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    inputs, labels = torch.from_numpy(X), torch.from_numpy(y)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(X), generator=order).split(64):
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads = ORT intra-op threads")
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per batch size")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=3, help="training before timing (0: random weights)")
    parser.add_argument("--job-runs", type=int, default=3, help="end-to-end digits CNN jobs (0: skip)")
    args = parser.parse_args()

    # this file is bench/onnx.py: its directory must not shadow the onnx package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path[:0] = [str(ROOT), str(ROOT / "examples" / "jobs" / "digits-cnn")]
    import onnxruntime as ort
    import torch
    from model import make_model  # the example bundle's network

    from training_jobs.datasets import digits_npz
    from training_jobs.export import export_torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="agora-bench-onnx-") as tmp:
        with np.load(digits_npz(Path(tmp) / "digits.npz")) as npz:
            X, y = npz["X"], npz["y"]
        model = make_model()
        train(model, X, y, args.epochs)
        onnx_path = Path(tmp) / "model.onnx"
        export_torch(model, X[:64], 17, onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    with torch.inference_mode():
        eager_all = model(torch.from_numpy(X)).numpy()
    onnx_all = session.run(None, {name: X})[0]
    accuracy = float(np.mean(onnx_all.argmax(axis=1) == y))
    max_diff = float(np.max(np.abs(eager_all - onnx_all)))

    rows = []
    for batch in BATCHES:
        x_np = np.ascontiguousarray(X[:batch])
        x_torch = torch.from_numpy(x_np)

        def eager(x: torch.Tensor = x_torch) -> object:
            with torch.inference_mode():
                return model(x)

        def onnx(x: np.ndarray = x_np) -> object:
            return session.run(None, {name: x})

        rows.append(
            (
                batch,
                median_latency(eager, args.iterations, args.warmup),
                median_latency(onnx, args.iterations, args.warmup),
            )
        )

    weights = f"trained {args.epochs} epochs" if args.epochs else "random weights"
    print(
        f"digits CNN ({weights}, train accuracy {accuracy:.3f}), {args.threads} thread(s) for torch "
        f"{torch.__version__} and ONNX Runtime {ort.__version__}; median of {args.iterations} calls "
        f"after {args.warmup} warm-up\n"
    )
    print(f"{'batch':>5} {'torch eager us':>15} {'onnxruntime us':>15} {'speed-up':>9}")
    for batch, eager_s, onnx_s in rows:
        print(f"{batch:5d} {eager_s * 1e6:15.1f} {onnx_s * 1e6:15.1f} {eager_s / onnx_s:8.2f}x")
    print(f"\nmax |eager - ONNX| over {len(X)} rows: {max_diff:.2e}")
    speedup = rows[0][1] / rows[0][2]
    verdict = "met" if speedup >= SPEEDUP_TARGET else "NOT met"
    print(f"target: ONNX Runtime >= {SPEEDUP_TARGET}x eager at batch 1: {verdict}")
    if args.job_runs:
        sys.path.insert(0, str(HERE))  # the onnx package is imported: bench/ may be on the path now
        from _job import end_to_end

        end_to_end(args.job_runs)


if __name__ == "__main__":
    main()
