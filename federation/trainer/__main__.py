"""The warm trainer: ``python -m agora_fl`` in a sandbox, serving one federation round after round.

::

    python -P -m agora_fl --role trainer --data /data/train.npz --bundle /job --torch
    python -P -m agora_fl --role evaluator --data /holdout/holdout.npz --bundle /job --torch

It loads torch (``--torch``) and its rows once, then answers request frames (:mod:`.frames`)
on the channel the sandbox passed it (``$AGORA_CHANNEL_FDS``), one reply per request, until
``stop`` or the end of the channel:

============  ==========================================  =======================================
op            request header (+ payload)                  reply header (+ payload)
============  ==========================================  =======================================
``hello``     ``names`` (the model's order, or null),     ``layout`` [[name, shape, dtype]…],
              ``model`` {factory, client, input_shape,    ``rows``, ``instance``, ``pid``
              seed}, ``recipe`` (or null)
``init``      ``seed``                                    weights from the factory
``fit``       ``config`` + global weights                 ``num_examples``, ``metrics`` + weights
``evaluate``  ``config`` + global weights                 ``loss``, ``accuracy``, ``num_examples``,
                                                          ``metrics``
``stop``      —                                           — (then the process exits 0)
============  ==========================================  =======================================

Every reply carries ``ok``, ``call`` (the request's) and ``served`` (requests answered by this
process). A failure of the bundle's code is ``{"ok": false, "error": …}`` with the traceback in
the log. The log is stdout and stderr: what the bundle's code prints never enters the channel.

The trainer role holds the training rows and runs the node's recipe (:mod:`.recipe`) on the
bundle's factory, or the bundle's Flower-style client (:mod:`.client`). The evaluator role
holds the held-out rows instead and only evaluates: the node's code computes loss and accuracy
from the factory's model outputs and returns those three numbers.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import frames, loading
from .client import ClientSession

CHANNEL_ENV = "AGORA_CHANNEL_FDS"
EXIT_SETUP = 2
ERROR_MAX = 2000


class Session:
    """What one process serves: its rows, its role, and the model code named at ``hello``."""

    def __init__(self, role: str, X: np.ndarray | None, y: np.ndarray | None, bundle: str) -> None:
        self.role, self.X, self.y, self.bundle = role, X, y, bundle
        self.names: list[str] | None = None
        self.factory: Any = None
        self.recipe: dict[str, Any] | None = None
        self.input_shape: list[int] | None = None
        self.seed = 0
        self.client: ClientSession | None = None
        self.model: Any = None  # the evaluator's one model, its weights loaded per call
        self._tensors: tuple[Any, Any] | None = None

    def rows(self) -> tuple[Any, Any]:
        """The rows as tensors the model takes, made once."""
        from . import recipe

        if self.X is None or self.y is None:
            raise ValueError("this process holds no rows")
        if self._tensors is None:
            self._tensors = recipe.inputs(self.X, self.input_shape), recipe.labels(self.y)
        return self._tensors

    def hello(self, header: dict[str, Any]) -> dict[str, Any]:
        model = header.get("model") or {}
        loading.add_bundle(self.bundle)
        self.input_shape = model.get("input_shape")
        self.seed = int(model.get("seed", 0))
        self.recipe = header.get("recipe")
        names = header.get("names")
        if model.get("factory"):
            self.factory = loading.resolve(model["factory"])
        if self.role == "trainer" and model.get("client"):
            self.client = ClientSession(loading.resolve(model["client"]), self.X, self.y)
        elif self.factory is None:
            raise ValueError("the bundle names no model factory")
        layout = self._layout(names)
        self.names = list(names) if names else [name for name, _, _ in layout]
        if self.role == "evaluator":
            from . import recipe

            self.model = recipe.build(self.factory, self.seed)
        return {"layout": layout, "rows": 0 if self.y is None else len(self.y), "pid": os.getpid()}

    def _layout(self, names: list[str] | None) -> loading.Layout:
        if self.client is not None and self.client.has_parameters():
            if not names:
                raise ValueError("a client without a model factory needs the federation's tensor names")
            return self.client.layout(names)
        if self.factory is None:
            raise ValueError("the client has no get_parameters and the bundle names no model factory")
        from . import recipe

        return recipe.layout(recipe.build(self.factory, self.seed))

    def init(self, header: dict[str, Any]) -> bytes:
        assert self.names is not None
        seed = int(header.get("seed", self.seed))
        if self.factory is None and self.client is not None:
            np.random.seed(seed % 2**32)
            return loading.encode(self.client.parameters(self.names))
        from . import recipe

        arrays = recipe.arrays_of(recipe.build(self.factory, seed))
        return loading.encode({name: arrays[name] for name in self.names})

    def fit(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        assert self.names is not None
        if self.role != "trainer":
            raise ValueError("the evaluator does not train")
        config = header.get("config") or {}
        arrays = loading.decode(payload)
        if self.client is not None:
            new, count, metrics = self.client.fit(self.names, arrays, config)
        else:
            from . import recipe

            assert self.recipe is not None
            X, y = self.rows()
            new, count, metrics = recipe.fit(self.factory, X, y, arrays, self.recipe, config, self.seed)
        ordered = {name: new[name] for name in self.names if name in new} | new
        return {"num_examples": count, "metrics": metrics}, loading.encode(ordered)

    def evaluate(self, header: dict[str, Any], payload: bytes) -> dict[str, Any]:
        assert self.names is not None
        arrays = loading.decode(payload)
        if self.client is not None:
            loss, count, metrics = self.client.evaluate(self.names, arrays, header.get("config") or {})
            return {
                "loss": loss,
                "accuracy": metrics.get("accuracy"),
                "num_examples": count,
                "metrics": metrics,
            }
        from . import recipe

        model = self.model if self.model is not None else recipe.build(self.factory, self.seed)
        recipe.load_into(model, arrays)
        X, y = self.rows()
        loss, accuracy, count = recipe.evaluate(model, X, y)
        return {"loss": loss, "accuracy": accuracy, "num_examples": count, "metrics": {}}


def _rows(path: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not path:
        return None, None
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["X"]), np.asarray(data["y"])


def serve(session: Session, read_fd: int, write_fd: int, max_payload: int) -> int:
    """Answer requests until ``stop`` or the end of the channel; the exit status."""
    instance = secrets.token_hex(8)
    served = 0
    while True:
        try:
            header, payload = frames.read(read_fd, max_payload=max_payload)
        except frames.ChannelClosed:
            return 0
        op, call = header.get("op"), header.get("call")
        reply: dict[str, Any] = {"ok": True, "call": call}
        out = b""
        try:
            if op == "hello":
                reply |= session.hello(header) | {"instance": instance}
            elif op == "init":
                out = session.init(header)
            elif op == "fit":
                fields, out = session.fit(header, payload)
                reply |= fields
            elif op == "evaluate":
                reply |= session.evaluate(header, payload)
            elif op != "stop":
                raise ValueError(f"unknown op {str(op)[:40]!r}")
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "call": call, "error": f"{type(exc).__name__}: {exc}"[:ERROR_MAX]}
            out = b""
        served += 1
        reply["served"] = served
        try:
            frame = frames.pack(reply, out)
        except (TypeError, ValueError, frames.BadFrame) as exc:  # a figure JSON cannot hold
            frame = frames.pack({"ok": False, "call": call, "served": served, "error": str(exc)[:ERROR_MAX]})
        frames.write_all(write_fd, frame)
        if op == "stop":
            return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agora_fl", description="the warm federated trainer")
    parser.add_argument("--role", choices=("trainer", "evaluator"), required=True)
    parser.add_argument("--data", help="the rows (.npz with X, y); none for the coordinator's init")
    parser.add_argument("--bundle", default="/job", help="the bundle's directory")
    parser.add_argument("--torch", action="store_true", help="import torch now, before the first request")
    parser.add_argument("--max-payload", type=int, default=1 << 30)
    args = parser.parse_args(argv)
    try:
        read_fd, write_fd = (int(fd) for fd in os.environ[CHANNEL_ENV].split(","))
    except (KeyError, ValueError):
        print(f"agora_fl: no channel (${CHANNEL_ENV})", file=sys.stderr)
        return EXIT_SETUP
    if args.torch:
        import torch

        from . import recipe

        torch.set_num_threads(1)
        if args.role == "trainer":
            recipe.warm_up()
    X, y = _rows(args.data)
    print(f"agora_fl: {args.role} ready, {0 if y is None else len(y)} rows", flush=True)
    return serve(Session(args.role, X, y, args.bundle), read_fd, write_fd, args.max_payload)


if __name__ == "__main__":
    sys.exit(main())
