"""An offering's compute terms: what the consumer of a job on it may receive.

They live on the offering (``Offering.compute_terms``, set by a manifest or the API) and are
read by the provider's node whenever it decides what leaves a job:

* ``job_logs`` — how much of the job's own stdout/stderr (and anything else consumer code
  printed, in any sandbox) the consumer may read: ``none`` (default), ``tail`` (the last
  :data:`TAIL_LINES` lines, each capped) or ``full`` (capped per line and in total). The
  node's own stage lines and the progress always reach the consumer; the provider always
  reads everything.
* ``allow_native_release`` — whether a job may ask for its native model (a pickle or
  TorchScript file the node cannot rewrite) to be released to the consumer; default no.
* ``allow_stored_examples`` — whether a model may hold training rows (nearest neighbours,
  support vectors, a memorised row in its weights); default no: such a model is refused.

They are the offering's (this package's); the job machinery in ``training_jobs`` reads them.
:class:`ComputeTermFields` declares them as flat fields of the offering metadata and of a
manifest's offering entry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

JobLogs = Literal["none", "tail", "full"]
TAIL_LINES = 50
MAX_LINE_CHARS = 500
MAX_RELEASED_LOG_CHARS = 256 * 1024


class ComputeTermFields(BaseModel):
    """The compute terms as top-level fields of an offering's API metadata or manifest entry."""

    job_logs: JobLogs = Field(
        default="none",
        description="compute jobs: how much of a job's own output its consumer may read "
        "(none; tail: its last lines; full: all of it, capped)",
    )
    allow_native_release: StrictBool = Field(
        default=False, description="compute jobs: a job may release its native (non-ONNX) model"
    )
    allow_stored_examples: StrictBool = Field(
        default=False, description="compute jobs: a released model may contain training rows"
    )

    def compute_terms(self) -> ComputeTerms:
        """The three fields as the terms the provider's node decides by."""
        return ComputeTerms.model_validate(self.model_dump(include=set(ComputeTermFields.model_fields)))


class ComputeTerms(ComputeTermFields):
    """The terms themselves, as kept on an offering row and read by the provider's node."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> ComputeTerms:
        """The terms kept on an offering row (missing keys take the defaults)."""
        return cls.model_validate(stored or {})
