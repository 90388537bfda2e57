"""The federation spec: what a coordinator asks its providers to train together.

```yaml
name: digits-federated
model:
  bundle: .                      # a directory or .tar.gz with the model code, relative to the spec
  factory: model:make_model      # a torch.nn.Module; trained by the node's recipe below
  # client: client:DigitsClient  # or a Flower-style client (fit/evaluate on NumPy lists)
  input_shape: [1, 8, 8]         # one row, as the model takes it
  initial_weights: initial.safetensors   # optional: else the factory's weights on `seed`
  seed: 0
recipe: {optimizer: sgd, lr: 0.05, local_epochs: 1, batch_size: 16}
providers:
  - agreement: 0x…               # a federate agreement with the provider of a dataset
rounds: 20
clients_per_round: null          # all of them
min_participants: 2
round_deadline: 5m
strategy: {name: fedavg, params: {}}
privacy: {node_clip_norm: 5.0, node_noise_multiplier: 0.8, delta: 1.0e-5}
secure_aggregation: {enabled: false, reconstruction_threshold: 2}
resources: {cpu_seconds: 3600, memory: 3GiB, wall_time: 2h}
onnx: {opset: 17}
```

Errors name the file, the line and the field. The spec that travels to a provider is
:meth:`FederationSpec.wire`: without local paths, with the bundle's sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ByteSize, ConfigDict, Field, field_validator, model_validator

from federation.privacy import PrivacyOptions
from federation.recipes import DPSGD, ENTRY, MAX_INPUT_DIMS, ModelCode, Recipe
from federation.strategies import make_strategy, strategy_schema
from kernel.documents import parse_located
from kernel.errors import InvalidInput
from training_jobs.spec import Seconds

SCHEMA_FILE = Path(__file__).with_name("federation.schema.json")
MAX_PROVIDERS = 64
MAX_ROUNDS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ModelSpec(_Strict):
    bundle: str | None = Field(
        default=None, max_length=4096, description="directory or .tar.gz, relative to the spec"
    )
    factory: str | None = Field(
        default=None, pattern=ENTRY.pattern, description="module:function → torch.nn.Module"
    )
    client: str | None = Field(
        default=None, pattern=ENTRY.pattern, description="module:Class of a Flower-style NumPy client"
    )
    input_shape: list[int] | None = Field(default=None, min_length=1, max_length=MAX_INPUT_DIMS)
    initial_weights: str | None = Field(default=None, max_length=4096, description="a .safetensors file")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    digest: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the packed bundle"
    )

    @model_validator(mode="after")
    def _entry(self) -> ModelSpec:
        if self.factory is None and self.client is None:
            raise ValueError("the model needs a factory (module:function) or a client (module:Class)")
        if self.factory is None:
            raise ValueError(
                "a factory is needed too: the node builds the model from it to evaluate the global "
                "weights on its held-out rows and to translate the final model to ONNX"
            )
        return self

    def code(self) -> ModelCode:
        shape = tuple(self.input_shape) if self.input_shape else None
        return ModelCode(factory=self.factory, client=self.client, input_shape=shape, seed=self.seed)


class DpSgd(_Strict):
    noise_multiplier: float = Field(ge=0.01, le=100.0)
    max_grad_norm: float = Field(ge=1e-3, le=1e3)


class RecipeSpec(_Strict):
    optimizer: str = Field(default="sgd", pattern=r"^(sgd|adam)$")
    lr: float = Field(default=0.05, ge=1e-6, le=10.0)
    momentum: float = Field(default=0.0, ge=0.0, le=0.999)
    local_epochs: int = Field(default=1, ge=1, le=100)
    batch_size: int = Field(default=16, ge=1, le=65536)

    def recipe(self, privacy: PrivacyOptions, proximal_mu: float = 0.0) -> Recipe:
        dp = privacy.dp_sgd
        return Recipe(
            optimizer="adam" if self.optimizer == "adam" else "sgd",
            lr=self.lr,
            momentum=self.momentum,
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            proximal_mu=proximal_mu,
            dp=DPSGD(dp.noise_multiplier, dp.max_grad_norm) if dp else None,
        )


class ProviderSpec(_Strict):
    agreement: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="a federate agreement this node holds")


class StrategySpec(_Strict):
    name: str = Field(default="fedavg", max_length=40)
    params: dict[str, Any] = Field(default_factory=dict)


class SecureAggregation(_Strict):
    enabled: bool = False
    reconstruction_threshold: int | None = Field(
        default=None, ge=2, description="shares needed to unmask; drop-outs tolerated = members - threshold"
    )
    clipping_range: float = Field(default=8.0, gt=0, le=1e4, description="each value clipped to ± this")
    quantization_range: int = Field(default=2**22, ge=2**8, le=2**40)


class Resources(_Strict):
    cpu_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600, description="over the federation's life")
    memory: ByteSize = Field(default=ByteSize(3 * 1024**3), ge=256 * 1024**2)
    wall_time: Seconds = Field(
        default=3600.0, gt=0, le=7 * 24 * 3600, description="over the federation's life"
    )


class OnnxSpec(_Strict):
    opset: int = Field(default=17, ge=9, le=23)
    tolerance: float = Field(default=1e-4, gt=0, le=1.0)


class FederationSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    model: ModelSpec
    recipe: RecipeSpec = Field(default_factory=RecipeSpec)
    providers: list[ProviderSpec] = Field(min_length=1, max_length=MAX_PROVIDERS)
    rounds: int = Field(default=10, ge=1, le=MAX_ROUNDS)
    clients_per_round: int | None = Field(default=None, ge=1, le=MAX_PROVIDERS, description="default: all")
    min_participants: int = Field(default=1, ge=1, le=MAX_PROVIDERS)
    round_deadline: Seconds = Field(default=600.0, gt=0, le=24 * 3600, description="e.g. 5m")
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    privacy: PrivacyOptions = Field(default_factory=PrivacyOptions)
    secure_aggregation: SecureAggregation = Field(default_factory=SecureAggregation)
    resources: Resources = Field(default_factory=Resources)
    onnx: OnnxSpec = Field(default_factory=OnnxSpec)
    max_update_bytes: ByteSize | None = Field(default=None, description="default: the initial weights' size")

    @field_validator("providers")
    @classmethod
    def _distinct(cls, providers: list[ProviderSpec]) -> list[ProviderSpec]:
        agreements = [p.agreement.lower() for p in providers]
        if len(set(agreements)) != len(agreements):
            raise ValueError("an agreement is named twice")
        return providers

    @model_validator(mode="after")
    def _consistent(self) -> FederationSpec:
        members = len(self.providers)
        per_round = self.clients_per_round or members
        if per_round > members:
            raise ValueError(f"clients_per_round is {per_round} but the federation has {members} providers")
        if self.min_participants > per_round:
            raise ValueError(
                f"min_participants ({self.min_participants}) exceeds the clients per round ({per_round})"
            )
        try:
            strategy = make_strategy(self.strategy.name, self.strategy.params)
        except InvalidInput as exc:
            raise ValueError(f"strategy: {exc.detail}") from None
        if self.secure_aggregation.enabled:
            refusal = secagg_refusal(strategy.supports_secagg, self.strategy.name, self.strategy.params)
            if refusal:
                raise ValueError(refusal)
            threshold = self.secure_aggregation.reconstruction_threshold or max(2, members // 2 + 1)
            if threshold > per_round:
                raise ValueError(
                    f"the reconstruction threshold {threshold} cannot exceed the clients per round"
                )
            if per_round < 2:
                raise ValueError("secure aggregation needs at least two clients per round")
            if self.clients_per_round not in (None, members):
                raise ValueError(
                    "secure aggregation runs with every provider in every round (clients_per_round: all)"
                )
        return self

    @property
    def per_round(self) -> int:
        return self.clients_per_round or len(self.providers)

    @property
    def proximal_mu(self) -> float:
        return float(self.strategy.params.get("proximal_mu", 0.0)) if self.strategy.name == "fedprox" else 0.0

    def threshold(self) -> int:
        return self.secure_aggregation.reconstruction_threshold or max(2, len(self.providers) // 2 + 1)

    def wire(self) -> dict[str, Any]:
        """The spec as it travels to a provider: JSON, no local paths, no agreements of others."""
        data = self.model_dump(mode="json", exclude={"providers"})
        data["model"].pop("bundle", None)
        data["model"].pop("initial_weights", None)
        return data


def secagg_refusal(supports: bool, name: str, params: dict[str, Any]) -> str | None:
    """Why a strategy cannot run under secure aggregation, or None."""
    if supports:
        return None
    if "max_update_norm" in params:
        return (
            "secure aggregation hides each update, so server-side clipping (max_update_norm) cannot run "
            "with it; clip on the providers instead (privacy.node_clip_norm)"
        )
    return (
        f"strategy {name} needs each provider's update, which secure aggregation hides; "
        "use fedavg, fedprox, fedadam, fedyogi or fedadagrad with it"
    )


class WireSpec(FederationSpec):
    """The spec a provider receives: the same rules, without the providers list."""

    providers: list[ProviderSpec] = Field(default_factory=list, max_length=0)

    @model_validator(mode="after")
    def _consistent(self) -> WireSpec:
        make_strategy(self.strategy.name, self.strategy.params)
        if self.model.digest is None:
            raise ValueError("the spec names no bundle digest")
        return self


def load_spec(text: str, source_name: str = "federation.yaml") -> FederationSpec:
    """Parse and validate a federation spec; errors name the file, the line and the field."""
    return parse_located(text, source_name, "federation spec").validate(FederationSpec, "federation spec")


def wire_spec(data: Any) -> WireSpec:
    if not isinstance(data, dict):
        raise InvalidInput("the federation spec must be a JSON object")
    from kernel.validation import validate

    return validate(WireSpec, json.dumps(data).encode(), what="federation spec")


def schema() -> dict[str, Any]:
    document = FederationSpec.model_json_schema()
    document.setdefault("properties", {})["strategy"] = strategy_schema()
    return document


def write_schema(path: Path = SCHEMA_FILE) -> str:
    text = json.dumps(schema(), indent=2, sort_keys=True) + "\n"
    path.write_text(text)
    return text


__all__ = ["Annotated", "FederationSpec", "WireSpec", "load_spec", "wire_spec", "write_schema"]
