"""Podman or Docker: the job runs in an OCI container pinned by digest.

One class, parametrised by the CLI binary (``podman`` or ``docker``); both accept the same
``run`` flags. Each guarantee is a flag of :meth:`OciSandbox.build_command`:

* no network (``--network none``), read-only root (``--read-only``), no capabilities
  (``--cap-drop ALL``), no privilege gain through setuid files
  (``--security-opt no-new-privileges``), unprivileged user (``--user 65534:65534``);
* limits: ``--pids-limit``, ``--memory`` with ``--memory-swap`` equal (no swap),
  ``--cpus``, ``--ulimit cpu/fsize/core``, a size-capped ``/tmp`` tmpfs (``nosuid,nodev``;
  not ``noexec``, which breaks Python packages that load generated code from ``/tmp``);
* mounts read-only (``-v src:target:ro``), only ``/out`` writable;
* the image must be ``name@sha256:<digest>``: a tag can be repointed after review.

Wall time, cancel and a full ``/out`` end the container with ``<bin> kill`` and the CLI's
process group with SIGKILL; ``<bin> rm -f`` removes what is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import uuid
from pathlib import Path, PurePosixPath

from kernel.errors import ConfigurationError

from .base import (
    OutputCallback,
    Sandbox,
    SandboxOutcome,
    SandboxRun,
    SandboxUnavailable,
    exit_reason,
    fmt_bytes,
    ignore_output,
    refuse_channel,
    require_digest,
    sanitize_name,
    supervise,
)

SANDBOX_USER = "65534:65534"
CLI_TIMEOUT = 30
JOB_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class OciSandbox(Sandbox):
    """Runs jobs with ``podman run`` or ``docker run`` (see the module docstring)."""

    def __init__(self, binary: str = "podman", *, cpus: float | None = None) -> None:
        self.binary = binary
        self.kind = os.path.basename(binary)
        self.cpus = cpus if cpus is not None else float(os.cpu_count() or 1)
        self._checked = False

    def check(self) -> None:
        """``<bin> info`` must succeed (the binary exists and its engine answers); cached."""
        if self._checked:
            return
        path = shutil.which(self.binary)
        if not path:
            raise SandboxUnavailable(f"{self.kind}: {self.binary!r} is not installed")
        try:
            result = subprocess.run(
                [path, "info"], capture_output=True, text=True, timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            why = f"`{self.binary} info` did not answer in {CLI_TIMEOUT} s"
            raise SandboxUnavailable(f"{self.kind}: {why}") from None
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            why = lines[-1] if lines else f"exit status {result.returncode}"
            raise SandboxUnavailable(f"{self.kind}: `{self.binary} info` failed: {why}")
        self._checked = True

    @staticmethod
    def _volume(source: Path, target: str, mode: str) -> list[str]:
        src = os.path.realpath(source)
        if ":" in src or ":" in target or "," in src:
            raise ConfigurationError(f"cannot mount {src!r}: ':' and ',' are not allowed in container paths")
        return ["-v", f"{src}:{target}:{mode}"]

    @staticmethod
    def _mount_target(target: str) -> str:
        p = PurePosixPath(target)
        if not p.is_absolute() or ".." in p.parts or str(p) in ("/", "/out", "/tmp", "/proc", "/dev"):
            raise ConfigurationError(f"mount target {target!r} is not allowed")
        return str(p)

    def container_name(self, run: SandboxRun) -> str:
        """The container's name: the run's name, sanitised (the caller makes it unique)."""
        return sanitize_name(run.name, 63)

    def build_command(self, run: SandboxRun, *, name: str | None = None) -> list[str]:
        """The full ``<bin> run …`` argv for ``run``; raises ImageRejected for an unpinned image."""
        image = require_digest(run.image)
        lim = run.limits
        args = [
            self.binary, "run", "--rm",
            "--name", name or self.container_name(run),
            "--label", f"agora.job={sanitize_name(run.name, 63)}",
            "--network", "none",
            "--read-only",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--user", SANDBOX_USER,
            "--pids-limit", str(lim.max_processes),
            "--memory", str(lim.memory_bytes),
            "--memory-swap", str(lim.memory_bytes),
            "--cpus", f"{self.cpus:g}",
            "--ulimit", f"cpu={lim.cpu_seconds}:{lim.cpu_seconds + 5}",
            "--ulimit", f"fsize={lim.max_output_bytes}:{lim.max_output_bytes}",
            "--ulimit", "core=0:0",
            "--tmpfs", f"/tmp:rw,nosuid,nodev,size={lim.tmp_bytes}",
            "--ipc", "private",
        ]  # fmt: skip
        for mount in run.mounts:
            args += self._volume(mount.source, self._mount_target(mount.target), "ro")
        args += self._volume(run.output_dir, "/out", "rw")
        args += ["--workdir", run.workdir]
        env = {**JOB_ENV, **run.env}
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        return [*args, image, *run.command]

    def run(
        self,
        run: SandboxRun,
        *,
        on_output: OutputCallback = ignore_output,
        cancel: threading.Event | None = None,
    ) -> SandboxOutcome:
        """Run ``run`` in a fresh container; see :meth:`Sandbox.run`. No channel runs."""
        refuse_channel(self.kind, run)
        self.check()
        name = f"{sanitize_name(run.name, 50)}-{uuid.uuid4().hex[:12]}"
        argv = self.build_command(run, name=name)
        if not run.output_dir.is_dir():
            raise ConfigurationError(f"output directory {str(run.output_dir)!r} does not exist")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def kill() -> None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run([self.binary, "kill", name], capture_output=True, timeout=CLI_TIMEOUT)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

        try:
            done = supervise(proc, run, on_output, cancel, kill)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run([self.binary, "rm", "-f", name], capture_output=True, timeout=CLI_TIMEOUT)
        killed_by, reason, code = done.killed_by, done.reason, done.exit_code
        if not killed_by:
            if code in (125, 126, 127):
                last = done.tail[-1] if done.tail else ""
                reason = f"the container could not be started (status {code}): {last}".rstrip(": ")
            elif code == 137:
                reason = (
                    f"killed by signal 9 (the memory limit of {fmt_bytes(run.limits.memory_bytes)} "
                    "is the usual cause)"
                )
            else:
                reason = exit_reason(code)
        return SandboxOutcome(
            ok=code == 0 and not killed_by,
            exit_code=code,
            reason=reason,
            wall_seconds=done.wall_seconds,
            killed_by=killed_by,
            log_truncated=done.log_truncated,
        )
