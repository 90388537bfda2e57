"""The default sandbox: bubblewrap (``bwrap``) around the node's own Python, no daemon needed.

What each guarantee rests on:

* **Isolation** — new user, PID, network, IPC, UTS, mount and cgroup namespaces
  (``--unshare-all --unshare-user``; never ``--share-net``: only the sandbox's own loopback
  exists). Nested user namespaces are disabled. The job runs as uid/gid 65534 with no
  capabilities, in a new session (no terminal injection), and dies with the node.
* **What is visible** — a read-only root assembled from ``/usr`` (and the merged-usr
  symlinks or directories ``/bin``, ``/sbin``, ``/lib``, ``/lib64``), a synthetic ``/etc``
  (passwd/group/hosts/nsswitch written by us, plus ``ld.so.cache`` and ``localtime``), the
  interpreter's prefixes (``sys.prefix``, ``sys.base_prefix`` and their real paths — a
  venv's ``python`` is a symlink into e.g. ``/root/.pyenv``), a private ``/proc``, a minimal
  ``/dev``, size-capped tmpfs ``/tmp`` and ``/dev/shm``, the run's read-only mounts and the
  writable ``/out``. Nothing else: ``/``, ``/root``, ``/home``, ``/work`` or the node's data
  directory are never bound wholesale, and a bind that would contain one of the node's
  ``protected`` paths (its home: keystore, database, token key, other jobs) is refused.
* **Limits** — a cgroup per run (v2, or v1 ``memory`` + ``pids``) when the host lets the
  node create one: memory (no swap) and process count, and the OOM counter tells a memory
  kill apart. Always rlimits in the child before ``exec``: ``RLIMIT_CPU`` (SIGXCPU, then
  SIGKILL 5 s later), ``RLIMIT_AS``, ``RLIMIT_FSIZE`` (one file ≤ the output cap),
  ``RLIMIT_CORE`` 0, and ``RLIMIT_NPROC`` when no pids cgroup is available. The kernel
  exempts root's uid from ``RLIMIT_NPROC``, so a root node without a pids cgroup refuses to
  run jobs (``SandboxUnavailable``) rather than leave fork bombs uncapped. The total of
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
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from kernel.errors import ConfigurationError

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
from .cgroups import Cgroup, create_cgroup

SANDBOX_UID = 65534
CPU_GRACE_SECONDS = 5
# Host directories never bound wholesale, whatever a caller asks.
BROAD_PATHS = frozenset(
    {"/", "/root", "/home", "/work", "/etc", "/var", "/tmp", "/run", "/proc", "/sys", "/dev", "/boot", "/srv"}
    | {"/mnt", "/media", "/opt"}
)
RESERVED_TARGETS = ("/", "/proc", "/dev", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/tmp", "/out")
NO_PROCESS_CAP = (
    "bubblewrap: the node runs as root and cannot create a pids cgroup here, and the kernel "
    "exempts root from RLIMIT_NPROC, so a fork bomb could not be contained; give the node a "
    "writable (delegated) cgroup or run it as an unprivileged user"
)
_ETC_FILES = {
    "/etc/passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"
    ),
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


# -- the sandbox ----------------------------------------------------------------------------


def _resolved(path: Path | str) -> str:
    return os.path.realpath(path)


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


class BubblewrapSandbox(Sandbox):
    """Runs jobs under ``bwrap`` with the node's own interpreter (see the module docstring).

    ``protected`` are host paths (the node's home) that no bind may contain; ``use_cgroups``
    False forces the rlimit-only mode. A node running as root is exempt from
    ``RLIMIT_NPROC``, so as root this sandbox needs a pids cgroup and reports itself
    unavailable without one, unless ``allow_uncapped_processes`` (tests of the fallback).
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
    ) -> None:
        self.bwrap = bwrap or shutil.which("bwrap") or "bwrap"
        self.python = python or sys.executable
        self.protected = [_resolved(p) for p in protected]
        self.use_cgroups = use_cgroups
        self.allow_uncapped_processes = allow_uncapped_processes
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
            with tempfile.TemporaryDirectory(prefix="agora-bwrap-probe-") as out:
                lines: list[str] = []
                probe = SandboxRun(
                    command=["python", "-S", "-c", "pass"],
                    mounts=[],
                    output_dir=Path(out),
                    workdir="/job",
                    limits=Limits(wall_seconds=30),
                )
                outcome = self._run(probe, lines.append, None, cgroups=False, trusted=True)
            if not outcome.ok:
                detail = "; ".join(lines[-3:]) or outcome.reason
                raise SandboxUnavailable(f"bubblewrap cannot create a sandbox here: {detail}")
            if self._needs_pids_cgroup():
                group = None
                if self.use_cgroups:
                    group = create_cgroup(f"probe-{uuid.uuid4().hex[:12]}", Limits().memory_bytes, 1)
                if group:
                    group.remove()
                if not (group and group.pids_dir):
                    raise SandboxUnavailable(NO_PROCESS_CAP)
            self._checked = True

    def _needs_pids_cgroup(self) -> bool:
        return os.getuid() == 0 and not self.allow_uncapped_processes

    # -- the command line -----------------------------------------------------------------

    def _interpreter_paths(self) -> list[str]:
        """Host directories the interpreter needs, outermost first, none under /usr."""
        candidates = {
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(self.python)),
        }
        paths = {os.path.abspath(p) for p in candidates} | {_resolved(p) for p in candidates}
        paths.add(os.path.dirname(os.path.dirname(_resolved(self.python))))
        kept: list[str] = []
        for p in sorted(paths, key=len):
            if _contains("/usr", p) or any(_contains(k, p) for k in kept):
                continue
            kept.append(p)
        return kept

    def _check_source(self, source: str, what: str) -> None:
        real = _resolved(source)
        if real in BROAD_PATHS or os.path.abspath(source) in BROAD_PATHS:
            raise ConfigurationError(f"refusing to bind {what} {source!r}: that exposes too much of the host")
        for secret in self.protected:
            if _contains(real, secret):
                raise ConfigurationError(
                    f"refusing to bind {what} {source!r}: it contains the protected path {secret!r}"
                )

    @staticmethod
    def _check_target(target: str) -> str:
        p = PurePosixPath(target)
        if not p.is_absolute() or ".." in p.parts:
            raise ConfigurationError(f"mount target {target!r} must be an absolute path without '..'")
        t = str(p)
        if any(_contains(t, r) or _contains(r, t) for r in RESERVED_TARGETS if r != "/") or t == "/":
            raise ConfigurationError(f"mount target {target!r} collides with the sandbox's own file system")
        return t

    def build_command(self, run: SandboxRun, etc_fds: dict[str, int]) -> list[str]:
        """The ``bwrap`` argv for ``run``; ``etc_fds`` maps synthetic /etc files to readable fds."""
        lim = run.limits
        args = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--hostname", "sandbox",
            "--ro-bind", "/usr", "/usr",
        ]  # fmt: skip
        for top in ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for etc in ("/etc/ld.so.cache", "/etc/localtime"):
            args += ["--ro-bind-try", etc, etc]
        for dest, fd in etc_fds.items():
            args += ["--ro-bind-data", str(fd), dest]
        args += ["--proc", "/proc", "--dev", "/dev"]
        size = ["--size", str(lim.tmp_bytes)]
        args += [*size, "--tmpfs", "/dev/shm", *size, "--tmpfs", "/tmp"]
        # after the tmpfs: an interpreter (a venv) living under /tmp is bound on top of it
        for path in self._interpreter_paths():
            self._check_source(path, "interpreter directory")
            args += ["--ro-bind", path, path]
        for mount in sorted(run.mounts, key=lambda m: len(PurePosixPath(m.target).parts)):
            args += self._mount_args(mount)
        self._check_source(str(run.output_dir), "output directory")
        if not run.output_dir.is_dir():
            raise ConfigurationError(f"output directory {str(run.output_dir)!r} does not exist")
        args += ["--bind", _resolved(run.output_dir), "/out"]
        if not any(m.target.rstrip("/") == run.workdir.rstrip("/") for m in run.mounts):
            args += ["--dir", run.workdir]
        args += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", run.workdir, "--clearenv"]
        env = {
            "PATH": f"{os.path.dirname(self.python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        env.update(run.env)
        for key, value in env.items():
            args += ["--setenv", key, value]
        command = list(run.command)
        if command and command[0] == "python":
            command[0] = self.python
        return [*args, "--", *command]

    def _mount_args(self, mount: Mount) -> list[str]:
        target = self._check_target(mount.target)
        source = str(mount.source)
        if not os.path.exists(source):
            raise ConfigurationError(f"mount source {source!r} does not exist")
        self._check_source(source, "mount")
        return ["--ro-bind", _resolved(source), target]

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
        return self._run(run, on_output, cancel, cgroups=self.use_cgroups)

    @contextlib.contextmanager
    def _etc_fds(self) -> Iterator[dict[str, int]]:
        fds: dict[str, int] = {}
        try:
            for dest, text in _ETC_FILES.items():
                fd = os.memfd_create(os.path.basename(dest), os.MFD_CLOEXEC)
                fds[dest] = fd
                os.write(fd, text.encode())
                os.lseek(fd, 0, os.SEEK_SET)
            yield fds
        finally:
            for fd in fds.values():
                os.close(fd)

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
        try:
            with self._etc_fds() as etc_fds:
                argv = self.build_command(run, etc_fds)
                proc = self._spawn(argv, list(etc_fds.values()), run, group)
            return self._supervise(proc, run, group, on_output, cancel)
        finally:
            if group:
                group.kill()
                group.remove()

    def _spawn(
        self, argv: list[str], fds: list[int], run: SandboxRun, group: Cgroup | None
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
        if not (group and group.pids_dir) and os.getuid() != 0:
            # Counted per real uid across the host, so leave room for the node's own tasks.
            own = _tasks_of_uid(os.getuid())
            rlimits.append((resource.RLIMIT_NPROC, lim.max_processes + own, lim.max_processes + own))
        procs_files = [os.path.join(d, "cgroup.procs") for d in (group.dirs if group else [])]

        def enter_limits() -> None:  # runs in the child between fork and exec: no locks, no imports
            for path in procs_files:
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            for which, soft, hard in rlimits:
                resource.setrlimit(which, (soft, hard))

        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=fds,
            start_new_session=True,
            preexec_fn=enter_limits,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        run: SandboxRun,
        group: Cgroup | None,
        on_output: OutputCallback,
        cancel: threading.Event | None,
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
            killed_by, reason = self._classify(exit_code, cpu, group, done.tail, lim)
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
        exit_code: int | None, cpu: float | None, group: Cgroup | None, tail: list[str], lim: Limits
    ) -> tuple[str | None, str]:
        """(killed_by, reason) for a job that ended without the supervisor stopping it."""
        memory = f"killed: memory limit of {fmt_bytes(lim.memory_bytes)} exceeded"
        if group and group.oom_killed():
            return "memory", memory
        if exit_code in (128 + signal.SIGXCPU, 128 + signal.SIGKILL) and (
            exit_code == 128 + signal.SIGXCPU or (cpu is not None and cpu >= lim.cpu_seconds)
        ):
            return "cpu", cpu_reason(lim.cpu_seconds)
        if exit_code == 0:
            return None, exit_reason(0)
        if tail and tail[0].startswith("bwrap: ") and exit_code == 1:
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
