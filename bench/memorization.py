"""The memorization check on a big model: seconds and weights per second, against a baseline.

The audit refuses a model whose weights hold rows of the provider's data; it has to stay
fast on models of millions of weights and datasets of thousands of rows. This measures, in
one process, :func:`training_jobs.audit.memorization.find_memorized` over ``--weights``
random weights against ``--rows`` digit-like rows (64 features of 17 levels), and as the
baseline ``numpy.sort`` of the same weights (a pass the check cannot beat by much); it
also plants one row and checks that it is found.

    .venv/bin/python bench/memorization.py
    .venv/bin/python bench/memorization.py --weights 400000 --rounds 1   # smoke run

Target: 4 million weights against 1,800 rows in under 5 s on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training_jobs.audit.memorization import find_memorized

TARGET_SECONDS = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=int, default=4_000_000)
    parser.add_argument("--rows", type=int, default=1_800)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rows = np.random.default_rng(4).integers(0, 17, size=(args.rows, 64)) / 16.0
    weights = np.random.default_rng(5).normal(size=args.weights)
    planted = weights.copy()
    planted[1234 : 1234 + 64] = rows[7]
    assert 7 in find_memorized(rows, [planted]).rows, "a planted row must be found"

    checks, sorts = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        found = find_memorized(rows, [weights])
        checks.append(time.perf_counter() - started)
        assert not found.rows
        started = time.perf_counter()
        np.sort(weights)
        sorts.append(time.perf_counter() - started)
    check, baseline = statistics.median(checks), statistics.median(sorts)
    print(f"memorization check: {args.weights:,} weights against {args.rows:,} rows")
    print(f"  find_memorized   {check:8.3f} s   ({args.weights / check / 1e6:.1f} M weights/s)")
    print(f"  numpy.sort       {baseline:8.3f} s   (baseline)")
    print(f"  ratio            {check / baseline:8.1f}x the baseline")
    verdict = "met" if check <= TARGET_SECONDS else "NOT met"
    print(f"  target ≤ {TARGET_SECONDS:.0f} s at 4 M weights: {verdict}")


if __name__ == "__main__":
    main()
