"""Federated averaging (McMahan et al. 2017) and FedProx (Li et al. 2020).

FedAvg's next global model is the example-weighted mean of the clients' weights. That mean is
all it needs, so it also runs under secure aggregation, where the coordinator learns nothing
else: :meth:`FedAvg.aggregate_mean` takes the mean directly, and :meth:`FedAvg.aggregate_fit`
computes it and takes the same path, so both give the same model.

FedProx aggregates exactly like FedAvg; what differs is on the clients, whose local objective
gains the proximal term (mu / 2) * ||w - w_global||^2. The coordinator only tells them mu, in
every round's config as ``proximal_mu`` (the key Flower's FedProx sends, so a Flower client's
training loop reads it unchanged).

The FedOpt family (:mod:`federation.strategies.fedopt`) builds on this class: it takes the
same mean and applies a server optimizer step in :meth:`FedAvg._step` instead of adopting it.
"""

from __future__ import annotations

from typing import Any

from federation.strategies.base import (
    MAX_EXAMPLES,
    AggregationFailed,
    Config,
    FitResult,
    Float64,
    Param,
    Strategy,
    cast_all,
    check_layout,
    check_round,
    weighted_mean,
    wide,
)
from federation.tensors import Weights


class FedAvg(Strategy):
    """The example-weighted mean of the clients' weights becomes the global model."""

    name = "fedavg"
    supports_secagg = True

    def _aggregate(
        self, round_number: int, global_weights: Weights, results: list[FitResult]
    ) -> tuple[Weights, dict[str, Any]]:
        total = sum(result.num_examples for result in results)
        return self._step(round_number, global_weights, weighted_mean(results)), {"examples": total}

    def aggregate_mean(
        self, round_number: int, global_weights: Weights, mean_weights: Weights, total_examples: int
    ) -> Weights:
        """The next global weights from the mean the secure aggregation revealed.

        The mean may come in any numeric dtype (the unmasking works in its own field); its
        tensors and shapes must be the model's.
        """
        check_round(round_number)
        if (
            isinstance(total_examples, bool)
            or not isinstance(total_examples, int)
            or not 1 <= total_examples <= MAX_EXAMPLES
        ):
            raise AggregationFailed(
                f"the secure aggregate covers {total_examples!r} examples; it must be a positive integer"
            )
        check_layout(global_weights, mean_weights, "the securely aggregated mean", same_dtype=False)
        mean = {name: wide(mean_weights[name]) for name in global_weights}
        new_global = self._step(round_number, global_weights, mean)
        self.report = {
            "round": round_number,
            "strategy": self.name,
            "examples": total_examples,
            "secure": True,
        }
        return new_global

    def _step(self, round_number: int, global_weights: Weights, mean: dict[str, Float64]) -> Weights:
        """FedAvg adopts the mean as it is."""
        return cast_all(mean, global_weights)


class FedProx(FedAvg):
    """FedAvg's aggregation; every client is told the proximal term's weight ``proximal_mu``."""

    name = "fedprox"
    PARAMS = (
        Param(
            "proximal_mu",
            "number",
            "weight of the proximal term that keeps local training near the global model (0 = FedAvg)",
            required=True,
            minimum=0.0,
        ),
    )

    def configure_fit(self, round_number: int, global_weights: Weights) -> Config:
        check_round(round_number)
        return {"proximal_mu": float(self.params["proximal_mu"])}
