"""The aggregation strategies: one suite against every strategy (and clipping around two of
them), each checked against a reference written here with plain Python loops and sorted
lists, the server optimizers over three rounds with a restart in the middle, and what one
attacker among six clients does to each."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.strategies import (
    PARAMETERS,
    SECAGG_COMPATIBLE,
    STRATEGIES,
    AggregationFailed,
    Failure,
    FitResult,
    Strategy,
    clip_update,
    make_strategy,
    strategy_schema,
    update_norm,
)
from federation.tensors import Weights, decode, encode
from kernel.errors import InvalidInput

# a small model with every kind of tensor a state dict holds -----------------------------------

LAYOUT: dict[str, tuple[tuple[int, ...], str]] = {
    "features.0.weight": ((3, 2, 2), "float32"),
    "features.0.bias": ((3,), "float64"),
    "classifier.weight": ((2, 4), "float16"),
    "bn.num_batches_tracked": ((), "int64"),
}
TOLERANCE = {"float16": 2e-3, "float32": 2e-6, "float64": 1e-12}
N_CLIENTS = 6


def weights_at(rng: np.random.Generator, center: float = 0.0, spread: float = 1.0) -> Weights:
    out: Weights = {}
    for name, (shape, dtype) in LAYOUT.items():
        if dtype.startswith("int"):
            out[name] = np.asarray(rng.integers(100, 200, size=shape), dtype=dtype)
        else:
            out[name] = np.asarray(center + spread * rng.standard_normal(shape), dtype=dtype)
    return out


def results_from(rng: np.random.Generator, n: int = N_CLIENTS) -> list[FitResult]:
    return [
        FitResult(f"0xclient{i:02d}", weights_at(rng, 0.5, 1.0), int(rng.integers(10, 500)), {"loss": 0.1})
        for i in range(n)
    ]


# what the suite runs against -----------------------------------------------------------------

CASES: dict[str, Callable[[], Strategy]] = {
    "fedavg": lambda: make_strategy("fedavg"),
    "fedprox": lambda: make_strategy("fedprox", {"proximal_mu": 0.01}),
    "fedadagrad": lambda: make_strategy("fedadagrad"),
    "fedadam": lambda: make_strategy("fedadam"),
    "fedyogi": lambda: make_strategy("fedyogi"),
    "fedmedian": lambda: make_strategy("fedmedian"),
    "fedtrimmedavg": lambda: make_strategy("fedtrimmedavg", {"beta": 0.2}),
    "krum": lambda: make_strategy("krum", {"num_malicious": 1}),
    "multikrum": lambda: make_strategy("multikrum", {"num_malicious": 1, "num_selected": 3}),
    "clipped-fedavg": lambda: make_strategy("fedavg", {"max_update_norm": 2.0}),
    "clipped-krum": lambda: make_strategy("krum", {"num_malicious": 1, "max_update_norm": 2.0}),
}
FEDOPT = ("fedadagrad", "fedadam", "fedyogi")
each_case = pytest.mark.parametrize("case", list(CASES))


# the references: plain Python over flattened lists, sharing nothing with the module ----------


def flat(value: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(value).ravel()]


def ref_mean(results: Sequence[FitResult], name: str) -> list[float]:
    total = sum(r.num_examples for r in results)
    columns = [flat(r.weights[name]) for r in results]
    return [
        sum(r.num_examples * col[k] for r, col in zip(results, columns, strict=True)) / total
        for k in range(len(columns[0]))
    ]


def ref_median(results: Sequence[FitResult], name: str) -> list[float]:
    columns = [flat(r.weights[name]) for r in results]
    out = []
    for k in range(len(columns[0])):
        values = sorted(col[k] for col in columns)
        n = len(values)
        out.append(values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2)
    return out


def ref_trimmed(results: Sequence[FitResult], name: str, beta: float) -> list[float]:
    columns = [flat(r.weights[name]) for r in results]
    n = len(columns)
    cut = math.floor(beta * n)
    out = []
    for k in range(len(columns[0])):
        kept = sorted(col[k] for col in columns)[cut : n - cut]
        out.append(sum(kept) / len(kept))
    return out


def ref_krum_scores(results: Sequence[FitResult], f: int) -> dict[str, float]:
    """Each participant's sum of squared distances to its n - f - 2 nearest others."""
    # integer counters are no coordinates of the model (see the module): left out, as there
    floats = [name for name, (_, dtype) in LAYOUT.items() if dtype.startswith("float")]
    vectors = {r.participant: [x for name in floats for x in flat(r.weights[name])] for r in results}

    def squared(a: str, b: str) -> float:
        return sum((x - y) ** 2 for x, y in zip(vectors[a], vectors[b], strict=True))

    n = len(results)
    scores = {
        r.participant: sum(
            sorted(squared(r.participant, o.participant) for o in results if o is not r)[: n - f - 2]
        )
        for r in results
    }
    return scores


def ref_krum_order(results: Sequence[FitResult], f: int) -> list[FitResult]:
    """The results from best to worst Krum score (ties by participant)."""
    scores = ref_krum_scores(results, f)
    return sorted(results, key=lambda r: (scores[r.participant], r.participant))


def ref_clip(global_weights: Weights, weights: Weights, max_norm: float) -> dict[str, list[float]]:
    """The update over the float tensors scaled to ``max_norm``; integer counters untouched."""
    floats = [name for name, (_, dtype) in LAYOUT.items() if dtype.startswith("float")]
    norm = math.sqrt(
        sum(
            (w - g) ** 2
            for name in floats
            for w, g in zip(flat(weights[name]), flat(global_weights[name]), strict=True)
        )
    )
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {
        name: [
            g + (w - g) * scale if name in floats else w
            for w, g in zip(flat(weights[name]), flat(global_weights[name]), strict=True)
        ]
        for name in LAYOUT
    }


def cast(values: list[float], like: np.ndarray) -> np.ndarray:
    if like.dtype.kind in "iu":
        return np.asarray([round(x) for x in values], dtype=like.dtype).reshape(like.shape)
    return np.asarray(values, dtype=np.float64).astype(like.dtype).reshape(like.shape)


def as_results(
    global_weights: Weights, results: Sequence[FitResult], tensors: list[dict[str, list[float]]]
) -> list[FitResult]:
    return [
        FitResult(r.participant, {n: cast(t[n], global_weights[n]) for n in LAYOUT}, r.num_examples)
        for r, t in zip(results, tensors, strict=True)
    ]


def reference(case: str, global_weights: Weights, results: list[FitResult]) -> Weights:
    """What ``case`` must return for one (first) round, computed without the module."""
    if case.startswith("clipped-"):
        clipped = [ref_clip(global_weights, r.weights, 2.0) for r in results]
        return reference(
            case.removeprefix("clipped-"), global_weights, as_results(global_weights, results, clipped)
        )
    if case in ("fedavg", "fedprox"):
        return {n: cast(ref_mean(results, n), g) for n, g in global_weights.items()}
    if case in FEDOPT:
        return FedOptReference(case).step(1, global_weights, results)
    if case == "fedmedian":
        return {n: cast(ref_median(results, n), g) for n, g in global_weights.items()}
    if case == "fedtrimmedavg":
        return {n: cast(ref_trimmed(results, n, 0.2), g) for n, g in global_weights.items()}
    if case == "krum":
        best = ref_krum_order(results, 1)[0]
        return {n: best.weights[n] for n in LAYOUT}
    if case == "multikrum":
        chosen = ref_krum_order(results, 1)[:3]
        return {n: cast(ref_mean(chosen, n), g) for n, g in global_weights.items()}
    raise AssertionError(case)


class FedOptReference:
    """Reddi et al.'s server optimizers, as Flower parameterises them, one coordinate at a time."""

    DEFAULTS = {
        "fedadagrad": {"eta": 0.1, "beta_1": 0.0, "beta_2": 0.0, "tau": 1e-9},
        "fedadam": {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9},
        "fedyogi": {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    }

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.p = self.DEFAULTS[kind]
        self.m: dict[str, list[float]] = {}
        self.v: dict[str, list[float]] = {}

    def step(self, round_number: int, global_weights: Weights, results: list[FitResult]) -> Weights:
        p = self.p
        eta = p["eta"]
        if self.kind == "fedadam":
            eta = (
                p["eta"]
                * math.sqrt(1 - p["beta_2"] ** (round_number + 1))
                / (1 - p["beta_1"] ** (round_number + 1))
            )
        out: Weights = {}
        for name, g in global_weights.items():
            mean = ref_mean(results, name)
            if g.dtype.kind != "f":
                out[name] = cast(mean, g)
                continue
            current = flat(g)
            m = self.m.get(name, [0.0] * len(current))
            v = self.v.get(name, [0.0] * len(current))
            new = []
            for k, x in enumerate(current):
                delta = mean[k] - x
                m[k] = p["beta_1"] * m[k] + (1 - p["beta_1"]) * delta
                if self.kind == "fedadagrad":
                    v[k] = v[k] + delta * delta
                elif self.kind == "fedadam":
                    v[k] = p["beta_2"] * v[k] + (1 - p["beta_2"]) * delta * delta
                else:
                    sign = (v[k] > delta * delta) - (v[k] < delta * delta)
                    v[k] = v[k] - (1 - p["beta_2"]) * delta * delta * sign
                new.append(x + eta * m[k] / (math.sqrt(v[k]) + p["tau"]))
            self.m[name], self.v[name] = list(m), list(v)
            out[name] = cast(new, g)
        return out


def assert_weights_close(actual: Weights, expected: Weights) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        if want.dtype.kind in "iu":  # a mean that lands on .5 may round either way by float noise
            assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0) <= 1, name
        else:
            tol = TOLERANCE[str(want.dtype)]
            np.testing.assert_allclose(
                got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol, err_msg=name
            )


# the shared suite -----------------------------------------------------------------------------


@each_case
def test_matches_the_reference(case: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        global_weights = weights_at(rng)
        results = results_from(rng)
        strategy = CASES[case]()
        assert_weights_close(
            strategy.aggregate_fit(1, global_weights, results), reference(case, global_weights, results)
        )
        if case in ("krum", "multikrum"):  # the scores themselves, not only the pick they led to
            expected = ref_krum_scores(results, 1)
            assert strategy.report["scores"] == pytest.approx(expected, rel=1e-9)
            assert (
                strategy.report["selected"]
                == [r.participant for r in ref_krum_order(results, 1)][: 1 if case == "krum" else 3]
            )


@each_case
def test_every_tensor_keeps_its_name_order_dtype_and_shape(case: str) -> None:
    rng = np.random.default_rng(1)
    global_weights = weights_at(rng)
    out = CASES[case]().aggregate_fit(1, global_weights, results_from(rng))
    assert list(out) == list(LAYOUT)
    for name, (shape, dtype) in LAYOUT.items():
        assert out[name].shape == shape and str(out[name].dtype) == dtype
    assert encode(out) and decode(encode(out)).keys() == out.keys()  # still a valid safetensors file


@each_case
def test_clients_that_all_return_the_global_model_leave_it_unchanged(case: str) -> None:
    global_weights = weights_at(np.random.default_rng(2))
    results = [
        FitResult(f"0xc{i}", {n: v.copy() for n, v in global_weights.items()}, 10 * (i + 1))
        for i in range(N_CLIENTS)
    ]
    out = CASES[case]().aggregate_fit(1, global_weights, results)
    for name in LAYOUT:
        assert np.array_equal(out[name], global_weights[name]), name


@each_case
def test_clients_that_all_return_the_same_weights(case: str) -> None:
    """Averages and robust rules return those weights; a clipped one its clipped form; a server
    optimizer takes its first step towards them (sign of the difference, size as the formula)."""
    rng = np.random.default_rng(3)
    global_weights = weights_at(rng)
    same = {n: np.asarray(v + 1, dtype=v.dtype) for n, v in global_weights.items()}  # every coordinate +1
    results = [FitResult(f"0xc{i}", {n: v.copy() for n, v in same.items()}, 7 + i) for i in range(N_CLIENTS)]
    out = CASES[case]().aggregate_fit(1, global_weights, results)
    if case in FEDOPT:
        # m = (1 - b1) * 1, v as each rule gives for delta = 1; step = eta_t * m / (sqrt(v) + tau)
        expected_step = {
            "fedadagrad": 0.1 * 1 / (1 + 1e-9),
            "fedadam": 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2) * 0.1 / (0.1 + 1e-9),
            "fedyogi": 0.01 * 0.1 / (0.1 + 1e-3),
        }[case]
        for name, g in global_weights.items():
            if g.dtype.kind == "f":
                moved = out[name].astype(np.float64) - g.astype(np.float64)
                np.testing.assert_allclose(
                    moved,
                    expected_step,
                    rtol=TOLERANCE[str(g.dtype)] * 50,
                    atol=1e-3 if g.dtype == np.float16 else 1e-7,
                )
            else:
                assert np.array_equal(out[name], same[name])  # counters take the mean
    elif case.startswith("clipped-"):
        want = {n: cast(v, global_weights[n]) for n, v in ref_clip(global_weights, same, 2.0).items()}
        assert_weights_close(out, want)
    else:
        for name in LAYOUT:
            assert np.array_equal(out[name], same[name]), name


@each_case
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), order=st.permutations(list(range(N_CLIENTS))))
def test_the_order_of_results_changes_nothing(case: str, seed: int, order: list[int]) -> None:
    rng = np.random.default_rng(seed)
    global_weights = weights_at(rng)
    results = results_from(rng)
    first, second = CASES[case](), CASES[case]()
    a = first.aggregate_fit(1, global_weights, results)
    b = second.aggregate_fit(1, global_weights, [results[i] for i in order])
    for name in LAYOUT:
        assert np.array_equal(a[name], b[name]), name
    assert first.report == second.report


@each_case
def test_no_results_is_refused(case: str) -> None:
    strategy = CASES[case]()
    with pytest.raises(AggregationFailed, match="no client returned an update"):
        strategy.aggregate_fit(
            1, weights_at(np.random.default_rng(4)), [], [Failure("0xa", "deadline passed")]
        )
    assert strategy.state() == {}


@each_case
def test_failures_are_reported_and_change_nothing(case: str) -> None:
    rng = np.random.default_rng(5)
    global_weights = weights_at(rng)
    results = results_from(rng)
    failures = [
        Failure("0xlate", "the update came after the round's deadline"),
        Failure("0xbad", "update rejected"),
    ]
    plain, with_failures = CASES[case](), CASES[case]()
    a = plain.aggregate_fit(1, global_weights, results)
    b = with_failures.aggregate_fit(1, global_weights, results, failures)
    for name in LAYOUT:
        assert np.array_equal(a[name], b[name])
    assert with_failures.report["failures"] == [
        {"participant": f.participant, "reason": f.reason} for f in failures
    ]
    assert with_failures.report["aggregated"] == sorted(r.participant for r in results)


@each_case
def test_configure_fit_and_describe(case: str) -> None:
    strategy = CASES[case]()
    config = strategy.configure_fit(1, weights_at(np.random.default_rng(6)))
    assert config == ({"proximal_mu": 0.01} if case == "fedprox" else {})
    described = strategy.describe()
    rebuilt = make_strategy(described["name"], described["params"])
    assert rebuilt.describe() == described and type(rebuilt) is type(strategy)
    jsonschema.validate(described, strategy_schema())


@each_case
def test_secure_aggregation_gives_what_the_individual_updates_give(case: str) -> None:
    rng = np.random.default_rng(8)
    global_weights = weights_at(rng)
    results = results_from(rng)
    strategy = CASES[case]()
    name = case.removeprefix("clipped-")
    assert strategy.supports_secagg is (name in SECAGG_COMPATIBLE and not case.startswith("clipped-"))
    total = sum(r.num_examples for r in results)
    mean = {
        n: np.asarray(ref_mean(results, n), dtype=np.float64).reshape(g.shape)
        for n, g in global_weights.items()
    }
    if not strategy.supports_secagg:
        with pytest.raises(AggregationFailed, match="needs each client's own update"):
            strategy.aggregate_mean(1, global_weights, mean, total)
        return
    individual = CASES[case]()
    for round_number in (1, 2):
        via_mean = strategy.aggregate_mean(round_number, global_weights, mean, total)
        via_results = individual.aggregate_fit(round_number, global_weights, results)
        assert_weights_close(via_mean, via_results)
        global_weights = via_results
    for slot, tensors in individual.state().items():
        for tensor, value in tensors.items():
            np.testing.assert_allclose(strategy.state()[slot][tensor], value, rtol=1e-9)


def test_the_registry() -> None:
    assert set(STRATEGIES) == {
        "fedavg",
        "fedprox",
        "fedadagrad",
        "fedadam",
        "fedyogi",
        "fedmedian",
        "fedtrimmedavg",
        "krum",
        "multikrum",
    }
    assert {"fedavg", "fedprox", "fedadagrad", "fedadam", "fedyogi"} == SECAGG_COMPATIBLE
    for name, params in PARAMETERS.items():
        assert params[-1].name == "max_update_norm", name
        for param in params:
            assert param.description and param.kind in ("number", "integer")
            if param.default is not None:  # every default is within its own bounds
                assert param.check(param.default, name) == param.default


# server optimizers over three rounds, restarted in the middle ---------------------------------


@pytest.mark.parametrize("kind", FEDOPT)
def test_server_optimizers_over_three_rounds_resume_exactly_after_a_restart(kind: str) -> None:
    rng = np.random.default_rng(11)
    start = weights_at(rng)
    rounds = [results_from(rng) for _ in range(3)]

    ref, ref_global = FedOptReference(kind), start
    uninterrupted, global_a = make_strategy(kind), start
    outputs_a = []
    for number, results in enumerate(rounds, start=1):
        ref_global = ref.step(number, ref_global, results)
        global_a = uninterrupted.aggregate_fit(number, global_a, results)
        assert_weights_close(global_a, ref_global)
        outputs_a.append(global_a)

    before_restart = make_strategy(kind)
    global_b = before_restart.aggregate_fit(1, start, rounds[0])
    persisted = {slot: encode(tensors) for slot, tensors in before_restart.state().items()}
    assert sorted(persisted) == ["m_t", "v_t"]
    after_restart = make_strategy(kind)
    after_restart.load_state({slot: decode(data) for slot, data in persisted.items()})
    for number in (2, 3):
        global_b = after_restart.aggregate_fit(number, global_b, rounds[number - 1])
        for name in LAYOUT:
            assert np.array_equal(global_b[name], outputs_a[number - 1][name]), (number, name)
    for slot, tensors in uninterrupted.state().items():
        for name, value in tensors.items():
            assert np.array_equal(after_restart.state()[slot][name], value)
            assert value.dtype == np.float64 and value.shape == LAYOUT[name][0]
    assert "bn.num_batches_tracked" not in uninterrupted.state()["m_t"]  # counters have no moments


def test_a_refused_round_leaves_the_optimizer_state_as_it_was() -> None:
    rng = np.random.default_rng(12)
    strategy = make_strategy("fedadagrad", {"eta": 1e6})  # a step that float16 cannot hold
    global_weights = weights_at(rng)
    strategy.load_state(
        {
            "m_t": {
                "features.0.weight": np.ones((3, 2, 2)),
                "features.0.bias": np.ones(3),
                "classifier.weight": np.ones((2, 4)),
            },
            "v_t": {
                "features.0.weight": np.ones((3, 2, 2)),
                "features.0.bias": np.ones(3),
                "classifier.weight": np.ones((2, 4)),
            },
        }
    )
    before = {slot: {n: v.copy() for n, v in t.items()} for slot, t in strategy.state().items()}
    with pytest.raises(AggregationFailed, match=r"classifier\.weight does not fit in float16"):
        strategy.aggregate_fit(2, global_weights, results_from(rng))
    after = strategy.state()
    assert all(np.array_equal(after[s][n], before[s][n]) for s in before for n in before[s])


def test_load_state_refuses_what_is_not_this_optimizers_state() -> None:
    strategy = make_strategy("fedadam")
    ok = {"features.0.bias": np.zeros(3)}
    with pytest.raises(InvalidInput, match="must hold exactly m_t, v_t"):
        strategy.load_state({"m_t": ok})
    with pytest.raises(InvalidInput, match="different tensors"):
        strategy.load_state({"m_t": ok, "v_t": {"other": np.zeros(3)}})
    with pytest.raises(InvalidInput, match="negative"):
        strategy.load_state({"m_t": ok, "v_t": {"features.0.bias": -np.ones(3)}})
    with pytest.raises(InvalidInput, match="not finite"):
        strategy.load_state({"m_t": {"features.0.bias": np.full(3, np.nan)}, "v_t": ok})
    with pytest.raises(InvalidInput, match="keeps no state"):
        make_strategy("krum").load_state({"m_t": ok})
    strategy.load_state({"m_t": ok, "v_t": ok})  # moments for another model: refused when used
    with pytest.raises(AggregationFailed, match="other tensors than the model's"):
        strategy.aggregate_fit(
            2, weights_at(np.random.default_rng(0)), results_from(np.random.default_rng(1))
        )


# robustness: five honest clients and one attacker ---------------------------------------------


def honest_and_attacker(attack: str) -> tuple[Weights, list[FitResult], Weights, float]:
    rng = np.random.default_rng(21)
    global_weights = {
        name: np.asarray(rng.standard_normal((20, 10)), dtype=np.float32) for name in ("a", "b")
    }
    target_update = {name: rng.standard_normal((20, 10)) for name in global_weights}
    honest = [
        FitResult(
            f"0xhonest{i}",
            {
                n: (g + target_update[n] + 0.05 * rng.standard_normal(g.shape)).astype(np.float32)
                for n, g in global_weights.items()
            },
            100,
        )
        for i in range(5)
    ]
    factor = 10.0 if attack == "scaled" else -1.0
    attacker = FitResult(
        "0xattacker",
        {n: (g + factor * target_update[n]).astype(np.float32) for n, g in global_weights.items()},
        100,
    )
    honest_mean = {
        n: np.mean([r.weights[n].astype(np.float64) for r in honest], axis=0) for n in global_weights
    }
    scale = math.sqrt(sum(float((target_update[n] ** 2).sum()) for n in global_weights))
    return global_weights, [*honest, attacker], honest_mean, scale


def distance(a: Weights, b: Weights) -> float:
    return math.sqrt(sum(float(((a[n].astype(np.float64) - b[n]) ** 2).sum()) for n in b))


@pytest.mark.parametrize("attack", ["scaled", "sign-flipped"])
def test_robust_strategies_stay_near_the_honest_mean_and_fedavg_does_not(attack: str) -> None:
    global_weights, results, honest_mean, scale = honest_and_attacker(attack)
    robust = {
        "fedmedian": make_strategy("fedmedian"),
        "fedtrimmedavg": make_strategy("fedtrimmedavg"),
        "krum": make_strategy("krum", {"num_malicious": 1}),
        "multikrum": make_strategy("multikrum", {"num_malicious": 1}),
    }
    errors = {
        name: distance(s.aggregate_fit(1, global_weights, results), honest_mean) / scale
        for name, s in robust.items()
    }
    fedavg_error = (
        distance(make_strategy("fedavg").aggregate_fit(1, global_weights, results), honest_mean) / scale
    )
    # relative to the honest update's norm: FedAvg is pulled 1.5x (scaled) or 1/3 (flipped) of it away
    assert all(error < 0.05 for error in errors.values()), errors
    assert fedavg_error > (1.4 if attack == "scaled" else 0.3), fedavg_error
    assert robust["krum"].report["selected"][0].startswith("0xhonest")
    assert "0xattacker" not in robust["multikrum"].report["selected"]
    assert len(robust["multikrum"].report["selected"]) == 5  # n - f by default
    if attack == "scaled":  # clipping bounds a scaled update's pull, even for plain FedAvg
        clipped = make_strategy("fedavg", {"max_update_norm": 1.05 * scale})
        clipped_error = distance(clipped.aggregate_fit(1, global_weights, results), honest_mean) / scale
        assert clipped_error < 0.05 < fedavg_error, clipped_error
        assert list(clipped.report["clipped"]) == ["0xattacker"]


def test_krum_refuses_too_few_clients_for_its_guarantee() -> None:
    rng = np.random.default_rng(22)
    global_weights = weights_at(rng)
    with pytest.raises(AggregationFailed, match=r"more than 4 updates \(n > 2f \+ 2\), but this round has 4"):
        make_strategy("krum", {"num_malicious": 1}).aggregate_fit(1, global_weights, results_from(rng, 4))
    make_strategy("krum", {"num_malicious": 1}).aggregate_fit(1, global_weights, results_from(rng, 5))
    with pytest.raises(AggregationFailed, match="selects 5 updates, but with num_malicious=1 only 4"):
        make_strategy("multikrum", {"num_malicious": 1, "num_selected": 5}).aggregate_fit(
            1, global_weights, results_from(rng, 5)
        )


def test_trimmed_mean_cuts_floor_of_beta_times_n_at_each_end() -> None:
    global_weights = {"w": np.zeros(1, dtype=np.float64)}
    values = [1.0, 2.0, 3.0, 4.0, 100.0, -100.0, 5.0]  # n = 7, beta 0.3: cut 2 at each end
    results = [FitResult(f"0x{i}", {"w": np.array([v])}, 1) for i, v in enumerate(values)]
    strategy = make_strategy("fedtrimmedavg", {"beta": 0.3})
    assert strategy.aggregate_fit(1, global_weights, results)["w"][0] == pytest.approx((2 + 3 + 4) / 3)
    assert strategy.report["trimmed_per_end"] == 2


# what the coordinator must never aggregate ----------------------------------------------------


def _with(result: FitResult, **change: Any) -> FitResult:
    fields = {
        "participant": result.participant,
        "weights": result.weights,
        "num_examples": result.num_examples,
        **change,
    }
    return FitResult(**fields)


def _hostile() -> dict[str, tuple[Callable[[list[FitResult]], list[FitResult]], str]]:
    def tensor(name: str, value: np.ndarray) -> Callable[[list[FitResult]], list[FitResult]]:
        return lambda rs: [_with(rs[0], weights={**rs[0].weights, name: value}), *rs[1:]]

    return {
        "duplicate": (lambda rs: [*rs, rs[0]], "returned more than one update"),
        "no participant": (lambda rs: [_with(rs[0], participant=""), *rs[1:]], "names no participant"),
        "zero examples": (lambda rs: [_with(rs[0], num_examples=0), *rs[1:]], "reported 0 examples"),
        "negative examples": (lambda rs: [_with(rs[0], num_examples=-5), *rs[1:]], "reported -5 examples"),
        "bool examples": (lambda rs: [_with(rs[0], num_examples=True), *rs[1:]], "reported True examples"),
        "huge examples": (
            lambda rs: [_with(rs[0], num_examples=2**60), *rs[1:]],
            "must be an integer from 1",
        ),
        "wrong shape": (tensor("features.0.bias", np.zeros(4)), "has shape \\[4\\], expected \\[3\\]"),
        "wrong dtype": (
            tensor("features.0.bias", np.zeros(3, dtype=np.float32)),
            "dtype float32, expected float64",
        ),
        "nan": (tensor("features.0.bias", np.array([0.0, np.nan, 1.0])), "not finite"),
        "inf": (tensor("features.0.weight", np.full((3, 2, 2), np.inf, dtype=np.float32)), "not finite"),
        "extra tensor": (tensor("secret", np.zeros(1)), "has extra secret"),
        "missing tensor": (
            lambda rs: [
                _with(rs[0], weights={k: v for k, v in rs[0].weights.items() if k != "features.0.bias"}),
                *rs[1:],
            ],
            "lacks features.0.bias",
        ),
        "not an array": (tensor("features.0.bias", [0.0, 1.0, 2.0]), "is a list, not an array"),  # type: ignore[arg-type]
    }


@each_case
@pytest.mark.parametrize("hostile", list(_hostile()))
def test_bad_results_are_refused_with_the_reason(case: str, hostile: str) -> None:
    rng = np.random.default_rng(31)
    global_weights = weights_at(rng)
    strategy = CASES[case]()
    strategy.aggregate_fit(1, global_weights, results_from(rng))  # a good round first: state to keep
    state_before = {s: {n: v.copy() for n, v in t.items()} for s, t in strategy.state().items()}
    report_before = dict(strategy.report)
    change, reason = _hostile()[hostile]
    with pytest.raises(AggregationFailed, match=reason):
        strategy.aggregate_fit(2, global_weights, change(results_from(rng)))
    state_after = strategy.state()
    assert all(
        np.array_equal(state_after[s][n], state_before[s][n]) for s in state_before for n in state_before[s]
    )
    assert strategy.report == report_before


# parameters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "path", "words"),
    [
        ("fedsgd", {}, "name", "unknown strategy 'fedsgd'"),
        ("fedadam", {"lr": 0.1}, "params.lr", "fedadam has no parameter 'lr'"),
        ("fedadam", {"eta": 0}, "params.eta", "eta must be greater than 0"),
        ("fedadam", {"eta": float("nan")}, "params.eta", "must be a finite number"),
        ("fedadam", {"beta_1": 1.0}, "params.beta_1", "must be less than 1"),
        ("fedadam", {"tau": "small"}, "params.tau", "must be a number"),
        ("fedyogi", {"beta_2": True}, "params.beta_2", "must be a number"),
        ("fedprox", {}, "params.proximal_mu", "proximal_mu is required"),
        ("fedprox", {"proximal_mu": -0.1}, "params.proximal_mu", "must be at least 0"),
        ("fedtrimmedavg", {"beta": 0.5}, "params.beta", "must be less than 0.5"),
        ("krum", {"num_malicious": 1.5}, "params.num_malicious", "must be an integer"),
        ("krum", {"num_malicious": -1}, "params.num_malicious", "must be at least 0"),
        ("multikrum", {"num_selected": 0}, "params.num_selected", "must be at least 1"),
        ("fedavg", {"max_update_norm": 0}, "params.max_update_norm", "must be greater than 0"),
        ("fedavg", {"max_update_norm": float("inf")}, "params.max_update_norm", "must be a finite number"),
    ],
)
def test_make_strategy_names_the_bad_parameter(
    name: str, params: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(InvalidInput, match=words) as caught:
        make_strategy(name, params)
    assert path in [e.path for e in caught.value.errors]
    assert f"strategy.{path}" in [e.path for e in caught.value.under("strategy").errors]  # as a spec shows it


def test_every_bad_parameter_is_named_at_once_and_the_schema_agrees() -> None:
    with pytest.raises(InvalidInput) as caught:
        make_strategy("fedadam", {"eta": -1, "beta_2": 2, "momentum": 0.9})
    assert sorted(e.path for e in caught.value.errors) == ["params.beta_2", "params.eta", "params.momentum"]
    with pytest.raises(InvalidInput, match="must be a mapping"):
        make_strategy("fedavg", [("eta", 1)])  # type: ignore[arg-type]
    schema = strategy_schema()
    for bad in (
        {"name": "fedadam", "params": {"eta": -1}},
        {"name": "fedprox"},
        {"name": "krum", "params": {"f": 1}},
        {"name": "fedsgd"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    jsonschema.validate(
        {"name": "multikrum", "params": {"num_malicious": 2, "num_selected": 4, "max_update_norm": 3.5}},
        schema,
    )


# norm clipping as a plain function ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), max_norm=st.floats(1e-3, 1e3))
def test_clip_update_bounds_the_norm_and_keeps_the_direction(seed: int, max_norm: float) -> None:
    rng = np.random.default_rng(seed)
    global_weights = {"w": rng.standard_normal((4, 5)), "b": rng.standard_normal(5)}
    weights = {
        n: v + rng.standard_normal(v.shape) * rng.uniform(0.01, 100) for n, v in global_weights.items()
    }
    before = math.sqrt(sum(float(((weights[n] - global_weights[n]) ** 2).sum()) for n in weights))
    clipped = clip_update(global_weights, weights, max_norm)
    after = update_norm(global_weights, clipped)
    assert after == pytest.approx(min(before, max_norm), rel=1e-9)
    if before <= max_norm:
        assert all(clipped[n] is weights[n] for n in weights)
    else:
        for n in weights:  # the same direction: every coordinate scaled by one factor
            np.testing.assert_allclose(
                clipped[n] - global_weights[n],
                (weights[n] - global_weights[n]) * (max_norm / before),
                rtol=1e-9,
                atol=1e-12,
            )


def test_clip_update_keeps_dtypes_and_refuses_nonsense() -> None:
    rng = np.random.default_rng(41)
    global_weights = weights_at(rng)
    weights = weights_at(rng, 3.0)
    clipped = clip_update(global_weights, weights, 0.5)
    assert [(n, v.dtype, v.shape) for n, v in clipped.items()] == [
        (n, v.dtype, v.shape) for n, v in weights.items()
    ]
    assert update_norm(global_weights, clipped) == pytest.approx(0.5, rel=1e-2)  # float16 rounding
    for bad in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(InvalidInput, match="clipping norm must be a positive finite number"):
            clip_update(global_weights, weights, bad)
    with pytest.raises(InvalidInput, match="same tensors"):
        clip_update(global_weights, {"other": np.zeros(1)}, 1.0)
    with pytest.raises(InvalidInput, match="has shape"):
        clip_update(global_weights, {**weights, "features.0.bias": np.zeros(7)}, 1.0)
