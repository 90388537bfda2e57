"""The federation's model: a small CNN for 8x8 grey-scale digits, 9,930 parameters.

Conv2d 1→16 (3x3, padding 1) and 16→32, each with ReLU, a 2x2 max-pool (8x8 → 4x4) and one
linear layer from the 512 features to the 10 class scores. The node's training recipe
trains it (the spec names ``model:make_model``); rows reach it shaped [1, 8, 8].
"""

from __future__ import annotations

from torch import nn


def make_model() -> nn.Module:
    """The model factory the federation spec names (``model.factory: model:make_model``)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
