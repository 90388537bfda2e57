"""What a bubblewrap job sees of the host: the ``bwrap`` command line that builds its world.

A read-only root from ``/usr`` (and the merged-usr links or directories ``/bin``, ``/sbin``,
``/lib``, ``/lib64``), a synthetic ``/etc`` (passwd, group, hosts and nsswitch written here,
plus the host's ``ld.so.cache`` and ``localtime``), the interpreter's prefixes at their host
paths (a venv only works where it was made), a private ``/proc``, a minimal ``/dev``,
size-capped tmpfs ``/tmp`` and ``/dev/shm``, the run's read-only mounts and the writable
``/out``, the host name ``sandbox``, and an environment of a few fixed variables plus the
run's own. Never ``/sys``, never a broad host directory (:data:`BROAD_PATHS`), never a bind
that contains one of the node's protected paths.

The options are not a command line anyone can read: :class:`BubblewrapSandbox` hands them
to ``bwrap`` through a memfd (``--args``), so ``/proc/1/cmdline`` inside the sandbox — bwrap
itself — shows only ``bwrap --args N --json-status-fd M -- <the job's command>``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

from kernel.errors import ConfigurationError

from .base import CHANNEL_ENV, Mount, SandboxRun
from .staging import Stage

SANDBOX_UID = 65534
# Host directories never bound wholesale, whatever a caller asks.
BROAD_PATHS = frozenset(
    {"/", "/root", "/home", "/work", "/etc", "/var", "/tmp", "/run", "/proc", "/sys", "/dev", "/boot", "/srv"}
    | {"/mnt", "/media", "/opt"}
)
RESERVED_TARGETS = ("/", "/proc", "/dev", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/tmp", "/out")
_ETC_FILES = {
    "/etc/passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"
    ),
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
}


def _resolved(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


class SandboxView:
    """The ``bwrap`` options for a run: the node's interpreter ``python`` (run by ``bwrap``),
    and the host paths (``protected``, resolved) that no bind may contain."""

    def __init__(self, bwrap: str, python: str, protected: Sequence[str]) -> None:
        self.bwrap = bwrap
        self.python = python
        self.protected = list(protected)

    def interpreter_paths(self) -> list[str]:
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

    def check_source(self, source: str, what: str) -> None:
        real = _resolved(source)
        if real in BROAD_PATHS or os.path.abspath(source) in BROAD_PATHS:
            raise ConfigurationError(f"refusing to bind {what} {source!r}: that exposes too much of the host")
        for secret in self.protected:
            if _contains(real, secret):
                raise ConfigurationError(
                    f"refusing to bind {what} {source!r}: it contains the protected path {secret!r}"
                )

    @staticmethod
    def check_target(target: str) -> str:
        p = PurePosixPath(target)
        if not p.is_absolute() or ".." in p.parts:
            raise ConfigurationError(f"mount target {target!r} must be an absolute path without '..'")
        t = str(p)
        if any(_contains(t, r) or _contains(r, t) for r in RESERVED_TARGETS if r != "/") or t == "/":
            raise ConfigurationError(f"mount target {target!r} collides with the sandbox's own file system")
        return t

    def command(self, run: SandboxRun, etc_fds: dict[str, int], stage: Stage | None = None) -> list[str]:
        """The ``bwrap`` argv for ``run``; ``etc_fds`` maps synthetic /etc files to readable fds,
        ``stage`` the binds' host sources to where a staged run binds them from."""
        lim = run.limits
        source = stage.source if stage else (lambda path: path)
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
        for path in self.interpreter_paths():
            self.check_source(path, "interpreter directory")
            args += ["--ro-bind", source(path), path]
        for mount in sorted(run.mounts, key=lambda m: len(PurePosixPath(m.target).parts)):
            target, host = self.mount_source(mount)
            args += ["--ro-bind", source(host), target]
        args += ["--bind", source(self.output_source(run)), "/out"]
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
        if run.channel is not None:
            env[CHANNEL_ENV] = ",".join(str(fd) for fd in run.channel.job_fds())
        for key, value in env.items():
            args += ["--setenv", key, value]
        command = list(run.command)
        if command and command[0] == "python":
            command[0] = self.python
        return [*args, "--", *command]

    def mount_source(self, mount: Mount) -> tuple[str, str]:
        """(target, resolved host source) of a read-only mount, checked."""
        target = self.check_target(mount.target)
        source = str(mount.source)
        if not os.path.exists(source):
            raise ConfigurationError(f"mount source {source!r} does not exist")
        self.check_source(source, "mount")
        return target, _resolved(source)

    def output_source(self, run: SandboxRun) -> str:
        self.check_source(str(run.output_dir), "output directory")
        if not run.output_dir.is_dir():
            raise ConfigurationError(f"output directory {str(run.output_dir)!r} does not exist")
        return _resolved(run.output_dir)


@contextlib.contextmanager
def etc_files() -> Iterator[dict[str, int]]:
    """The synthetic /etc files as memfds, for ``--ro-bind-data`` (closed afterwards)."""
    fds: dict[str, int] = {}
    try:
        for dest, text in _ETC_FILES.items():
            fds[dest] = memfd(os.path.basename(dest), text.encode())
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)


def memfd(name: str, data: bytes) -> int:
    """A file in memory holding ``data``, positioned at its start (closed on exec unless passed)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
