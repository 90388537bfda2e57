"""The federated model's ONNX translation on the coordinator, checked as a job's model is.

At the end of a federation (:mod:`federation.final`) the coordinator holds the bundle and the
final global weights, and no rows. The translation goes through the jobs' two sandbox runs
(:class:`training_jobs.verification.Verification`), described by a
:class:`~training_jobs.verification.Translation` instead of a job spec:

1. the node draws its own probe inputs of the spec's ``model.input_shape``
   (:func:`write_probe`): uniform in [0, 1] and standard normal, since it has no rows whose
   range it could follow;
2. the **export run** (``training_jobs/export.py``, the bundle at ``/job``) builds the bundle's
   factory, loads the global weights — the safetensors file exactly as it was anchored, read
   as tensors only —, computes the model's outputs on the probe inputs and exports it with
   ``torch.onnx.export`` at ``onnx.opset``. The bundle is code, so it runs in this node's
   sandbox, never in the node process;
3. the **audit run** (``training_jobs.audit``, node code only) refuses custom domains,
   functions, external data and text, rewrites every name, doc string and metadata entry,
   runs ``onnx.checker``, counts the global weights' tensors it finds in the model (and
   refuses one that holds none: its factory did not load them) and compares ONNX Runtime's
   outputs with the native ones within ``onnx.tolerance``. It runs without rows: the
   memorization check and the accuracy need the providers' data, which never comes here,
   and the report says so.

The node process only hashes files and reads the audit's bounded, validated report; what it
stores as the ``onnx-model`` asset is the model the audit wrote. ::

    translate = translator(runtime)
    onnx_bytes, report = translate(federation, global_weights_safetensors)

A failure is :class:`TranslationFailed` (an :class:`~kernel.errors.AgoraError`) whose detail
says why; :mod:`federation.final` then completes the federation without an ONNX model and
records the reason.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from federation import tensors
from federation.models import Federation
from federation.spec import ModelSpec, OnnxSpec
from kernel.errors import AgoraError
from kernel.storage import ObjectStore
from training_jobs import bundle as bundles
from training_jobs.failures import JobCancelled, JobFailed
from training_jobs.runner import job_dirs
from training_jobs.sandbox import Limits, Sandbox
from training_jobs.verification import (
    EXPORT_MIN_MEMORY,
    AuditReport,
    Translation,
    Verification,
)

log = logging.getLogger("agora.federation")

Translate = Callable[[Federation, bytes], tuple[bytes, dict[str, Any]]]
Part = TypeVar("Part", bound=BaseModel)
MODEL_FILE = "model.safetensors"
WEIGHTS_FILE = "weights.npz"  # the same tensors for the audit, which reads no safetensors
PROBE_UNIFORM = 32  # in [0, 1]: the range of pixels and of min-max scaled features
PROBE_NORMAL = 32  # standard normal: standardized features, and negative values
PROBES = f"{PROBE_UNIFORM} uniform in [0, 1] and {PROBE_NORMAL} standard normal, drawn by the node"
EXPORT_SECONDS = 300
MiB = 1024**2
PROBE_MAX_BYTES = 256 * MiB
DETAIL_MAX = 300
EXPORT_PREFIX = "export.py: "
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


class TranslationFailed(AgoraError):
    """The final model could not be translated to ONNX and checked; the detail says why."""

    type_slug = "onnx-translation-failed"
    status = 422
    title = "ONNX translation failed"


class _Settings(Protocol):
    @property
    def jobs_dir(self) -> Path: ...

    @property
    def sandbox_evaluator_image(self) -> str: ...


class Host(Protocol):
    """What the translation needs of the node (:class:`node.runtime.Runtime` has it)."""

    @property
    def settings(self) -> _Settings: ...

    @property
    def store(self) -> ObjectStore: ...

    def sandbox(self) -> Sandbox: ...


def translator(runtime: Host) -> Translate:
    """The function :mod:`federation.final` calls with the federation and its final weights."""

    def translate(fed: Federation, weights: bytes) -> tuple[bytes, dict[str, Any]]:
        settings = runtime.settings
        verification = Verification(runtime.sandbox(), settings.sandbox_evaluator_image or None)
        return translate_federation(fed, weights, runtime.store, verification, settings.jobs_dir)

    return translate


def translate_federation(
    fed: Federation, weights: bytes, store: ObjectStore, verification: Verification, workroot: Path
) -> tuple[bytes, dict[str, Any]]:
    """The checked ONNX model of ``fed``'s global ``weights`` and its report (see the module
    docstring); :class:`TranslationFailed` with the reason otherwise."""
    model, onnx = _options(fed)
    if not model.input_shape:
        raise TranslationFailed(
            "the federation's spec names no model.input_shape, so the node cannot draw probe inputs "
            "to translate the model to ONNX"
        )
    row_bytes = 4 * math.prod(model.input_shape)
    if min(model.input_shape) < 1 or row_bytes * (PROBE_UNIFORM + PROBE_NORMAL) > PROBE_MAX_BYTES:
        raise TranslationFailed(
            f"the model's input shape {model.input_shape} is not one the node can draw "
            f"{PROBE_UNIFORM + PROBE_NORMAL} probe inputs of (positive dimensions, at most "
            f"{PROBE_MAX_BYTES // MiB} MiB of them)"
        )
    layout = {name: (list(shape), str(dtype)) for name, (shape, dtype) in fed.layout.items()}
    decoded = tensors.decode(weights, what="the final global weights")
    if layout:
        tensors.check_update(decoded, layout, max_bytes=len(weights), what="the final global weights")
    code = b"".join(store.read(fed.code_digest))
    if bundles.digest(code) != fed.code_digest:
        raise TranslationFailed("the stored bundle does not hash to the federation's code digest")
    task = Translation(
        format="torch-state-dict",
        model_file=MODEL_FILE,
        input_shape=(1, *model.input_shape),
        dtype="float32",  # the node's recipe feeds float32 rows
        opset=onnx.opset,
        tolerance=onnx.tolerance,
        factory=model.factory,
    )
    workroot.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fl-onnx-", dir=workroot) as tmp:
        dirs = job_dirs(Path(tmp) / "run")
        bundles.unpack(code, dirs["job"])
        native = Path(tmp) / MODEL_FILE
        native.write_bytes(weights)
        probes = write_probe(task.input_shape, dirs["probe"] / "probe.npy")
        np.savez(dirs["probe"] / WEIGHTS_FILE, *decoded.values())
        lines = _Lines(fed.id)
        limits = Limits(
            cpu_seconds=EXPORT_SECONDS,
            memory_bytes=max(EXPORT_MIN_MEMORY, _memory(fed)),
            wall_seconds=EXPORT_SECONDS,
            max_output_bytes=4 * len(weights) + 64 * MiB,
        )
        never = threading.Event()
        with _failures(fed.id, lambda failed: lines.said or failed.detail):
            exported = verification.run_export(task, dirs, native, limits, lines.export, never)
        with _failures(fed.id, lambda failed: failed.detail):
            audited = verification.run_audit(
                task, dirs, exported, Limits(), lines.audit, never, with_rows=False,
                expected_weights=WEIGHTS_FILE,
            )  # fmt: skip
        onnx_bytes = audited.model.read_bytes()
    return onnx_bytes, report(audited.report, onnx_bytes, probes, fed)


def write_probe(input_shape: tuple[int, ...], path: Path) -> int:
    """The node's probe inputs (float32, one row of ``input_shape[1:]`` each); their count."""
    rng = np.random.default_rng()
    row = tuple(input_shape[1:])
    probe = np.concatenate(
        [rng.uniform(0.0, 1.0, size=(PROBE_UNIFORM, *row)), rng.standard_normal(size=(PROBE_NORMAL, *row))]
    )
    np.save(path, np.ascontiguousarray(probe, dtype=np.float32))
    return len(probe)


def report(audit: AuditReport, onnx_bytes: bytes, probes: int, fed: Federation) -> dict[str, Any]:
    """What the ``onnx-model`` asset's record says of the translation: the audit's figures."""
    return {
        "summary": (
            f"ONNX Runtime agrees with the federated model within {audit.tolerance:g} on {probes} "
            "probe inputs the node drew; accuracy not measured: the coordinator holds no rows, "
            "the providers' held-out figures are the model's"
        ),
        "opset": audit.opset,
        "max_abs_diff": audit.max_abs_diff,
        "tolerance": audit.tolerance,
        "probe_inputs": audit.probe_inputs,
        "probes": PROBES,
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "model_sha256": fed.global_sha256 or None,
        "weights_expected": audit.weights_expected,
        "weights_found": audit.weights_found,
        "onnx_accuracy": None,
        "memorization_checked": False,
        "input_name": "input",
        "output_names": list(audit.output_names),
        "onnx_version": audit.onnx_version,
        "onnxruntime_version": audit.onnxruntime_version,
        "rewritten_by_node": True,
    }


def _options(fed: Federation) -> tuple[ModelSpec, OnnxSpec]:
    spec = fed.spec if isinstance(fed.spec, dict) else {}
    return _part(ModelSpec, spec, "model"), _part(OnnxSpec, spec, "onnx")


def _part(kind: type[Part], spec: dict[str, Any], key: str) -> Part:
    try:
        return kind.model_validate(spec.get(key) or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([key, *(str(part) for part in first["loc"])])
        said = f"the federation's spec cannot be translated: {where}: {first['msg']}"
        raise TranslationFailed(said) from None


def _memory(fed: Federation) -> int:
    """The memory the providers trained the model in, which its export needs at most."""
    resources = fed.spec.get("resources") if isinstance(fed.spec, dict) else None
    memory = resources.get("memory") if isinstance(resources, dict) else None
    return int(memory) if isinstance(memory, int) else 0


@contextmanager
def _failures(federation_id: str, detail: Callable[[JobFailed], str]) -> Iterator[None]:
    """A failed run as :class:`TranslationFailed`: the node's reason and, when there is one,
    what went wrong (``detail``). The export ran the coordinator's own bundle on weights it
    holds, beside no provider's rows, so those words are the coordinator's to read."""
    try:
        yield
    except JobFailed as failed:
        log.warning(
            "federation %s: ONNX translation failed: %s; %s", federation_id, failed.reason, failed.detail
        )
        said = _CONTROL.sub(" ", (detail(failed) or "").strip())[:DETAIL_MAX].strip()
        reason = f"{failed.reason} ({said})" if said and said != failed.reason else failed.reason
        raise TranslationFailed(reason) from None
    except JobCancelled:  # nobody sets the event; a sandbox that says so anyway failed
        raise TranslationFailed("the ONNX translation was stopped") from None


class _Lines:
    """The two runs' output, into the coordinator's log; the export script's own last word
    (``export.py: …``) is kept for the reason."""

    def __init__(self, federation_id: str) -> None:
        self.federation_id = federation_id
        self.said = ""

    def export(self, line: str) -> None:
        log.info("federation %s onnx export: %s", self.federation_id, line)
        said = line.removeprefix(EXPORT_PREFIX)
        if line.startswith(EXPORT_PREFIX) and not said.startswith(("exported", "exporter warning")):
            self.said = said

    def audit(self, line: str) -> None:
        log.info("federation %s onnx audit: %s", self.federation_id, line)
