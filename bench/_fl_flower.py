"""Flower's legacy gRPC engine on the same task: a server process, one process per client.

The server is ``flwr.server.start_server`` with FedAvg (all clients every round, fit and
federated evaluation), started from the same initial weights as Agora's federation; each
client is ``flwr.client.start_client`` with a ``NumPyClient`` whose ``fit`` runs the loop of
Agora's node recipe (``federation/trainer/recipe.py``) written out here: a fresh SGD optimizer
per fit, cross-entropy, ``local_epochs`` shuffled passes in batches, the shuffle seeded by
``seed + round``. A client holds back the same rows an Agora node would (20 %, a
permutation seeded by the sha256 of its partition file: ``training_jobs.holdout.split``),
trains on the rest and evaluates on those.

Timed inside: each client's ``fit`` (``train_seconds``, returned in its metrics) and, in the
server's strategy, the moments each round's fit and evaluation are configured and aggregated.
The clients reach the server through the counting proxy (:mod:`_wire`, TCP mode), which
counts the gRPC bytes.

    python bench/_fl_flower.py server --port P --rounds R --clients N --init w.npz --out r.json …
    python bench/_fl_flower.py client --server 127.0.0.1:Q --data part.npz --recipe '{…}'
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL_DIR = ROOT / "examples" / "federation" / "digits-cnn"
HOLDOUT_FRACTION = 0.2  # the node's default (AGORA_JOBS_HOLDOUT_FRACTION)


# the training loop and the evaluation, as the node's recipe runs them ---------------------------


def make_model() -> Any:
    sys.path.insert(0, str(MODEL_DIR))
    from model import make_model as factory  # the federation example's CNN

    return factory()


def initial_weights(seed: int) -> dict[str, np.ndarray]:
    """The factory's weights drawn on ``seed``: what Agora's coordinator starts from."""
    import torch

    torch.manual_seed(seed)
    return {k: v.detach().numpy().copy() for k, v in make_model().state_dict().items()}


def fit(model: Any, X: Any, y: Any, recipe: dict[str, Any], round_seed: int) -> tuple[float, float]:
    """``local_epochs`` passes of SGD over (X, y); the last pass's mean loss and accuracy."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(
        TensorDataset(X, y),
        batch_size=int(recipe["batch_size"]),
        shuffle=True,
        generator=torch.Generator().manual_seed(round_seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=float(recipe["lr"]), momentum=float(recipe.get("momentum", 0.0))
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, correct, seen = 0.0, 0, 0
    for _ in range(int(recipe["local_epochs"])):
        total, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            optimizer.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(dim=1) == yb).sum())
            seen += len(yb)
    return total / max(seen, 1), correct / max(seen, 1)


def evaluate(model: Any, X: Any, y: Any) -> tuple[float, float]:
    import torch
    from torch import nn

    model.eval()
    with torch.no_grad():
        logits = model(X)
        return float(nn.functional.cross_entropy(logits, y)), float(
            (logits.argmax(dim=1) == y).float().mean()
        )


# the client process ----------------------------------------------------------------------------


def client_main(args: argparse.Namespace) -> None:
    import torch
    from flwr.client import NumPyClient, start_client

    sys.path.insert(0, str(ROOT))
    from training_jobs import holdout

    torch.set_num_threads(1)  # as the node's warm trainer
    data = Path(args.data).read_bytes()
    features, labels = holdout.read_dataset(data)
    split = holdout.split(
        features, labels, fraction=HOLDOUT_FRACTION, seed_hex=hashlib.sha256(data).hexdigest()
    )
    recipe = json.loads(args.recipe)
    X, y = torch.tensor(split.train_X).reshape(-1, 1, 8, 8), torch.tensor(split.train_y)
    hX, hy = torch.tensor(split.holdout_X).reshape(-1, 1, 8, 8), torch.tensor(split.holdout_y)
    model = make_model()
    names = list(model.state_dict())

    def load(parameters: list[np.ndarray]) -> None:
        model.load_state_dict({n: torch.tensor(p) for n, p in zip(names, parameters, strict=True)})

    class DigitsClient(NumPyClient):  # type: ignore[misc]
        def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
            return [t.detach().numpy().copy() for t in model.state_dict().values()]

        def fit(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
            started = time.perf_counter()
            torch.manual_seed(recipe["seed"] + int(config["round"]))
            load(parameters)
            loss, accuracy = fit(model, X, y, recipe, recipe["seed"] + int(config["round"]))
            weights = self.get_parameters({})
            seconds = time.perf_counter() - started
            return weights, len(y), {"train_seconds": seconds, "train_loss": loss, "train_accuracy": accuracy}

        def evaluate(
            self, parameters: list[np.ndarray], config: dict[str, Any]
        ) -> tuple[float, int, dict[str, Any]]:
            load(parameters)
            loss, accuracy = evaluate(model, hX, hy)
            return loss, len(hy), {"accuracy": accuracy}

    start_client(server_address=args.server, client=DigitsClient().to_client(), insecure=True)


# the server process ----------------------------------------------------------------------------


def server_main(args: argparse.Namespace) -> None:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    with np.load(args.init) as npz:
        init = [npz[name] for name in json.loads(args.names)]
    recipe = json.loads(args.recipe)
    rounds: dict[int, dict[str, Any]] = {}

    def at(number: int, what: str) -> None:
        rounds.setdefault(number, {"round": number})[what] = time.time()

    class TimedFedAvg(FedAvg):  # type: ignore[misc]
        """FedAvg as it is, with the moments of each round and what each client reported."""

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            at(server_round, "fit_configured")
            instructions = super().configure_fit(server_round, parameters, client_manager)
            at(server_round, "fit_sent")  # the clients are connected (sampling waits for them)
            return instructions

        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            at(server_round, "fit_results")
            rounds[server_round]["fit"] = [{"num_examples": r.num_examples, **r.metrics} for _, r in results]
            rounds[server_round]["fit_failures"] = len(failures)
            out = super().aggregate_fit(server_round, results, failures)
            at(server_round, "fit_aggregated")
            return out

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            at(server_round, "evaluate_configured")
            return super().configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
            at(server_round, "evaluate_results")
            rounds[server_round]["evaluate"] = [
                {"num_examples": r.num_examples, "loss": r.loss, **r.metrics} for _, r in results
            ]
            rounds[server_round]["evaluate_failures"] = len(failures)
            return super().aggregate_evaluate(server_round, results, failures)

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=args.clients,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(init),
        on_fit_config_fn=lambda r: {"round": r, "lr": float(recipe["lr"])},
        evaluate_metrics_aggregation_fn=lambda results: {},
        fit_metrics_aggregation_fn=lambda results: {},
    )
    start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=ServerConfig(num_rounds=args.rounds),
        strategy=strategy,
    )
    Path(args.out).write_text(json.dumps([rounds[n] for n in sorted(rounds)]))


# driven from bench/fl.py ---------------------------------------------------------------------


@dataclass
class FlowerRun:
    rounds: list[dict[str, Any]]
    launched: float  # time.time() when the server and client processes were started
    chunks: list[Any] = field(default_factory=list)


def flower_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGORA_", "FLWR_"))}
    env.update(FLWR_TELEMETRY_ENABLED="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_flower(
    work: Path, partitions: list[Path], rounds: int, recipe: dict[str, Any], seed: int, timeout: float = 1800
) -> FlowerRun:
    """One Flower federation over ``partitions``; every figure recorded by its processes."""
    from _wire import Tap

    from tests.services import free_port, wait_for_port

    work.mkdir(parents=True, exist_ok=True)
    weights = initial_weights(seed)
    np.savez(work / "init.npz", **weights)
    server_port, public = free_port(), free_port()
    out = work / "rounds.json"
    env = flower_env()
    common = ["--recipe", json.dumps({**recipe, "seed": seed})]
    me = [sys.executable, str(Path(__file__).resolve())]
    procs: list[subprocess.Popen[bytes]] = []
    with Tap({"flower": (public, server_port)}, mode="tcp") as tap, contextlib.ExitStack() as logs:
        try:
            launched = time.time()
            log = logs.enter_context((work / "server.log").open("wb"))
            procs.append(
                subprocess.Popen(
                    [
                        *me,
                        "server",
                        *("--port", str(server_port), "--rounds", str(rounds)),
                        *("--clients", str(len(partitions)), "--init", str(work / "init.npz")),
                        *("--names", json.dumps(list(weights)), "--out", str(out)),
                        *common,
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            wait_for_port(server_port, timeout=120, proc=procs[0])
            for index, path in enumerate(partitions):
                log = logs.enter_context((work / f"client-{index + 1}.log").open("wb"))
                procs.append(
                    subprocess.Popen(
                        [*me, "client", "--server", f"127.0.0.1:{public}", "--data", str(path), *common],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            procs[0].wait(timeout)
            if procs[0].returncode != 0 or not out.exists():
                tail = (work / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Flower server failed ({procs[0].returncode}):\n{tail}")
            for proc in procs[1:]:
                proc.wait(60)
            _, chunks = tap.take()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
    print(
        f"Flower {work.name}: {rounds} rounds in {time.time() - launched:.1f} s, {len(chunks)} chunks",
        file=sys.stderr,
        flush=True,
    )
    return FlowerRun(rounds=json.loads(out.read_text()), launched=launched, chunks=chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description="a Flower server or client of bench/fl.py")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--rounds", type=int, required=True)
    server.add_argument("--clients", type=int, required=True)
    server.add_argument("--init", required=True)
    server.add_argument("--names", required=True)
    server.add_argument("--out", required=True)
    server.add_argument("--recipe", required=True)
    client = sub.add_parser("client")
    client.add_argument("--server", required=True)
    client.add_argument("--data", required=True)
    client.add_argument("--recipe", required=True)
    args = parser.parse_args()
    # bench/ holds onnx.py: it must not shadow the onnx package in these processes
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    server_main(args) if args.role == "server" else client_main(args)


if __name__ == "__main__":
    main()
