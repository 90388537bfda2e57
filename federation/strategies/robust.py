"""Aggregation that a few malicious or broken clients cannot steer.

* **FedMedian** — the coordinate-wise median of the clients' weights (Yin et al. 2018).
* **FedTrimmedAvg** — per coordinate, the ``beta`` fraction of values at each end is dropped
  (``floor(beta * n)`` of the n values, as scipy's ``trim_mean`` and Flower count) and the
  rest averaged. With fewer than ``1 / beta`` clients nothing is dropped: the fraction is of
  the clients present, not a number of attackers.
* **Krum** (Blanchard et al. 2017) — with f = ``num_malicious``, each update is scored by the
  sum of its squared distances to its n - f - 2 nearest others (distances over all
  floating-point tensors flattened into one vector; integer counters such as BatchNorm's
  ``num_batches_tracked`` say how many batches a client ran, not where its model is, and are
  left out); the best-scored update becomes the global model.
* **MultiKrum** — the example-weighted mean of the ``num_selected`` best-scored updates (as
  Flower averages them); by default m = n - f.

Krum's guarantee needs n > 2f + 2 clients; with fewer, a round is refused with that reason
rather than run without it. MultiKrum also refuses to select more than the n - f updates that
may be trusted.

None of these can run under secure aggregation: each needs every client's own update.
Median and trimmed mean ignore example counts (a count is only the client's claim; weighting
by it would hand a liar the weight it asks for).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from federation.strategies.base import (
    AggregationFailed,
    FitResult,
    Float64,
    Param,
    Strategy,
    cast_all,
    stacked,
    weighted_mean,
    wide,
)
from federation.tensors import Weights


class FedMedian(Strategy):
    """The coordinate-wise median of the clients' weights."""

    name = "fedmedian"

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        median = {name: np.median(stacked(results, name), axis=0) for name in global_weights}
        return cast_all(median, global_weights), {}


class FedTrimmedAvg(Strategy):
    """Per coordinate, the mean of the values left once the ``beta`` fraction at each end is cut."""

    name = "fedtrimmedavg"
    PARAMS = (
        Param(
            "beta",
            "number",
            "fraction of the clients' values cut at each end of every coordinate before averaging",
            default=0.2,
            minimum=0.0,
            exclusive_maximum=0.5,
        ),
    )

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        n = len(results)
        cut = int(float(self.params["beta"]) * n)  # beta < 0.5, so at least one value stays
        trimmed: dict[str, Float64] = {}
        for name in global_weights:
            values = np.sort(stacked(results, name), axis=0)
            trimmed[name] = values[cut : n - cut].mean(axis=0)
        return cast_all(trimmed, global_weights), {"trimmed_per_end": cut}


class Krum(Strategy):
    """The update closest to its n - f - 2 nearest neighbours becomes the global model."""

    name = "krum"
    PARAMS: ClassVar[tuple[Param, ...]] = (
        Param(
            "num_malicious",
            "integer",
            "f, the number of malicious clients to withstand (each round needs more than 2f + 2 clients)",
            default=0,
            minimum=0,
        ),
    )

    def _scores(self, names: list[str], results: list[FitResult]) -> list[float]:
        """Each result's Krum score, or :class:`AggregationFailed` when n <= 2f + 2."""
        n, f = len(results), int(self.params["num_malicious"])
        if n <= 2 * f + 2:
            raise AggregationFailed(
                f"{self.name} with num_malicious={f} needs more than {2 * f + 2} updates "
                f"(n > 2f + 2), but this round has {n}"
            )
        vectors = [
            np.concatenate([wide(r.weights[name]).ravel() for name in names] or [np.zeros(0)])
            for r in results
        ]
        distances = np.zeros((n, n), dtype=np.float64)
        for i in range(n):
            for j in range(i + 1, n):
                difference = vectors[i] - vectors[j]
                distances[i, j] = distances[j, i] = float(np.dot(difference, difference))
        nearest = n - f - 2
        scores = []
        for i in range(n):
            others = np.sort(np.delete(distances[i], i))
            scores.append(float(others[:nearest].sum()))
        return scores

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        scores = self._scores(_float_names(global_weights), results)
        best = int(np.argmin(scores))  # results are in canonical order: a tie goes the same way always
        chosen = results[best]
        notes = {"selected": [chosen.participant], "scores": _named(results, scores)}
        return {name: chosen.weights[name].copy() for name in global_weights}, notes


class MultiKrum(Krum):
    """The example-weighted mean of the ``num_selected`` best-scored updates."""

    name = "multikrum"
    PARAMS = (
        *Krum.PARAMS,
        Param(
            "num_selected",
            "integer",
            "m, how many of the best-scored updates are averaged (default n - f)",
            minimum=1,
        ),
    )

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        scores = self._scores(_float_names(global_weights), results)
        n, f = len(results), int(self.params["num_malicious"])
        m = int(self.params.get("num_selected", n - f))
        if m > n - f:
            raise AggregationFailed(
                f"{self.name} selects {m} updates, but with num_malicious={f} only {n - f} "
                f"of this round's {n} may be trusted"
            )
        order = sorted(range(n), key=lambda i: (scores[i], i))  # stable: ties by canonical order
        selected = [results[i] for i in order[:m]]
        notes = {"selected": [r.participant for r in selected], "scores": _named(results, scores)}
        return cast_all(weighted_mean(selected), global_weights), notes


def _named(results: list[FitResult], scores: list[float]) -> dict[str, float | None]:
    """Scores by participant for the report (a score past float64's range is shown as null)."""
    return {
        result.participant: score if math.isfinite(score) else None
        for result, score in zip(results, scores, strict=True)
    }


def _float_names(global_weights: Weights) -> list[str]:
    return [name for name, value in global_weights.items() if value.dtype.kind == "f"]
