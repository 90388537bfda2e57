"""What of a completed job leaves for its consumer, and what stays with the provider.

The ONNX model always leaves: the node rewrote it and checked it for stored rows. The native
model (a pickle or TorchScript file) is the consumer's code's own output, which the node can
neither rewrite nor check, so it leaves only when three things hold: the job asked for it
(``output.release_native``), the offering's compute terms allow it
(``allow_native_release``), and the agreed policy would also permit a download (decided when
the job was accepted). :func:`native_release_refusal` is the check at submission; the runner
asks :func:`native_release` again at completion, with the terms as they are then.
"""

from __future__ import annotations

from typing import Any

from marketplace.terms import ComputeTerms
from training_jobs.spec import JobSpec

NOT_ALLOWED = (
    "the offering's compute terms do not allow releasing a native model (allow_native_release); "
    "the node releases only the ONNX model it rewrote and checked"
)


def native_release_refusal(spec: JobSpec, terms: ComputeTerms) -> str | None:
    """Why a job asking for its native model is refused at submission, or ``None``."""
    if spec.output.release_native and not terms.allow_native_release:
        return NOT_ALLOWED
    return None


def native_release(spec: JobSpec, accepted: dict[str, Any], terms: ComputeTerms) -> tuple[bool, str]:
    """Whether the native model is released, and why; ``accepted`` is the job's result as
    recorded at submission (``release_native`` and its reason from the agreed policy)."""
    if not spec.output.release_native:
        return False, "the job did not ask for it (output.release_native)"
    if not terms.allow_native_release:
        return False, NOT_ALLOWED
    if not accepted.get("release_native"):
        why = accepted.get("release_native_reason") or "the agreed policy does not permit a download"
        return False, str(why)
    return True, "the offering allows native models and the agreed policy permits a download"
