"""What the warm trainer runs: the bundle's model code and the node's training recipe, checked.

The federation spec names them (the coordinator's node checks the spec; the provider's node
checks them again here before a process sees them):

* :class:`ModelCode` — the bundle's model factory ``module:function`` (a ``torch.nn.Module``)
  and/or a Flower-style client ``module:ClassOrFactory``; the shape of one input row for the
  model (rows are reshaped to it) and the seed;
* :class:`Recipe` — the node's own training loop for a factory: optimizer ``sgd`` | ``adam``,
  learning rate, momentum, local epochs, batch size, FedProx's ``proximal_mu`` and optional
  DP-SGD (:class:`DPSGD`);
* a round's config (:func:`check_config`): a few scalars; for the recipe, ``round``, ``lr``,
  ``local_epochs`` and ``proximal_mu`` override the recipe within the same bounds.

Under DP-SGD a round may not change ``local_epochs``: the privacy accountant
(:func:`federation.privacy.round_events`) counts the steps from the recipe's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from kernel.errors import InvalidInput

DEFAULT_METRIC_NAMES = ("train_loss", "train_accuracy", "loss", "accuracy")
ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
CONFIG_MAX_ENTRIES = 32
CONFIG_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
CONFIG_TEXT_MAX = 200
MAX_INPUT_DIMS = 4
# the recipe's knobs a round may turn, within these bounds (also the recipe's own bounds)
BOUNDS = {"lr": (1e-6, 10.0), "local_epochs": (1, 100), "proximal_mu": (0.0, 100.0), "round": (0, 10**6)}


def _within(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise InvalidInput(f"{name} must be {'an integer' if integer else 'a number'}, not {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must lie within [{low:g}, {high:g}], not {value!r}")


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD in the recipe (Opacus): per-sample clipping to ``max_grad_norm``, Gaussian noise
    of ``noise_multiplier``·``max_grad_norm``, Poisson-sampled batches."""

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        _within("dp.noise_multiplier", self.noise_multiplier, 0.01, 100.0)
        _within("dp.max_grad_norm", self.max_grad_norm, 1e-3, 1e3)


@dataclass(frozen=True)
class Recipe:
    """The node's training loop for a factory's model (see :mod:`federation.trainer.recipe`)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    local_epochs: int = 1
    batch_size: int = 16
    proximal_mu: float = 0.0
    dp: DPSGD | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise InvalidInput(f"optimizer must be sgd or adam, not {self.optimizer!r}")
        _within("lr", self.lr, *BOUNDS["lr"])
        _within("momentum", self.momentum, 0.0, 0.999)
        _within("local_epochs", self.local_epochs, *BOUNDS["local_epochs"], integer=True)
        _within("batch_size", self.batch_size, 1, 65536, integer=True)
        _within("proximal_mu", self.proximal_mu, *BOUNDS["proximal_mu"])

    def header(self) -> dict[str, Any]:
        """The recipe as the trainer receives it at ``hello``."""
        return asdict(self)


@dataclass(frozen=True)
class ModelCode:
    """The bundle's entry points: a model ``factory``, a Flower-style ``client``, or both (the
    client trains, the factory serves held-out evaluation); ``input_shape`` of one row."""

    factory: str | None = None
    client: str | None = None
    input_shape: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.factory is None and self.client is None:
            raise InvalidInput("the model names neither a factory nor a client")
        for what, entry in (("factory", self.factory), ("client", self.client)):
            if entry is not None and not ENTRY.match(entry):
                raise InvalidInput(f"{what} must be module:attribute, not {entry[:80]!r}")
        if self.input_shape is not None and not (
            0 < len(self.input_shape) <= MAX_INPUT_DIMS
            and all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 1 << 20 for d in self.input_shape
            )
        ):
            raise InvalidInput(f"input_shape must be 1 to {MAX_INPUT_DIMS} positive sizes, such as [1, 8, 8]")
        _within("seed", self.seed, 0, 2**31 - 1, integer=True)

    def header(self) -> dict[str, Any]:
        """The entry points as the trainer receives them at ``hello``."""
        return asdict(self)


def check_config(config: Mapping[str, Any], *, recipe: Recipe | None) -> dict[str, Any]:
    """A round's config as the process receives it: at most 32 scalars under plain names;
    with a recipe, its overrides within the recipe's bounds."""
    if not isinstance(config, Mapping) or len(config) > CONFIG_MAX_ENTRIES:
        raise InvalidInput(f"a round's config must be a mapping of at most {CONFIG_MAX_ENTRIES} entries")
    checked: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not CONFIG_KEY.match(key):
            raise InvalidInput("a round's config keys must be names of at most 40 letters, digits, _ . -")
        if isinstance(value, str):
            if len(value) > CONFIG_TEXT_MAX:
                raise InvalidInput(f"the round's config value {key} is over {CONFIG_TEXT_MAX} characters")
        elif isinstance(value, (int, float)):  # bool included
            if not math.isfinite(value):
                raise InvalidInput(f"the round's config value {key} is not finite")
        else:
            raise InvalidInput(f"the round's config value {key} must be a number, a boolean or a string")
        if recipe is not None and key in BOUNDS:
            _within(f"the round's {key}", value, *BOUNDS[key], integer=key in ("local_epochs", "round"))
            if key == "local_epochs" and recipe.dp is not None and value != recipe.local_epochs:
                raise InvalidInput(
                    "a round may not change a DP-SGD recipe's local_epochs: its steps are accounted"
                )
        checked[key] = value
    return checked
