"""The warm federated trainer under real bubblewrap: one process for every round, and what it returns.

The provider's digits (sklearn's, pixels scaled to [0, 1]) are split here into training and
held-out rows; the federation's CNN (``examples/federation/digits-cnn``) is trained round after
round by one sandboxed trainer process, and the global model is scored on the held-out rows
by the second, evaluator process. The figures of the first call (which waited for torch's
import) and of the later rounds are printed.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation import tensors
from federation.recipes import DPSGD, ModelCode, Recipe
from federation.warm import WarmTrainer, initial_weights
from training_jobs.sandbox import BubblewrapSandbox, Limits

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "federation" / "digits-cnn"
CNN = ModelCode(factory="model:make_model", input_shape=(1, 8, 8), seed=0)
RECIPE = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, local_epochs=1, batch_size=16)
LIMITS = Limits(cpu_seconds=600, wall_seconds=600, memory_bytes=2 * 1024**3)
ROUNDS = 5


@dataclass
class Digits:
    train: Path
    holdout: Path
    initial: tensors.Weights
    holdout_y: np.ndarray


@pytest.fixture(scope="module")
def sandbox() -> BubblewrapSandbox:
    box = BubblewrapSandbox()
    box.check()
    return box


def make_digits(directory: Path, *, seed: int = 7) -> Digits:
    """The provider's rows, split 80/20 into training and held-out files in one directory
    (as a node might keep them), and the federation's initial weights."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X, y = (data.data / 16).astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    held, kept = np.sort(order[: len(y) // 5]), np.sort(order[len(y) // 5 :])
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "train.npz", X=X[kept], y=y[kept])
    np.savez(directory / "holdout.npz", X=X[held], y=y[held])
    return Digits(directory / "train.npz", directory / "holdout.npz", factory_weights(0), y[held])


def factory_weights(seed: int) -> tensors.Weights:
    """What the example's factory builds on ``seed``, built here in the test process."""
    import torch

    sys.path.insert(0, str(EXAMPLE))
    try:
        from model import make_model
    finally:
        sys.path.remove(str(EXAMPLE))
    torch.manual_seed(seed)
    return {name: t.detach().numpy().copy() for name, t in make_model().state_dict().items()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return make_digits(tmp_path_factory.mktemp("provider") / "data")


@dataclass
class Logs:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, role: str, line: str) -> None:
        self.lines.append((role, line))

    def of(self, role: str) -> list[str]:
        return [line for who, line in self.lines if who == role]


def trainer_for(
    sandbox: BubblewrapSandbox, digits: Digits, workdir: Path, logs: Logs, **kw: Any
) -> WarmTrainer:
    model = kw.pop("model", CNN)
    recipe = kw.pop("recipe", RECIPE)
    return WarmTrainer(
        sandbox, kw.pop("code_dir", EXAMPLE), digits.train, kw.pop("holdout", digits.holdout), model, recipe,
        tensors.layout(digits.initial), LIMITS, logs, workdir, **kw,
    )  # fmt: skip


@dataclass
class Rounds:
    first_call: float  # start → hello → first fit: includes the processes' start and torch's import
    fits: list[float]
    served: list[int]
    instance: str
    updates: list[tensors.Weights]
    counts: list[int]
    metrics: list[dict[str, float]]
    evaluations: list[dict[str, float]]
    logs: Logs


@pytest.fixture(scope="module")
def rounds(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rounds]:
    """Five rounds of one provider training alone: each fit starts from the last update."""
    logs = Logs()
    trainer = trainer_for(sandbox, digits, tmp_path_factory.mktemp("fl"), logs)
    started = time.monotonic()
    trainer.start()
    trainer.hello()
    instance = trainer.instance
    weights = digits.initial
    fits: list[float] = []
    result = Rounds(0.0, fits, [], instance or "", [], [], [], [], logs)
    try:
        for number in range(1, ROUNDS + 1):
            began = time.monotonic()
            weights, count, metrics = trainer.fit(weights, {"round": number}, timeout=120)
            fits.append(time.monotonic() - began)
            if number == 1:
                result.first_call = time.monotonic() - started
            result.served.append(trainer.served)
            result.updates.append(weights)
            result.counts.append(count)
            result.metrics.append(metrics)
            result.evaluations.append(trainer.evaluate(weights, timeout=60))
        assert trainer.instance == instance
        yield result
    finally:
        trainer.close()


def test_one_warm_process_serves_every_round_at_the_cost_of_training(rounds: Rounds) -> None:
    later = statistics.median(rounds.fits[1:])
    print(
        f"\nfirst call (start, torch import, hello, fit 1): {rounds.first_call:.3f} s; "
        f"fits: {', '.join(f'{s:.3f}' for s in rounds.fits)} s; median of rounds 2-{ROUNDS}: {later:.3f} s; "
        f"ratio {rounds.first_call / later:.1f}x"
    )
    # hello is call 1, then one call a round: the same process answered every one
    assert rounds.served == list(range(2, ROUNDS + 2))
    assert len(rounds.instance) == 16
    assert max(rounds.fits[1:]) < rounds.first_call


def test_accuracy_on_the_held_out_rows_improves_across_rounds(rounds: Rounds, digits: Digits) -> None:
    accuracy = [e["accuracy"] for e in rounds.evaluations]
    loss = [e["loss"] for e in rounds.evaluations]
    print(f"\nheld-out accuracy by round: {accuracy}; loss: {loss}")
    assert accuracy[-1] > accuracy[0]
    assert loss[-1] < loss[0]
    assert accuracy[-1] >= 0.9
    assert all(e["num_examples"] == len(digits.holdout_y) for e in rounds.evaluations)
    for update in rounds.updates:
        assert list(update) == list(digits.initial)
        tensors.check_update(update, tensors.layout(digits.initial), max_bytes=10**6)
    assert rounds.updates[0]["6.weight"].tolist() != digits.initial["6.weight"].tolist()


def test_the_node_reads_bounded_figures(rounds: Rounds, digits: Digits) -> None:
    rows = int(np.load(digits.train)["y"].shape[0])
    assert rounds.counts == [rows] * ROUNDS
    for metrics in rounds.metrics:
        assert list(metrics) == ["train_loss", "train_accuracy"]
        assert all(float(f"{v:.4g}") == v for v in metrics.values())
    for evaluation in rounds.evaluations:
        assert set(evaluation) == {"loss", "accuracy", "num_examples"}
        assert float(f"{evaluation['accuracy']:.4g}") == evaluation["accuracy"]
    assert rounds.metrics[-1]["train_loss"] < rounds.metrics[0]["train_loss"]
    assert any(line.startswith("agora_fl: trainer ready") for line in rounds.logs.of("trainer"))
    assert any(line.startswith("agora_fl: evaluator ready") for line in rounds.logs.of("evaluator"))


def test_a_flower_style_client_trains_in_the_warm_process(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path
) -> None:
    logs = Logs()
    model = ModelCode(factory="model:make_model", client="client:DigitsClient", input_shape=(1, 8, 8))
    with trainer_for(sandbox, digits, tmp_path, logs, model=model, recipe=None) as trainer:
        trainer.hello()
        before = trainer.evaluate(digits.initial, timeout=60)
        weights = digits.initial
        for number in (1, 2):
            weights, count, metrics = trainer.fit(weights, {"round": number, "lr": 0.05}, timeout=120)
            assert list(metrics) == ["train_loss"]
        after = trainer.evaluate(weights, timeout=60)
        own = trainer.evaluate_local(weights, {}, timeout=60)
        assert trainer.served == 4
    assert count == int(np.load(digits.train)["y"].shape[0])
    assert after["accuracy"] > before["accuracy"] + 0.3
    assert own["num_examples"] == count and own["accuracy"] is not None and own["accuracy"] > 0.8
    assert any(line.startswith("round 2: last batch loss") for line in logs.of("trainer"))


def test_dp_sgd_runs_in_the_recipe_and_changes_the_update(
    sandbox: BubblewrapSandbox, digits: Digits, rounds: Rounds, tmp_path: Path
) -> None:
    private = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, dp=DPSGD(1.1, 1.0))
    with trainer_for(sandbox, digits, tmp_path, Logs(), recipe=private) as trainer:
        trainer.hello()
        began = time.monotonic()
        noisy, count, _ = trainer.fit(digits.initial, {"round": 1}, timeout=180)
        seconds = time.monotonic() - began
        figures = trainer.evaluate(noisy, timeout=60)
    plain = rounds.updates[0]
    moved = {name: float(np.abs(noisy[name] - plain[name]).max()) for name in plain}
    print(f"\nDP-SGD fit (Opacus import included) {seconds:.2f} s; held-out accuracy {figures['accuracy']}; "
          f"largest difference from the plain update per tensor {moved}")  # fmt: skip
    assert all(difference > 1e-4 for difference in moved.values())
    assert 0.0 < figures["accuracy"] < 1.0
    assert count == plain_count(digits)


def plain_count(digits: Digits) -> int:
    return int(np.load(digits.train)["y"].shape[0])


def test_initial_weights_come_from_the_factory_on_the_seed(
    sandbox: BubblewrapSandbox, tmp_path: Path
) -> None:
    weights = initial_weights(sandbox, EXAMPLE, CNN, LIMITS, tmp_path, seed=3, on_log=Logs())
    expected = factory_weights(3)
    assert list(weights) == list(expected)
    assert all(np.array_equal(weights[name], expected[name]) for name in expected)
    assert sum(int(v.size) for v in weights.values()) == 9930
