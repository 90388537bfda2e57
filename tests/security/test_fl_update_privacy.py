"""Federated updates, attacked from the model code's side: a hostile model writes training rows into
the weights it hands back, and the provider's node applies its privacy options before anything leaves.

The model code runs in the provider's sandbox, so whatever it returns is the input here; what
is under test is the node's own step after it (:func:`federation.privacy.clip_and_noise`, the
ledger and the policy's cap). Channels, one test each: floating-point weights holding rows
(written again every round, so that averaging the rounds beats the noise), integer tensors
holding rows, non-finite values. Two measures of what leaves: rows found whole in the encoded
update bytes (:class:`tests.security.rows.RowCounter`), and rows identified by the best decoder
written for this (average every update, take the digit nearest by cosine among all 1,797).
Targets: no whole row leaves a node that adds noise; identification stays near chance while
the policy's cap lets the provider contribute, and the test shows the same attack succeeding
once the cap is lifted. The figures are printed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.datasets import load_digits

from federation.privacy import (
    PrivacyLedger,
    PrivacyOptions,
    clip_and_noise,
    contribution_refusal,
    round_events,
)
from federation.tensors import UpdateRejected, Weights, decode, encode
from marketplace.policy import parse_policy, privacy_cap
from tests.security.rows import RowCounter

FIGURES: dict[str, str] = {}
ROWS = np.rint(load_digits().data).astype(np.int64)  # 1,797 rows of 64 integers 0-16
PIXELS = (ROWS / 16).astype(np.float32)  # as a trainer sees them
UNIT = PIXELS / np.linalg.norm(PIXELS, axis=1, keepdims=True)
GLOBAL: Weights = {
    "fc.weight": np.zeros((10, 64), np.float32),
    "fc.bias": np.zeros(10, np.float32),
    "counter": np.zeros(64, np.int64),
}
NODE_NOISE = PrivacyOptions(node_clip_norm=1.0, node_noise_multiplier=2.0)
CAP_30 = {
    "permissions": [
        {
            "action": "federate",
            "constraints": [{"leftOperand": "dpEpsilon", "operator": "lteq", "rightOperand": 30}],
        }
    ]
}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nwhat a hostile model got out through a provider's updates:")
    for channel, figure in FIGURES.items():
        print(f"  {channel:54} {figure}")


def hostile_weights(row: int) -> Weights:
    """What the hostile model hands back: one training row in every output row of the layer."""
    return {
        "fc.weight": np.tile(PIXELS[row], (10, 1)),
        "fc.bias": np.zeros(10, np.float32),
        "counter": ROWS[row].copy(),
    }


def identified(total: np.ndarray, row: int) -> bool:
    """The decoder: the digit nearest by cosine to the sum of every update's rows."""
    guess = int(np.argmax(UNIT @ total))
    return bool(np.array_equal(ROWS[guess], ROWS[row]))


def averaging_attack(
    trials: int, max_rounds: int, cap: tuple[float, float] | None, seed: int
) -> tuple[int, int, int]:
    """(rows identified, rows found whole in the bytes sent, rounds contributed per federation)."""
    rng = np.random.default_rng(seed)
    counter = RowCounter(ROWS)
    events = round_events(NODE_NOISE, n_train=1400, batch_size=16, local_epochs=1)
    hits = whole = rounds = 0
    for _ in range(trials):
        row = int(rng.integers(len(ROWS)))
        ledger, total = PrivacyLedger(), np.zeros(64)
        while len(ledger.rounds) < max_rounds:
            if cap is not None and contribution_refusal(ledger, events, NODE_NOISE, cap) is not None:
                break
            sent, _ = clip_and_noise(
                GLOBAL, hostile_weights(row), clip_norm=1.0, noise_multiplier=2.0, rng=rng
            )
            if len(ledger.rounds) < 3:  # the byte search is slow; the first rounds show it
                whole += len(counter.in_bytes(encode(sent)))
            total += sent["fc.weight"].astype(np.float64).sum(axis=0)
            ledger.add_round(events)
        hits += identified(total, row)
        rounds = len(ledger.rounds)
    return hits, whole, rounds


def test_without_node_noise_the_written_rows_leave_whole_and_the_records_say_so() -> None:
    """DP-SGD alone cannot stop model code that writes rows outside its gradient steps; the
    node's figures say that only the node-side mechanism would have held."""
    sent = hostile_weights(7)  # nothing of the node's changes the weights
    found = RowCounter(ROWS).in_bytes(encode(sent))
    assert 7 in found
    ledger = PrivacyLedger()
    ledger.add_round(
        round_events(PrivacyOptions(dp_sgd={"noise_multiplier": 1.0, "max_grad_norm": 1.0}), 1400, 16, 1)
    )
    figures = ledger.figures(1e-5)
    assert figures["epsilon"] is not None and figures["node_epsilon"] is None
    FIGURES["rows whole, DP-SGD only (no node noise)"] = f"{len(found)} row(s) of 1 written"


def test_the_policy_cap_stops_the_averaging_attack_before_it_identifies_rows() -> None:
    cap = privacy_cap(parse_policy(CAP_30))
    assert cap == (30.0, 1e-5)
    hits, whole, rounds = averaging_attack(trials=100, max_rounds=10_000, cap=cap, seed=11)
    FIGURES["rows identified, node noise z=2, cap ε ≤ 30"] = f"{hits} of 100 (after {rounds} rounds each)"
    FIGURES["rows whole in the sent bytes, node noise"] = f"{whole} in 300 updates searched"
    assert rounds == 19  # ε(19 rounds) = 29.10 ≤ 30 < ε(20 rounds) = 30.13
    assert whole == 0
    assert hits <= 5  # chance is 100/1797 ≈ 0.06; measured 1


def test_the_same_attack_succeeds_once_nothing_stops_it() -> None:
    """The decoder is a real one: without the cap, 500 rounds of the same noise identify most rows."""
    hits, whole, rounds = averaging_attack(trials=100, max_rounds=500, cap=None, seed=12)
    FIGURES["rows identified, node noise z=2, no cap (500 rounds)"] = f"{hits} of 100"
    assert rounds == 500 and whole == 0
    assert hits >= 50  # measured 73


def test_a_strict_cap_keeps_a_weakly_noised_provider_out_from_the_first_round() -> None:
    strict = {
        "permissions": [
            {
                "action": "federate",
                "constraints": [{"leftOperand": "dpEpsilon", "operator": "lteq", "rightOperand": 3}],
            }
        ]
    }
    cap = privacy_cap(parse_policy(strict))
    assert cap is not None
    refusal = contribution_refusal(PrivacyLedger(), round_events(NODE_NOISE, 1400, 16, 1), NODE_NOISE, cap)
    assert refusal is not None and refusal.startswith(
        "the next round would spend ε=4.73 > the policy's cap 3"
    )
    FIGURES["rounds contributed, node noise z=2, cap ε ≤ 3"] = "0 (refused before the first)"


def test_integer_tensors_carry_nothing_out() -> None:
    counter = RowCounter(ROWS)
    written = decode(encode(hostile_weights(7)))["counter"]
    assert counter.in_numbers(written) == {7}  # the channel is real: a row travels whole in a counter
    sent, _ = clip_and_noise(GLOBAL, hostile_weights(7), clip_norm=1.0, noise_multiplier=2.0)
    assert np.array_equal(sent["counter"], GLOBAL["counter"])
    assert counter.in_numbers(decode(encode(sent))["counter"]) == set()
    FIGURES["rows whole in integer tensors, node noise"] = "0 of 1 written"


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_before_anything_leaves(value: float) -> None:
    weights = hostile_weights(3)
    weights["fc.weight"][0, 0] = value
    with pytest.raises(UpdateRejected, match="non-finite"):
        clip_and_noise(GLOBAL, weights, clip_norm=1.0, noise_multiplier=2.0)
