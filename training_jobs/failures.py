"""Why a job ended badly, in the node's own words.

A job's reason is read by its consumer, so it is written by the node and never quotes what
the job's code produced (its output, its files, an exception raised while loading its
model): that would be a channel for the provider's data. What the provider needs to debug
goes with the failure as ``detail``, which reaches only the provider's log. Failures caused
by the provider's own data or node (:class:`ProviderFault`) give the consumer's agreement
use back.
"""

from __future__ import annotations

from training_jobs.sandbox import Limits, SandboxOutcome
from training_jobs.sandbox.base import fmt_bytes

MAX_REASON = 300


class JobFailed(Exception):
    """The job cannot go on. ``reason`` is the consumer's (node-written, bounded); ``detail``
    is for the provider's log only."""

    provider_fault = False

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason[:MAX_REASON]
        self.detail = detail


class ProviderFault(JobFailed):
    """The provider's data or node failed the job, not the consumer's code: the use is given back."""

    provider_fault = True


class JobCancelled(Exception):
    """The consumer (or the provider) asked for the job to stop."""


def ended(outcome: SandboxOutcome, limits: Limits) -> str:
    """How a sandbox run ended, from the outcome's machine-readable fields alone.

    The implementations' own sentences may carry a line the job printed (a failed setup
    quotes the first line of the log), so they are not passed on.
    """
    stopped = {
        "wall": f"was stopped: wall time limit of {limits.wall_seconds:g} s exceeded",
        "cpu": f"was stopped: CPU time limit of {limits.cpu_seconds} s exceeded",
        "memory": f"was stopped: memory limit of {fmt_bytes(limits.memory_bytes)} exceeded",
        "output": f"was stopped: output exceeded {fmt_bytes(limits.max_output_bytes)} "
        f"or {limits.max_output_files} files",
        "processes": f"was stopped: process limit of {limits.max_processes} reached",
        "cancelled": "was cancelled",
    }
    if outcome.killed_by is not None:
        return stopped.get(outcome.killed_by, "was stopped by the sandbox")
    code = outcome.exit_code
    if code is None:
        return "ended without an exit status"
    if code > 128:
        return f"was killed by signal {code - 128}"
    said = f"exited with status {code}"
    if f"process limit of {limits.max_processes} reached" in outcome.reason:
        said += f" (process limit of {limits.max_processes} reached)"
    return said


# what collect_outputs found wrong with a declared file, said without its details (a
# symlink's target, for one, is the job's choice)
_OUTPUT_PROBLEMS = (
    ("was not produced", "was not produced"),
    ("symlink", "is a symlink"),
    ("hard link", "is a hard link"),
    ("not a regular file", "is not a regular file"),
    ("not a directory", "lies under something that is not a directory"),
    ("exceed", "exceeds the output cap"),
)


def output_problem(detail: str) -> str:
    """The node's words for why a declared output cannot leave (``detail`` is
    :class:`~training_jobs.sandbox.OutputRejected`'s)."""
    return next((said for phrase, said in _OUTPUT_PROBLEMS if phrase in detail), "cannot be taken out")
