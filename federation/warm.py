"""The provider's warm trainer for one federation: two long-lived sandboxed processes.

A round must cost what the training costs, not a process start and a torch import, so each
provider keeps, for the whole federation, two processes running ``python -m agora_fl``
(:mod:`federation.trainer`, copied into a mounted directory like the jobs' audit):

* the **trainer** holds the bundle (``/job``) and the training rows only
  (``/data/train.npz``): it runs the node's recipe on the bundle's model factory, or the
  bundle's Flower-style client;
* the **evaluator** holds the bundle's factory and the held-out rows only
  (``/holdout/holdout.npz``), never the training rows, and the training code never runs
  beside the held-out rows: the node's code there computes loss and accuracy from the
  model's outputs and returns those three numbers.

::

    trainer = WarmTrainer(sandbox, code_dir, train_path, holdout_path, model, recipe, layout,
                          limits, on_log, workdir)
    trainer.start()                                   # both processes start importing torch
    trainer.hello()                                   # the factory's tensors must be the federation's
    weights, num_examples, metrics = trainer.fit(global_weights, {"round": 1}, timeout=60)
    figures = trainer.evaluate(global_weights, timeout=30)   # {"loss", "accuracy", "num_examples"}
    trainer.close()

They talk over a channel apart from their log (:class:`~training_jobs.sandbox.Channel`), in
frames: a 4-byte big-endian header length, the UTF-8 JSON header, an 8-byte big-endian
payload length and the payload, safetensors bytes (never a pickle); the ops are listed in
:mod:`federation.trainer.__main__`. Everything a process returns is checked here before it
goes further: the caps and deadlines of :mod:`federation.warm_process`; weights decoded and
passed through :func:`federation.tensors.check_update` against the federation's layout;
at most 8 metrics, under names the federation declared, finite, rounded to 4 significant
digits; counts within the rows the node gave. The sandbox's limits hold for each process's
whole life, so the caller sets them for the whole federation.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import federation.trainer
from federation.recipes import DEFAULT_METRIC_NAMES, ModelCode, Recipe, check_config
from federation.replies import (
    UpdateRefused,
    checked_metrics,
    checked_weights,
    count_within,
    figure,
    reported_layout,
    same_layout,
)
from federation.tensors import Weights, check_update, encode, in_order
from federation.warm_process import Reply, TrainerFailed, WarmProcess
from kernel.errors import ConfigurationError, InvalidInput
from training_jobs.sandbox import Limits, Mount, Sandbox, SandboxRun
from training_jobs.sandbox.base import fmt_bytes

Layout = Mapping[str, tuple[list[int], str]]
PROGRAM = Path(federation.trainer.__file__).parent
MODULE = "agora_fl"
MAX_ADOPTED_BYTES = 2 * 1024**3  # a model whose layout the factory names (no weights file)
HELLO_SECONDS = 180.0  # the first answer waits for torch's import, on a loaded machine too

__all__ = ["Fit", "TrainerFailed", "UpdateRefused", "WarmTrainer", "initial_weights"]


class Fit(NamedTuple):
    weights: Weights
    num_examples: int
    metrics: dict[str, float]


class WarmTrainer:
    """The trainer and evaluator processes of one federation on this provider.

    ``code_dir`` is the extracted bundle; ``train_path`` and ``holdout_path`` the node's
    ``.npz`` files (copied into ``workdir``, so each process is shown only its own);
    ``layout`` the federation's tensors in order (``tensors.layout`` of the initial weights;
    ``None`` only for :func:`initial_weights`). ``on_log(role, line)`` receives each process's
    log: the evaluator's lines come from code run beside the held-out rows and stay with the
    provider; it is called from the processes' log threads. Without ``holdout_path`` (or a
    factory) there is no evaluator. ``close()`` must be called (or use it as a context manager):
    the processes live until then, or until their limits end them.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        code_dir: Path,
        train_path: Path | None,
        holdout_path: Path | None,
        model: ModelCode,
        recipe: Recipe | None,
        layout: Layout | None,
        limits: Limits,
        on_log: Callable[[str, str], None],
        workdir: Path,
        *,
        max_payload_bytes: int | None = None,
        metric_names: Sequence[str] = DEFAULT_METRIC_NAMES,
        evaluator_limits: Limits | None = None,
    ) -> None:
        if model.client is None and recipe is None:
            raise InvalidInput("a model factory is trained by the node's recipe, and none was given")
        self._sandbox = sandbox
        self.model, self.recipe = model, recipe
        self.layout: dict[str, tuple[list[int], str]] | None = dict(layout) if layout is not None else None
        self.metric_names = tuple(metric_names)
        self.workdir = workdir
        weights_bytes = _layout_bytes(self.layout) if self.layout else 0
        self.max_payload = max_payload_bytes or max(4 * weights_bytes, weights_bytes + 1024**2)
        self.train_rows = _rows(train_path)
        self.holdout_rows = _rows(holdout_path) if holdout_path is not None and model.factory else 0
        self.instance: str | None = None
        self.served = 0
        self._greeted = False
        program = self._prepare(workdir / "program", code_dir)
        mounts = [Mount(program, "/agora"), Mount(code_dir, "/job")]
        self._trainer = self._process(
            "trainer", train_path, "data", "/data/train.npz", mounts, limits, on_log
        )
        self._evaluator: WarmProcess | None = None
        if self.holdout_rows:
            assert holdout_path is not None
            evaluator = evaluator_limits or limits
            self._evaluator = self._process(
                "evaluator", holdout_path, "holdout", "/holdout/holdout.npz", mounts, evaluator, on_log
            )

    def _prepare(self, program: Path, code_dir: Path) -> Path:
        if not code_dir.is_dir():
            raise ConfigurationError(f"the bundle directory {code_dir} does not exist")
        shutil.rmtree(program, ignore_errors=True)
        shutil.copytree(PROGRAM, program / MODULE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return program

    def _process(
        self,
        role: str,
        rows: Path | None,
        folder: str,
        target: str,
        mounts: list[Mount],
        limits: Limits,
        on_log: Callable[[str, str], None],
    ) -> WarmProcess:
        command = ["python", "-P", "-m", MODULE, "--role", role, "--bundle", "/job"]
        command += ["--max-payload", str(self.max_payload)]
        own = list(mounts)
        if rows is not None:
            shown = self.workdir / folder
            shutil.rmtree(shown, ignore_errors=True)
            shown.mkdir(parents=True)
            shutil.copyfile(rows, shown / Path(target).name)
            own.append(Mount(shown, str(Path(target).parent)))
            command += ["--data", target]
        if self.model.factory or role == "evaluator":
            command.append("--torch")
        out = self.workdir / f"{role}-out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run = SandboxRun(
            command=command,
            mounts=own,
            output_dir=out,
            workdir="/tmp",
            env={"PYTHONPATH": "/agora"},
            limits=limits,
            name=f"agora-fl-{role}",
        )
        return WarmProcess(
            self._sandbox,
            run,
            role=role,
            on_log=lambda line: on_log(role, line),
            max_payload=self.max_payload,
        )

    # -- life -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start both processes (they load torch and their rows while the node goes on)."""
        self._trainer.start()
        if self._evaluator is not None:
            self._evaluator.start()

    @property
    def alive(self) -> bool:
        return self._trainer.alive and (self._evaluator is None or self._evaluator.alive)

    def close(self) -> None:
        """Stop both processes and remove what this trainer put in ``workdir``."""
        for process in (self._trainer, self._evaluator):
            if process is not None:
                process.close()
        for folder in ("program", "data", "holdout", "trainer-out", "evaluator-out"):
            shutil.rmtree(self.workdir / folder, ignore_errors=True)

    def __enter__(self) -> WarmTrainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------------------

    def hello(self, timeout: float = HELLO_SECONDS) -> dict[str, tuple[list[int], str]]:
        """Both processes answer, and the model the bundle builds has exactly the federation's
        tensors; the layout (adopted from the factory when none was given)."""
        names = list(self.layout) if self.layout is not None else None
        recipe = self.recipe.header() if self.recipe else None
        request = {"op": "hello", "names": names, "model": self.model.header(), "recipe": recipe}
        processes = [p for p in (self._trainer, self._evaluator) if p is not None]
        for process in processes:
            reply = process.call(request, timeout=timeout, what="hello")
            reported = reported_layout(reply.header.get("layout"), process.role)
            if self.layout is None:  # initial_weights: the coordinator's own factory names it
                if _layout_bytes(reported) > MAX_ADOPTED_BYTES:
                    raise UpdateRefused(f"the model the bundle builds is over {fmt_bytes(MAX_ADOPTED_BYTES)}")
                self.layout = reported
                self.max_payload = max(self.max_payload, 4 * _layout_bytes(reported))
            same_layout(reported, self.layout, process.role)
            if process is self._trainer:
                self.instance = str(reply.header.get("instance", ""))[:32]
                self._count(reply)
        assert self.layout is not None
        self._greeted = True
        return dict(self.layout)

    def init(self, seed: int, timeout: float = 60.0) -> Weights:
        """Initial weights from the bundle's factory on ``seed`` (a coordinator without a weights file)."""
        reply = self._trainer.call({"op": "init", "seed": int(seed)}, timeout=timeout, what="init")
        self._count(reply)
        return self._weights(reply, "the initial weights")

    def fit(self, global_weights: Mapping[str, np.ndarray], config: Mapping[str, Any], timeout: float) -> Fit:
        """One round of local training from ``global_weights``: the checked update."""
        settings = check_config(config, recipe=self.recipe)
        reply = self._trainer.call(
            {"op": "fit", "config": settings}, self._payload(global_weights), timeout=timeout, what="fit"
        )
        self._count(reply)
        weights = self._weights(reply, "the update")
        count = count_within(reply.header.get("num_examples"), self.train_rows, "fit")
        return Fit(weights, count, self._metrics(reply.header.get("metrics")))

    def evaluate(self, global_weights: Mapping[str, np.ndarray], timeout: float) -> dict[str, float]:
        """The global model on this provider's held-out rows: loss, accuracy, num_examples."""
        if self._evaluator is None:
            raise TrainerFailed(
                "this trainer has no held-out evaluator (no held-out rows or no model factory)"
            )
        reply = self._evaluator.call(
            {"op": "evaluate", "config": {}}, self._payload(global_weights), timeout=timeout, what="evaluate"
        )
        count = count_within(reply.header.get("num_examples"), self.holdout_rows, "evaluate")
        if count != self.holdout_rows:
            raise UpdateRefused("the evaluator did not score every held-out row")
        loss = figure(reply.header.get("loss"), "loss", low=0.0)
        accuracy = figure(reply.header.get("accuracy"), "accuracy", low=0.0, high=1.0)
        return {"loss": loss, "accuracy": accuracy, "num_examples": count}

    def evaluate_local(
        self, global_weights: Mapping[str, np.ndarray], config: Mapping[str, Any], timeout: float
    ) -> dict[str, Any]:
        """The trainer's own evaluation on the training rows (a client's ``evaluate``)."""
        request = {"op": "evaluate", "config": check_config(config, recipe=None)}
        reply = self._trainer.call(request, self._payload(global_weights), timeout=timeout, what="evaluate")
        self._count(reply)
        accuracy = reply.header.get("accuracy")
        return {
            "loss": figure(reply.header.get("loss"), "loss", low=0.0),
            "accuracy": None if accuracy is None else figure(accuracy, "accuracy", low=0.0, high=1.0),
            "num_examples": count_within(reply.header.get("num_examples"), self.train_rows, "evaluate"),
            "metrics": self._metrics(reply.header.get("metrics")),
        }

    # -- checks ---------------------------------------------------------------------------

    def _payload(self, weights: Mapping[str, np.ndarray]) -> bytes:
        """The global weights for a request, checked like an update (the node's own, but a
        wrong tensor here would be the coordinator's)."""
        if not self._greeted or self.layout is None:
            raise TrainerFailed("the trainer has not said hello yet")
        check_update(weights, self.layout, max_bytes=self.max_payload, what="the global weights")
        return encode(in_order(weights, list(self.layout)))

    def _count(self, reply: Reply) -> None:
        served = reply.header.get("served")
        if isinstance(served, int) and not isinstance(served, bool) and served > self.served:
            self.served = served

    def _weights(self, reply: Reply, what: str) -> Weights:
        assert self.layout is not None
        return checked_weights(reply.payload, self.layout, self.max_payload, what)

    def _metrics(self, raw: Any) -> dict[str, float]:
        return checked_metrics(raw, self.metric_names)


def initial_weights(
    sandbox: Sandbox,
    code_dir: Path,
    model: ModelCode,
    limits: Limits,
    workdir: Path,
    *,
    seed: int,
    on_log: Callable[[str, str], None],
    timeout: float = HELLO_SECONDS,
) -> Weights:
    """The bundle factory's initial weights on ``seed``, for a coordinator without a weights
    file: a trainer without rows, its layout taken from the factory."""
    trainer = WarmTrainer(sandbox, code_dir, None, None, model, Recipe(), None, limits, on_log, workdir)
    with trainer:
        trainer.hello(timeout)
        return trainer.init(seed, timeout)


def _rows(path: Path | None) -> int:
    if path is None:
        return 0
    with np.load(path, allow_pickle=False) as data:
        return len(data["y"])


def _layout_bytes(layout: Layout) -> int:
    """The size of the tensors (in Python integers: a reported shape cannot overflow it)."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in layout.values())
