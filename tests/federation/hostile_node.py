"""A test-only hostile provider: ``agora serve`` whose node corrupts every update it sends.

``python -m tests.federation.hostile_node serve …`` with ``HOSTILE_UPDATE`` = ``scale`` (the
update's change from the global weights x10) or ``flip`` (that change sign-flipped and x10):
the model-poisoning attacks robust strategies are measured against. The corruption happens
after the node's own checks, as a node an attacker controls would do it; nothing in the
product carries this switch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from federation import local

FACTORS = {"scale": 10.0, "flip": -10.0}
_honest = local.LocalRounds._private_update


def _poisoned(
    self: local.LocalRounds, fed: Any, spec: Any, global_weights: Any, weights: Any, number: int
) -> Any:
    factor = FACTORS[os.environ.get("HOSTILE_UPDATE", "flip")]
    bad = {
        name: (global_weights[name] + factor * (value - global_weights[name])).astype(value.dtype)
        if np.issubdtype(value.dtype, np.floating)
        else value
        for name, value in weights.items()
    }
    return _honest(self, fed, spec, global_weights, bad, number)


local.LocalRounds._private_update = _poisoned  # type: ignore[method-assign]

if __name__ == "__main__":
    from node.cli import app

    app()
