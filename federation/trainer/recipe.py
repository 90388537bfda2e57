"""The node's training recipe: local training of the bundle's torch model, and its evaluation.

The bundle supplies only the model (a factory ``module:function`` returning a
``torch.nn.Module``); the loop is the node's: cross-entropy loss, SGD (with momentum) or Adam,
``local_epochs`` passes over the training rows in shuffled batches, and optionally

* FedProx's proximal term ``μ/2·‖w - w_global‖²`` (``proximal_mu``), which keeps the local
  model near the global one on non-IID data;
* DP-SGD (``dp``: Opacus, per-sample gradient clipping to ``max_grad_norm`` and Gaussian noise
  of ``noise_multiplier``·``max_grad_norm``, Poisson sampling of the batches). The proximal
  term does not depend on the data, so under DP-SGD it is applied as its own step after each
  private one instead of through the (clipped) per-sample gradients.

Each fit starts from the global weights with a fresh optimizer (as a Flower client does). A
plain fit shuffles on the seed ``seed + round``, so it is reproducible. A DP-SGD fit is not:
its privacy is the randomness of its Poisson batch masks and its Gaussian noise, and the
coordinator knows the seed and the round, so with them it could draw the same noise again
and subtract it from the update. Those two come from generators seeded by the operating
system's CSPRNG (:func:`os_generator`), and torch's global generator is reseeded from it
before Opacus wraps the model.

Opacus' ``secure_mode`` (a cryptographic generator and noise summed from several draws, which
resists the floating-point attacks on Gaussian sampling) needs ``torchcsprng``, which has no
build for current torch; the generators here are torch's Mersenne Twister with a 63-bit seed
from the OS.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .loading import Layout

EVAL_BATCH = 512


def build(factory: Callable[..., Any], seed: int | None = None) -> nn.Module:
    """The factory's model (its initial weights drawn on ``seed``, when given)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"the model factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def layout(model: nn.Module) -> Layout:
    state = model.state_dict()
    return [
        (name, [int(d) for d in t.shape], str(t.dtype).removeprefix("torch.")) for name, t in state.items()
    ]


def arrays_of(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def load_into(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    model.load_state_dict({name: torch.tensor(np.asarray(a)) for name, a in arrays.items()}, strict=True)


def inputs(X: np.ndarray, input_shape: list[int] | None) -> torch.Tensor:
    """The rows as the model takes them (``input_shape`` per row, e.g. [1, 8, 8])."""
    rows = torch.tensor(np.asarray(X, dtype=np.float32))
    return rows.reshape(-1, *input_shape) if input_shape else rows


def warm_up() -> None:
    """One tiny step of each optimizer, so that what torch loads on first use (its optimizers
    pull in more of torch on their first step) is loaded before the first round, not in it."""
    layer = nn.Linear(2, 2)
    for optimizer in (
        torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.5),
        torch.optim.Adam(layer.parameters()),
    ):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(layer(torch.zeros(1, 2)), torch.zeros(1, dtype=torch.int64)).backward()
        optimizer.step()


def os_generator() -> torch.Generator:
    """A torch generator whose seed nobody else knows: 63 bits from the OS's CSPRNG."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def labels(y: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(y, dtype=np.int64))


def _optimizer(recipe: dict[str, Any], params: Any, lr: float) -> torch.optim.Optimizer:
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=float(recipe.get("momentum", 0.0)))


def fit(
    factory: Callable[..., Any],
    X: torch.Tensor,
    y: torch.Tensor,
    global_arrays: dict[str, np.ndarray],
    recipe: dict[str, Any],
    config: dict[str, Any],
    seed: int,
) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
    """Train from ``global_arrays``; the new weights, the rows trained on, and two figures."""
    lr = float(config.get("lr", recipe["lr"]))
    epochs = int(config.get("local_epochs", recipe["local_epochs"]))
    mu = float(config.get("proximal_mu", recipe.get("proximal_mu", 0.0)))
    round_seed = seed + int(config.get("round", 0))
    model = build(factory, round_seed)
    load_into(model, global_arrays)
    anchor = [p.detach().clone() for p in model.parameters()]
    dp = recipe.get("dp")
    loader: DataLoader[Any] = DataLoader(
        TensorDataset(X, y),
        batch_size=int(recipe["batch_size"]),
        shuffle=True,
        # Opacus draws its Poisson masks from this generator: under DP-SGD, not the round's seed
        generator=os_generator() if dp else torch.Generator().manual_seed(round_seed),
    )
    optimizer = _optimizer(recipe, model.parameters(), lr)
    trained: nn.Module = model
    if dp:
        from opacus import PrivacyEngine  # only DP recipes pay for the import

        torch.manual_seed(secrets.randbits(63))  # whatever else draws from torch's global generator
        trained, optimizer, loader = PrivacyEngine().make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=float(dp["noise_multiplier"]),
            max_grad_norm=float(dp["max_grad_norm"]),
            poisson_sampling=True,
            noise_generator=os_generator(),
        )
    loss_fn = nn.CrossEntropyLoss()
    trained.train()
    total, correct, seen = 0.0, 0, 0
    for _ in range(epochs):
        total, correct, seen = 0.0, 0, 0
        for xb, yb in loader:
            if len(yb) == 0:  # Poisson sampling may draw an empty batch
                continue
            optimizer.zero_grad()
            logits = trained(xb)
            loss = loss_fn(logits, yb)
            if mu and not dp:
                loss = loss + mu / 2 * sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            loss.backward()
            optimizer.step()
            if mu and dp:
                with torch.no_grad():
                    for p, a in zip(model.parameters(), anchor, strict=True):
                        p.add_(p - a, alpha=-lr * mu)
            total += float(loss.detach()) * len(yb)
            correct += int((logits.detach().argmax(dim=1) == yb).sum())
            seen += len(yb)
    metrics = {"train_loss": total / max(seen, 1), "train_accuracy": correct / max(seen, 1)}
    return arrays_of(model), len(y), metrics


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """Mean cross-entropy and accuracy of ``model`` on the rows, computed here from its outputs."""
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            xb, yb = X[start : start + EVAL_BATCH], y[start : start + EVAL_BATCH]
            logits = model(xb)
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(yb):
                raise ValueError("the model's output is not one row of class scores per input")
            if int(yb.max()) >= logits.shape[1]:
                raise ValueError(
                    f"the model scores {logits.shape[1]} classes; the labels reach {int(yb.max())}"
                )
            total += float(nn.functional.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
    return total / len(y), correct / len(y), len(y)
