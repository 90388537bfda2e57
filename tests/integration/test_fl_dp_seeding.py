"""DP-SGD noise the coordinator cannot draw again, under real bubblewrap.

The coordinator knows the federation's seed and the round number. A plain fit is seeded by
them and is reproducible; if a DP-SGD fit were too, the coordinator could run the same fit
on the same global weights without the provider's rows' contribution in mind, regenerate
the Poisson batch masks and the Gaussian noise, and subtract the noise from the update. So
two DP-SGD fits of one round from the same weights must differ, while two plain fits stay
bit-identical (the difference is the noise's doing, not some other nondeterminism).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.recipes import DPSGD, Recipe
from tests.integration.test_fl_trainer import RECIPE, Digits, Logs, make_digits, trainer_for
from training_jobs.sandbox import BubblewrapSandbox

PRIVATE = Recipe(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=16, dp=DPSGD(1.1, 1.0))


@pytest.fixture(scope="module")
def sandbox() -> BubblewrapSandbox:
    box = BubblewrapSandbox()
    box.check()
    return box


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return make_digits(tmp_path_factory.mktemp("provider") / "data")


def two_fits(
    sandbox: BubblewrapSandbox, digits: Digits, workdir: Path, recipe: Recipe
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The same round fitted twice from the same global weights by one warm process."""
    with trainer_for(sandbox, digits, workdir, Logs(), recipe=recipe) as trainer:
        trainer.hello()
        first, _, _ = trainer.fit(digits.initial, {"round": 3}, timeout=180)
        second, _, _ = trainer.fit(digits.initial, {"round": 3}, timeout=180)
    return first, second


def test_two_dp_sgd_fits_of_one_round_differ_where_plain_fits_are_equal(
    sandbox: BubblewrapSandbox, digits: Digits, tmp_path: Path
) -> None:
    plain = two_fits(sandbox, digits, tmp_path / "plain", RECIPE)
    private = two_fits(sandbox, digits, tmp_path / "dp", PRIVATE)

    assert list(plain[0]) == list(digits.initial)
    assert all(np.array_equal(plain[0][name], plain[1][name]) for name in digits.initial)
    apart = {name: float(np.abs(private[0][name] - private[1][name]).max()) for name in digits.initial}
    print(f"\nlargest difference between two DP-SGD fits of round 3, per tensor: {apart}")
    # every tensor moves apart: the masks and the noise of the two fits share nothing
    assert all(difference > 1e-4 for difference in apart.values())
    assert not any(np.array_equal(private[0][name], private[1][name]) for name in digits.initial)
