"""Where a consumer's untrusted training code runs: the sandbox boundary of compute-to-data.

One interface (:class:`Sandbox`), four implementations, one factory::

    sandbox = detect_sandbox()                  # bubblewrap, else podman, else docker
    sandbox = make_sandbox("kubernetes", volume_claim="agora-jobs", namespace="agora")
    outcome = sandbox.run(SandboxRun(...), on_output=log.append, cancel=event)
    files = collect_outputs(run.output_dir, ["model.pt", "metrics.json"], limits.max_output_bytes)

There is no "no sandbox" kind: when none works, :func:`detect_sandbox` raises
:class:`SandboxUnavailable` and the node refuses to run job code.
"""

from __future__ import annotations

from typing import Any

from .base import (
    CHANNEL_ENV,
    Channel,
    ImageRejected,
    Limits,
    Mount,
    OutputRejected,
    Sandbox,
    SandboxOutcome,
    SandboxRun,
    SandboxUnavailable,
    collect_outputs,
    ignore_output,
)
from .bubblewrap import BubblewrapSandbox
from .oci import OciSandbox

KINDS = ("bubblewrap", "podman", "docker", "kubernetes")
AUTO_ORDER = ("bubblewrap", "podman", "docker")

__all__ = [
    "AUTO_ORDER",
    "CHANNEL_ENV",
    "KINDS",
    "BubblewrapSandbox",
    "Channel",
    "ImageRejected",
    "Limits",
    "Mount",
    "OciSandbox",
    "OutputRejected",
    "Sandbox",
    "SandboxOutcome",
    "SandboxRun",
    "SandboxUnavailable",
    "collect_outputs",
    "detect_sandbox",
    "ignore_output",
    "make_sandbox",
]


def make_sandbox(kind: str, **opts: Any) -> Sandbox:
    """A sandbox of ``kind`` ("bubblewrap", "podman", "docker", "kubernetes"), not yet checked.

    ``opts`` go to the implementation: ``protected`` (paths no bind may contain) for
    bubblewrap; ``binary``, ``cpus`` for podman/docker; ``volume_claim``, ``namespace``,
    ``host``… for Kubernetes (see each class). Raises :class:`SandboxUnavailable` for an
    unknown kind.
    """
    if kind == "bubblewrap":
        return BubblewrapSandbox(**opts)
    if kind in ("podman", "docker"):
        return OciSandbox(opts.pop("binary", kind), **opts)
    if kind == "kubernetes":
        from .kubernetes import KubernetesSandbox  # the client library is heavy: only when asked

        return KubernetesSandbox(**opts)
    raise SandboxUnavailable(f"unknown sandbox kind {kind!r}; expected one of {', '.join(KINDS)}")


def detect_sandbox(preferred: str = "auto", **opts: Any) -> Sandbox:
    """The first sandbox that works here: ``preferred``, or for "auto" bubblewrap, podman, docker.

    Each candidate is probed with :meth:`Sandbox.check`. Raises :class:`SandboxUnavailable`
    listing every kind tried and why it failed; never falls back to running unsandboxed.
    ``opts`` are given to each candidate that accepts them (``protected`` only to bubblewrap).
    """
    kinds = AUTO_ORDER if preferred == "auto" else (preferred,)
    failures: list[str] = []
    for kind in kinds:
        kind_opts = dict(opts)
        if kind != "bubblewrap":
            kind_opts.pop("protected", None)
        try:
            sandbox = make_sandbox(kind, **kind_opts)
            sandbox.check()
        except SandboxUnavailable as exc:
            failures.append(f"{kind}: {exc.detail}")
            continue
        return sandbox
    raise SandboxUnavailable(
        "no sandbox can run job code on this node, so jobs are refused. Tried: " + "; ".join(failures)
    )
