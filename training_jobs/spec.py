"""The job spec: what a consumer asks a provider to run (YAML or JSON; JSON Schema published).

```yaml
name: digits-cnn
agreement: 0x…            # or --agreement at submit time
provider: http://…        # or --provider
dataset: <offering id>    # optional: the agreement's offering
code:
  bundle: .               # a directory or .tar.gz, relative to the spec; packed and hashed
  entrypoint: train.py
  # image: registry/name@sha256:…  (podman / docker / Kubernetes) with command: […]
parameters: {epochs: 8}
resources: {cpu_seconds: 300, memory: 2GiB, wall_time: 5m, max_output: 20MiB}
output: {format: torchscript, path: model.pt, metrics: metrics.json, metric_names: [train_loss]}
onnx: {input_shape: [1, 1, 8, 8], dtype: float32, opset: 17, tolerance: 0.0001}
verification: {rerun: false}
```

The spec that crosses the wire is this model's JSON with the bundle replaced by its sha256
(``code.digest``); the bundle travels beside it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ByteSize, ConfigDict, Field, model_validator

from kernel.canonical import canonical_hash
from kernel.documents import parse_located
from training_jobs.job_metrics import MAX_METRICS

SCHEMA_FILE = Path(__file__).with_name("job.schema.json")
OutputFormat = Literal["torchscript", "torch-state-dict", "sklearn"]
METRIC_NAME = r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$"
DIGEST_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _seconds(value: Any) -> Any:
    """``90``, ``"90s"``, ``"5m"``, ``"1.5h"`` → seconds."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration such as 90s, 5m or 1h: {value!r}")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class Code(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str | None = Field(
        default=None, max_length=4096, description="directory or .tar.gz, relative to the spec file"
    )
    entrypoint: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*\.py$", description="script inside the bundle"
    )
    image: str | None = Field(
        default=None, max_length=500, description="OCI image with digest (podman / docker / Kubernetes)"
    )
    command: list[str] | None = Field(default=None, max_length=64, description="argv for the image")
    digest: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the packed bundle (set at submit)"
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Code:
        if self.image is not None:
            if not DIGEST_REF.match(self.image):
                raise ValueError("image must be pinned by digest: name@sha256:<64 hex>")
            if self.bundle is not None or self.entrypoint is not None:
                raise ValueError("give either a bundle with an entrypoint or an image, not both")
            if not self.command:
                raise ValueError("an image needs the command to run (argv)")
        elif self.entrypoint is None:
            raise ValueError("code needs a bundle with an entrypoint (e.g. train.py) or an image")
        if self.entrypoint and (".." in self.entrypoint.split("/")):
            raise ValueError("the entrypoint must lie inside the bundle")
        return self


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu_seconds: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    memory: ByteSize = Field(default=ByteSize(2 * 1024**3), ge=64 * 1024**2, description="e.g. 2GiB")
    wall_time: Seconds = Field(default=900.0, gt=0, le=7 * 24 * 3600, description="e.g. 15m")
    max_output: ByteSize = Field(default=ByteSize(100 * 1024**2), ge=1024, description="e.g. 50MiB")
    max_processes: int = Field(default=64, ge=1, le=4096)


class Output(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: OutputFormat
    path: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="file the job writes in /out")
    factory: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="module:function in the bundle building the nn.Module (torch-state-dict)",
    )
    metrics: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.json$")
    metric_names: list[Annotated[str, Field(pattern=METRIC_NAME)]] = Field(
        default_factory=list,
        max_length=MAX_METRICS,
        description="the numbers the metrics file may hold, named before the job sees any data",
    )
    release_native: bool = Field(
        default=False, description="ask for the native model too (granted when the policy allows download)"
    )

    @model_validator(mode="after")
    def _factory(self) -> Output:
        if self.format == "torch-state-dict" and not self.factory:
            raise ValueError("a torch-state-dict output needs a factory (module:function in the bundle)")
        if self.metrics == self.path:
            raise ValueError("the metrics file must differ from the model file")
        if self.metrics and not self.metric_names:
            raise ValueError("a metrics file needs metric_names: the names of the numbers it holds")
        if len(set(self.metric_names)) != len(self.metric_names):
            raise ValueError("metric_names must not repeat a name")
        return self


class OnnxOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_shape: list[int] = Field(min_length=1, max_length=8, description="first dimension is the batch")
    dtype: Literal["float32", "float64", "int64"] = "float32"
    opset: int = Field(default=17, ge=9, le=23)
    tolerance: float = Field(default=1e-4, gt=0, le=1.0, description="max |ONNX - native| on probe inputs")

    @model_validator(mode="after")
    def _positive(self) -> OnnxOptions:
        if any(d < 1 for d in self.input_shape):
            raise ValueError("input_shape dimensions must be positive")
        return self


class Verification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rerun: bool = Field(default=False, description="run twice; the model hashes must be equal")


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    agreement: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{64}$")
    provider: str | None = Field(default=None, pattern=r"^https?://", max_length=500)
    dataset: str | None = Field(
        default=None, max_length=64, description="offering id; default: the agreement's"
    )
    code: Code
    parameters: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    output: Output
    onnx: OnnxOptions
    verification: Verification = Field(default_factory=Verification)

    @model_validator(mode="after")
    def _parameters_size(self) -> JobSpec:
        if len(json.dumps(self.parameters, default=str)) > 64 * 1024:
            raise ValueError("parameters are limited to 64 KiB of JSON")
        return self

    def wire(self) -> dict[str, Any]:
        """The spec as it travels: JSON-ready, without the local bundle path."""
        data = self.model_dump(mode="json", exclude={"agreement", "provider"})
        data["code"].pop("bundle", None)
        return data

    @property
    def parameters_hash(self) -> str:
        return canonical_hash(self.parameters)


def load_spec(text: str, source_name: str = "job.yaml") -> JobSpec:
    """Parse and validate a job spec; errors name the file, the line and the field."""
    return parse_located(text, source_name, "job spec").validate(JobSpec, "job spec")


def write_schema(path: Path = SCHEMA_FILE) -> str:
    text = json.dumps(JobSpec.model_json_schema(), indent=2, sort_keys=True) + "\n"
    path.write_text(text)
    return text
