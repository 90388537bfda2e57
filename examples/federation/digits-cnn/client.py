"""A Flower-style client for the same CNN: the custom entry point (``model.client: client:DigitsClient``).

It has the shape of Flower's ``NumPyClient`` — ``get_parameters``, ``fit`` and ``evaluate`` on
lists of numpy arrays in the model's order — so a Flower client's logic ports with the data
handed to its constructor instead of loaded by it: the node gives ``(X_train, y_train)``, the
provider's training rows, as numpy arrays. Whatever it prints goes to the provider's log.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from model import make_model
from torch import nn


class DigitsClient:
    def __init__(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X = torch.tensor(np.asarray(X, dtype=np.float32)).reshape(-1, 1, 8, 8)
        self.y = torch.tensor(np.asarray(y, dtype=np.int64))
        self.model = make_model()

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [t.detach().numpy().copy() for t in self.model.state_dict().values()]

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        names = list(self.model.state_dict())
        self.model.load_state_dict({n: torch.tensor(p) for n, p in zip(names, parameters, strict=True)})

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self.set_parameters(parameters)
        epochs = int(config.get("local_epochs", 1))
        torch.manual_seed(int(config.get("round", 0)))
        optimizer = torch.optim.SGD(self.model.parameters(), lr=float(config.get("lr", 0.05)), momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()
        self.model.train()
        for _ in range(epochs):
            for batch in torch.randperm(len(self.y)).split(16):
                optimizer.zero_grad()
                loss = loss_fn(self.model(self.X[batch]), self.y[batch])
                loss.backward()
                optimizer.step()
        print(f"round {config.get('round')}: last batch loss {float(loss):.4f}")
        return self.get_parameters({}), len(self.y), {"train_loss": float(loss)}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        self.set_parameters(parameters)
        self.model.eval()
        with torch.no_grad():
            logits = self.model(self.X)
            loss = float(nn.functional.cross_entropy(logits, self.y))
            accuracy = float((logits.argmax(dim=1) == self.y).float().mean())
        return loss, len(self.y), {"accuracy": accuracy}
