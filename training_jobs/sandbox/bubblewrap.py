"""The default sandbox: bubblewrap (``bwrap``) around the node's own Python, no daemon needed.

What each guarantee rests on:

* **Isolation** — new user, PID, network, IPC, UTS, mount and cgroup namespaces
  (``--unshare-all --unshare-user``; never ``--share-net``: only the sandbox's own loopback
  exists). Nested user namespaces are disabled. The job runs as uid/gid 65534 with no
  capabilities, in a new session (no terminal injection), and dies with the node. On a root
  node the run is staged (:mod:`.staging`): the job's processes are host uid 65534, not
  root. ``check()`` says how this host runs jobs (:attr:`BubblewrapSandbox.isolation`) and
  falls back, with the reason logged, where staging does not work.
* **What is visible** — the world :mod:`.bwrap_view` builds: ``/usr``, a synthetic
  ``/etc``, the interpreter, a private ``/proc``, a minimal ``/dev``, tmpfs ``/tmp``, the
  run's mounts and ``/out``. ``bwrap`` gets its options through a memfd and an empty
  environment, so ``/proc/1/cmdline`` and ``/proc/1/environ`` (bubblewrap's own process,
  inside) name no host path and no variable of the node; no descriptor of the node reaches
  the job. On a root node the run's mounts are overlays named by a throw-away stage
  directory, so ``/proc/self/mountinfo`` shows no host path of the data either.
  What stays visible: the kernel (``uname``, ``/proc/version``) and the host's hardware and
  load (``/proc/cpuinfo``, ``meminfo``, ``stat``, ``loadavg``, ``uptime``); the host's
  ``/usr`` and the node's Python installation, read-only at their host paths (a venv only
  works where it was made: e.g. ``/work/main/.venv`` and ``/root/.pyenv/versions/3.11.7``
  appear as mount points); on a node that does not stage (not root, or staging failed) the
  host paths of the run's mounts in ``mountinfo`` (the node's jobs directory and this job's
  name in it, never another job's) and a job uid that is the node's own.
* **Limits** — a cgroup per run (v2, or v1 ``memory`` + ``pids``) when the host lets the
  node create one: memory (no swap) and process count, and the OOM counter tells a memory
  kill apart. Always rlimits in the child before ``exec``: ``RLIMIT_CPU`` (SIGXCPU, then
  SIGKILL 5 s later), ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (one file ≤ the output cap),
  ``RLIMIT_CORE`` 0, and ``RLIMIT_NPROC`` when no pids cgroup is available. The kernel
  exempts root's uid from ``RLIMIT_NPROC``, so a job that would run as host root without a
  pids cgroup is refused (``SandboxUnavailable``) rather than leave fork bombs uncapped. The total of
  ``/out`` is polled every 0.1 s (a single file is capped exactly by ``RLIMIT_FSIZE``), and
  with a cgroup the job's total CPU time is polled too. Wall time, cancel and any breach
  kill ``bwrap``'s process group, which takes the PID namespace (and so every process of the
  job) down with it, and then the cgroup's tasks.

``RLIMIT_AS`` counts reserved virtual memory, which torch and threaded libraries reserve
generously (``import torch`` alone reserves ~640 MiB). With a memory cgroup, the cgroup
enforces ``memory_bytes`` on real usage and the address-space cap is twice that, as a
backstop; without one, the address-space cap *is* ``memory_bytes`` (2 GiB still imports
and runs torch) and an allocation over it fails with ``MemoryError``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from . import staging
from .base import (
    Limits,
    Mount,
    OutputCallback,
    Sandbox,
    SandboxOutcome,
    SandboxRun,
    SandboxUnavailable,
    cpu_reason,
    exit_reason,
    fmt_bytes,
    ignore_output,
    sanitize_name,
    supervise,
)
from .bwrap_view import SandboxView, etc_files, memfd
from .cgroups import Cgroup, create_cgroup
from .staging import Stage, StagingFailed

log = logging.getLogger("agora.sandbox")
# How a root node runs a job, best first (check() falls back and records why): staged with
# overlays (unprivileged host uid, no host path of the data visible), staged with binds only
# (unprivileged host uid), plain (the job's host uid is the node's).
STAGED_MODES = ("staged", "staged-binds")
MODE_NOTES = {
    "staged": "the job runs as host uid 65534; its data's host paths are hidden behind overlays",
    "staged-binds": "the job runs as host uid 65534; its mounts show their host paths",
    "plain": "the job's host uid is the node's own; its mounts show their host paths",
}
CPU_GRACE_SECONDS = 5
NO_PROCESS_CAP = (
    "bubblewrap: the node runs as root and cannot create a pids cgroup here, and the kernel "
    "exempts root from RLIMIT_NPROC, so a fork bomb could not be contained; give the node a "
    "writable (delegated) cgroup or run it as an unprivileged user"
)
# -- the sandbox ----------------------------------------------------------------------------


class BubblewrapSandbox(Sandbox):
    """Runs jobs under ``bwrap`` with the node's own interpreter (see the module docstring).

    ``protected`` are host paths (the node's home) that no bind may contain; ``use_cgroups``
    False forces the rlimit-only mode. A job running as host root is exempt from
    ``RLIMIT_NPROC``, so then this sandbox needs a pids cgroup and reports itself unavailable
    without one, unless ``allow_uncapped_processes`` (tests of the fallback).
    ``stage_on_root`` False keeps a root node's jobs unstaged (their host uid is root).
    """

    kind = "bubblewrap"

    def __init__(
        self,
        *,
        bwrap: str | None = None,
        python: str | None = None,
        protected: Sequence[Path | str] = (),
        use_cgroups: bool = True,
        allow_uncapped_processes: bool = False,
        stage_on_root: bool = True,
    ) -> None:
        self.bwrap = shutil.which(bwrap or "bwrap") or bwrap or "bwrap"
        self.python = python or sys.executable
        self.view = SandboxView(self.bwrap, self.python, [os.path.realpath(p) for p in protected])
        self.use_cgroups = use_cgroups
        self.allow_uncapped_processes = allow_uncapped_processes
        # on a root node: stage the run and drop to an unprivileged uid (see .staging), with
        # overlays hiding the data's host paths; check() falls back step by step, and says why
        self._modes = [m for m in STAGED_MODES if stage_on_root and os.getuid() == 0] + ["plain"]
        self.isolation = {"job_host_uid": os.getuid(), "mount_sources": "visible", "why": "not checked yet"}
        self._checked = False
        self._lock = threading.Lock()

    # -- probing ---------------------------------------------------------------------------

    def check(self) -> None:
        """Run ``python -S -c pass`` in a real sandbox once; raise SandboxUnavailable if it fails."""
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            if not shutil.which(self.bwrap):
                raise SandboxUnavailable(f"bubblewrap: {self.bwrap!r} is not installed")
            if self._modes[0] != "plain":
                staging.sweep()
            failures: list[str] = []
            while True:
                why = self._probe()
                if why is None:
                    break
                failures.append(f"{self._modes[0]}: {why}")
                if len(self._modes) == 1:
                    raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {why}")
                self._modes.pop(0)
            self.isolation = {
                "job_host_uid": staging.HOST_UID if self._modes[0] != "plain" else os.getuid(),
                "mount_sources": "hidden" if self._modes[0] == "staged" else "visible",
                "why": "; ".join(failures) or MODE_NOTES[self._modes[0]],
            }
            if failures:
                log.warning("bubblewrap sandbox: %s", self.isolation["why"])
            if self._needs_pids_cgroup():
                group = None
                if self.use_cgroups:
                    group = create_cgroup(f"probe-{uuid.uuid4().hex[:12]}", Limits().memory_bytes, 1)
                if group:
                    group.remove()
                if not (group and group.pids_dir):
                    raise SandboxUnavailable(NO_PROCESS_CAP)
            self._checked = True

    def _probe(self) -> str | None:
        """Why a run in the first remaining mode fails here, or None: the probe reads a
        read-only mount and writes ``/out``, as every job does."""
        with tempfile.TemporaryDirectory(prefix="agora-bwrap-probe-") as tmp:
            data, out = Path(tmp) / "data", Path(tmp) / "out"
            data.mkdir()
            out.mkdir()
            (data / "probe").write_text("ok")
            code = "open('/out/probe', 'w').write(open('/probe/probe').read())"
            probe = SandboxRun(
                command=["python", "-S", "-c", code],
                mounts=[Mount(data, "/probe")],
                output_dir=out,
                workdir="/probe",
                limits=Limits(wall_seconds=30),
            )
            lines: list[str] = []
            try:
                outcome = self._run(probe, lines.append, None, cgroups=False, trusted=True)
            except StagingFailed as exc:
                return str(exc)
            if not outcome.ok:
                return "; ".join(lines[-3:]) or outcome.reason
            if not (out / "probe").is_file() or (out / "probe").read_text() != "ok":
                return "the probe's output did not arrive in the output directory"
        return None

    def _job_uid(self) -> int:
        """The host uid the job's processes run as."""
        return staging.HOST_UID if self._modes[0] != "plain" else os.getuid()

    def _needs_pids_cgroup(self) -> bool:
        return self._job_uid() == 0 and not self.allow_uncapped_processes

    # -- the command line -----------------------------------------------------------------

    def build_command(
        self, run: SandboxRun, etc_fds: dict[str, int], stage: Stage | None = None
    ) -> list[str]:
        """The ``bwrap`` argv for ``run`` (see :meth:`SandboxView.command`)."""
        return self.view.command(run, etc_fds, stage)

    def _stage(self, run: SandboxRun) -> Stage | None:
        """The stage of a run on a root node (None in plain mode); see :mod:`.staging`."""
        if self._modes[0] == "plain":
            return None
        return staging.plan(
            self.view.interpreter_paths(),
            [self.view.mount_source(m)[1] for m in run.mounts],
            self.view.output_source(run),
            overlay=self._modes[0] == "staged",
        )

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        run: SandboxRun,
        *,
        on_output: OutputCallback = ignore_output,
        cancel: threading.Event | None = None,
    ) -> SandboxOutcome:
        """Run ``run`` in a fresh bubblewrap sandbox; see :meth:`Sandbox.run`."""
        self.check()
        try:
            return self._run(run, on_output, cancel, cgroups=self.use_cgroups)
        except StagingFailed as exc:  # it worked when checked: the host changed since
            raise SandboxUnavailable(f"bubblewrap: preparing the run failed: {exc}") from None

    def _run(
        self,
        run: SandboxRun,
        on_output: OutputCallback,
        cancel: threading.Event | None,
        *,
        cgroups: bool,
        trusted: bool = False,
    ) -> SandboxOutcome:
        lim = run.limits
        group = None
        if cgroups:
            name = f"{sanitize_name(run.name, 40)}-{uuid.uuid4().hex[:12]}"
            group = create_cgroup(name, lim.memory_bytes, lim.max_processes)
        if not trusted and self._needs_pids_cgroup() and not (group and group.pids_dir):
            if group:
                group.remove()
            raise SandboxUnavailable(NO_PROCESS_CAP)
        stage: Stage | None = None
        status_read, status_write = os.pipe()
        try:
            stage = self._stage(run)
            with etc_files() as etc_fds:
                full = self.build_command(run, etc_fds, stage)
                split = full.index("--")
                # the options (every host path) travel in a memfd, never in a command line
                args_fd = memfd("bwrap-args", b"".join(a.encode() + b"\0" for a in full[1:split]))
                argv = [self.bwrap, "--args", str(args_fd), "--json-status-fd", str(status_write)]
                try:
                    fds = [*etc_fds.values(), args_fd, status_write]
                    if run.channel is not None:  # the process's ends of its pipes, at their numbers
                        fds += run.channel.job_fds()
                    proc = self._spawn([*argv, *full[split:]], fds, run, group, stage)
                finally:
                    os.close(args_fd)
                    os.close(status_write)
                    status_write = -1
                    if run.channel is not None:  # the node then reads EOF when the process ends
                        run.channel.close_job_ends()
            return self._supervise(proc, run, group, on_output, cancel, status_read)
        finally:
            for fd in (status_read, status_write):
                if fd >= 0:
                    os.close(fd)
            if group:
                group.kill()
                group.remove()
            if stage:
                stage.cleanup()

    def _spawn(
        self, argv: list[str], fds: list[int], run: SandboxRun, group: Cgroup | None, stage: Stage | None
    ) -> subprocess.Popen[bytes]:
        lim = run.limits
        memory_by_cgroup = bool(group and group.memory_dir)
        address_space = lim.memory_bytes * 2 if memory_by_cgroup else lim.memory_bytes
        rlimits = [
            (resource.RLIMIT_CPU, lim.cpu_seconds, lim.cpu_seconds + CPU_GRACE_SECONDS),
            (resource.RLIMIT_AS, address_space, address_space),
            (resource.RLIMIT_FSIZE, lim.max_output_bytes, lim.max_output_bytes),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        job_uid = self._job_uid()
        if not (group and group.pids_dir) and job_uid != 0:
            # Counted per real uid across the host, so leave room for that uid's other tasks.
            own = _tasks_of_uid(job_uid)
            rlimits.append((resource.RLIMIT_NPROC, lim.max_processes + own, lim.max_processes + own))
        procs_files = [os.path.join(d, "cgroup.procs") for d in (group.dirs if group else [])]
        report_read, report_write = os.pipe()
        enter_stage = staging.enterer(stage, report_write) if stage else None

        def enter_limits() -> None:  # runs in the child between fork and exec: no locks, no imports
            for path in procs_files:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            for which, soft, hard in rlimits:
                resource.setrlimit(which, (soft, hard))
            if enter_stage is not None:
                enter_stage()

        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=fds,
                start_new_session=True,
                preexec_fn=enter_limits,
                env={},  # bwrap's own environment, readable in the sandbox as /proc/1/environ
            )
        except subprocess.SubprocessError:
            os.close(report_write)
            report_write = -1
            raise StagingFailed(os.read(report_read, 4096).decode(errors="replace") or "unknown") from None
        finally:
            os.close(report_read)
            if report_write >= 0:
                os.close(report_write)

    def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        run: SandboxRun,
        group: Cgroup | None,
        on_output: OutputCallback,
        cancel: threading.Event | None,
        status: int,
    ) -> SandboxOutcome:
        lim = run.limits
        done = supervise(
            proc, run, on_output, cancel, lambda: self._kill(proc, group), self._watch(group, lim)
        )
        if group:
            group.kill()  # nothing may outlive the run, even if the namespace teardown lagged
        exit_code = done.exit_code
        # Without a cgroup the job's own usage is unknown: bwrap does not reap its PID 1.
        cpu = group.cpu_seconds() if group else None
        peak = group.peak_memory() if group else None
        killed_by, reason = done.killed_by, done.reason
        if not killed_by:
            # bwrap reports an exit code only for a command it got to run: else setup failed
            started = b'"exit-code"' in _read_all(status)
            killed_by, reason = self._classify(exit_code, cpu, group, done.tail, lim, started)
        return SandboxOutcome(
            ok=exit_code == 0 and not killed_by,
            exit_code=exit_code,
            reason=reason,
            wall_seconds=done.wall_seconds,
            cpu_seconds=cpu,
            peak_memory_bytes=peak,
            killed_by=killed_by,
            log_truncated=done.log_truncated,
        )

    @staticmethod
    def _watch(group: Cgroup | None, lim: Limits) -> Callable[[], tuple[str, str] | None] | None:
        """The total-CPU check a cgroup allows (``RLIMIT_CPU`` alone caps each process only)."""
        if not (group and group.cpu_dir):
            return None

        def check() -> tuple[str, str] | None:
            if (group.cpu_seconds() or 0.0) > lim.cpu_seconds:
                return "cpu", cpu_reason(lim.cpu_seconds)
            return None

        return check

    @staticmethod
    def _classify(
        exit_code: int | None,
        cpu: float | None,
        group: Cgroup | None,
        tail: list[str],
        lim: Limits,
        started: bool,
    ) -> tuple[str | None, str]:
        """(killed_by, reason) for a job that ended without the supervisor stopping it. Only
        a sandbox that never started its command (``started`` False) failed in setup: after
        that, a line saying ``bwrap: …`` is the job's own."""
        memory = f"killed: memory limit of {fmt_bytes(lim.memory_bytes)} exceeded"
        if group and group.oom_killed():
            return "memory", memory
        if exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL) and (
            exit_code == 128 + signal.SIGXCPU or (cpu is not None and cpu >= lim.cpu_seconds)
        ):
            return "cpu", cpu_reason(lim.cpu_seconds)
        if exit_code == 0:
            return None, exit_reason(0)
        if not started and tail and tail[0].startswith("bwrap: ") and exit_code == 1:
            return None, f"sandbox setup failed: {tail[0].removeprefix('bwrap: ')}"
        if any("MemoryError" in line for line in tail):
            return "memory", f"{memory} (allocation refused, {exit_reason(exit_code)})"
        if group and group.pids_limit_hit():
            return None, f"{exit_reason(exit_code)} (process limit of {lim.max_processes} reached)"
        return None, exit_reason(exit_code)

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes], group: Cgroup | None) -> None:
        """SIGKILL bwrap's process group: the sandbox's PID 1 dies with it, and so does the namespace."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if group:
            group.kill()


def _read_all(fd: int) -> bytes:
    """What a pipe holds now, without waiting for its writer."""
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _tasks_of_uid(uid: int) -> int:
    """Tasks (threads included: RLIMIT_NPROC counts them) that ``uid`` runs now."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry.path).st_uid == uid:
                count += len(os.listdir(os.path.join(entry.path, "task")))
    return count
