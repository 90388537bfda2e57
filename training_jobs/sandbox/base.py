"""The sandbox boundary: what a run asks for, what it reports, and what may leave it.

A :class:`Sandbox` runs a consumer's untrusted command against the provider's data:

* the data (:class:`Mount`) is visible read-only, nothing else of the node is;
* the job sees no network;
* the only writable place that survives the run is ``/out`` (``SandboxRun.output_dir``);
* CPU time, memory, processes, wall time and the size of ``/out`` are capped
  (:class:`Limits`), and a job that breaches one is killed with its whole process tree.

Job misbehaviour is never an exception: it is a :class:`SandboxOutcome` with ``ok=False``
and a human reason. Exceptions are for the node's own problems (:class:`SandboxUnavailable`
when no sandbox can run here, :class:`ImageRejected` for an unpinned image).

After the run, :func:`collect_outputs` is the one gate through which files leave: only the
declared ones, only regular files, never through a symlink, within the size cap.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import stat
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from kernel.errors import InvalidInput, ServiceUnavailable

MiB = 1024 * 1024
LINE_MAX_BYTES = 4096
LOG_MAX_BYTES = 4 * MiB
POLL_SECONDS = 0.05
OUTPUT_POLL_SECONDS = 0.1


class SandboxUnavailable(ServiceUnavailable):
    """No sandbox of the requested kind can run on this node (the detail says why)."""

    type_slug = "sandbox-unavailable"
    status = 503
    title = "Sandbox unavailable"


class OutputRejected(InvalidInput):
    """A job's declared output cannot leave the sandbox (missing, a link, not a file, too big)."""

    type_slug = "output-rejected"
    status = 422
    title = "Job output rejected"


class ImageRejected(InvalidInput):
    """A container image reference is not pinned by digest (or is otherwise unusable)."""

    type_slug = "image-rejected"
    status = 422
    title = "Container image rejected"


@dataclass(frozen=True)
class Limits:
    """Resource caps of one run; every sandbox enforces all of them."""

    cpu_seconds: int = 600
    memory_bytes: int = 2 * 1024**3
    wall_seconds: float = 900
    max_output_bytes: int = 100 * MiB  # total of /out
    max_processes: int = 64
    tmp_bytes: int = 256 * MiB  # size of the tmpfs /tmp
    max_output_files: int = 10_000  # entries in /out (empty files fill a disk's inodes too)


@dataclass(frozen=True)
class Mount:
    """A host file or directory shown read-only at ``target`` inside the sandbox."""

    source: Path
    target: str


CHANNEL_ENV = "AGORA_CHANNEL_FDS"


@dataclass
class Channel:
    """Two pipes between the node and one long-lived sandboxed process, apart from its log.

    A warm process (a federation's trainer) answers request after request for the whole of
    its life: the node writes to ``requests`` and reads from ``replies``; the process holds
    the other ends, which it finds in ``$AGORA_CHANNEL_FDS`` ("read,write"). Its stdout and
    stderr stay the log. The sandbox closes the process's ends on the node's side once the
    process is started, so the node reads end-of-file as soon as the process is gone.
    """

    requests: int  # the node writes here
    replies: int  # the node reads here
    job_reads: int
    job_writes: int

    @classmethod
    def open(cls) -> Channel:
        """Two fresh pipes (never inherited by any other child of the node)."""
        job_reads, requests = os.pipe()
        replies, job_writes = os.pipe()
        return cls(requests=requests, replies=replies, job_reads=job_reads, job_writes=job_writes)

    def job_fds(self) -> tuple[int, int]:
        return self.job_reads, self.job_writes

    def close_job_ends(self) -> None:
        """Called by the sandbox once the process holds its own copies."""
        for fd in (self.job_reads, self.job_writes):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.job_reads = self.job_writes = -1

    def close(self) -> None:
        self.close_job_ends()
        for fd in (self.requests, self.replies):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.requests = self.replies = -1


@dataclass(frozen=True)
class SandboxRun:
    """One command to run: argv, read-only mounts, the writable ``/out``, env and limits.

    ``command[0] == "python"`` means the interpreter the sandbox provides (the node's own
    Python environment for bubblewrap, the image's ``python`` for containers). ``image`` is
    an OCI reference pinned by digest (``name@sha256:…``) for podman, docker and
    Kubernetes; bubblewrap ignores it. ``channel`` makes it a long-lived run fed through
    two pipes (:class:`Channel`); only bubblewrap hosts one, the others refuse it with
    :class:`SandboxUnavailable`. Its limits hold for the whole life of the process.
    """

    command: list[str]
    mounts: list[Mount]
    output_dir: Path
    workdir: str = "/job"
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    image: str | None = None
    name: str = "agora-job"
    channel: Channel | None = None


@dataclass(frozen=True)
class SandboxOutcome:
    """How a run ended. ``ok`` only when the job exited 0 and no limit was hit.

    ``killed_by`` is a machine-readable cause when the sandbox stopped the job:
    ``"wall"``, ``"cpu"``, ``"memory"``, ``"output"``, ``"processes"`` or ``"cancelled"``.
    """

    ok: bool
    exit_code: int | None
    reason: str
    wall_seconds: float
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    killed_by: str | None = None
    log_truncated: bool = False


OutputCallback = Callable[[str], None]


def ignore_output(line: str) -> None:
    """The default ``on_output``: drop the line."""


class Sandbox(ABC):
    """One way of isolating a job. ``check`` says whether it works here; ``run`` runs one job."""

    kind: str = ""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` with the reason if this sandbox cannot run here.

        Cheap; a successful probe is cached.
        """

    @abstractmethod
    def run(
        self,
        run: SandboxRun,
        *,
        on_output: OutputCallback = ignore_output,
        cancel: threading.Event | None = None,
    ) -> SandboxOutcome:
        """Run ``run`` to completion, streaming its stdout+stderr lines to ``on_output``.

        Enforces every limit, kills the whole process tree on wall time, cancel or a breached
        limit, and reports job misbehaviour as an outcome. Raises only for node-side problems.
        """


# -- shared helpers for implementations ---------------------------------------------------


def fmt_bytes(n: int) -> str:
    """``268435456`` → ``"256 MiB"`` (for reasons a person reads)."""
    for unit, size in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def fmt_seconds(s: float) -> str:
    """``5.0`` → ``"5 s"``, ``1.5`` → ``"1.5 s"``."""
    return f"{s:g} s"


_NAME_RE = re.compile(r"[^a-z0-9-]+")


def sanitize_name(name: str, max_len: int = 52) -> str:
    """A DNS-1123 label made from ``name`` (lower case, digits, '-'), for containers and k8s."""
    cleaned = _NAME_RE.sub("-", name.lower()).strip("-")[:max_len].strip("-")
    return cleaned or "agora-job"


_DIGEST_RE = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def refuse_channel(kind: str, run: SandboxRun) -> None:
    """The refusal of a sandbox that cannot pass a :class:`Channel` into its process."""
    if run.channel is not None:
        raise SandboxUnavailable(
            f"{kind} cannot host a warm federation trainer; use AGORA_SANDBOX=bwrap (bubblewrap)"
        )


def require_digest(image: str | None) -> str:
    """Return ``image`` if it is pinned by a sha256 digest, else raise :class:`ImageRejected`.

    A tag can be moved to other code after the consumer's code was reviewed; a digest cannot.
    """
    if not image:
        raise ImageRejected("this sandbox runs an OCI image and the job names none")
    if not _DIGEST_RE.match(image):
        raise ImageRejected(f"image {image!r} is not pinned by digest: use name@sha256:<64 hex digits>")
    return image


def output_usage(output_dir: Path) -> tuple[int, int]:
    """(total bytes of regular files, number of entries) under ``output_dir``, never following links."""
    total = 0
    entries = 0
    stack = [str(output_dir)]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                entries += 1
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    total += max(st.st_size, st.st_blocks * 512)  # sparse files count at full size
    return total, entries


class LogStreamer:
    """Reads a job's merged stdout/stderr in a thread and hands ``on_output`` whole lines.

    Each line is capped at :data:`LINE_MAX_BYTES`, the whole log at ``max_bytes``; past that
    one notice line says the log was truncated and the rest is read and dropped (so the job
    never blocks on a full pipe).
    """

    def __init__(self, stream: IO[bytes], on_output: OutputCallback, max_bytes: int = LOG_MAX_BYTES):
        self._stream = stream
        self._on_output = on_output
        self._max_bytes = max_bytes
        self._sent = 0
        self.truncated = False
        self._thread = threading.Thread(target=self.pump, name="sandbox-log", daemon=True)

    def start(self) -> None:
        """Pump the stream in a daemon thread."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _emit(self, raw: bytes, cut: bool) -> None:
        if self.truncated:
            return
        if self._sent + len(raw) > self._max_bytes:
            self.truncated = True
            self._safe_call(f"[log truncated after {fmt_bytes(self._max_bytes)}]")
            return
        self._sent += len(raw) + 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        self._safe_call(text + (" [line truncated]" if cut else ""))

    def _safe_call(self, line: str) -> None:
        with contextlib.suppress(Exception):  # a failing consumer must not stop draining the pipe
            self._on_output(line)

    def pump(self) -> None:
        """Read the stream to its end in the calling thread, then close it."""
        buf = b""
        skipping = False  # inside an over-long line whose head was already emitted
        read = getattr(self._stream, "read1", self._stream.read)
        try:
            while True:
                chunk = read(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > LINE_MAX_BYTES:
                            if not skipping:
                                self._emit(buf[:LINE_MAX_BYTES], cut=True)
                            skipping = True
                            buf = b""
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if skipping:
                        skipping = False
                    elif len(line) > LINE_MAX_BYTES:
                        self._emit(line[:LINE_MAX_BYTES], cut=True)
                    else:
                        self._emit(line, cut=False)
            if buf and not skipping:
                self._emit(buf[:LINE_MAX_BYTES], cut=len(buf) > LINE_MAX_BYTES)
        finally:
            self._stream.close()


def cpu_reason(cpu_seconds: float) -> str:
    """The sentence for a job stopped at its CPU-time limit."""
    return f"killed: CPU time limit of {fmt_seconds(cpu_seconds)} exceeded"


def exit_reason(exit_code: int | None) -> str:
    """The sentence for a job that ended by itself."""
    if exit_code is None:
        return "ended without an exit status"
    if exit_code > 128:
        return f"killed by signal {exit_code - 128}"
    return f"exited with status {exit_code}"


class _ExitWaiter:
    """Sleeps until a child exits or a timeout passes (a pidfd wakes at once; else a short sleep)."""

    def __init__(self, pid: int) -> None:
        self._poll: select.poll | None = None
        self._fd = -1
        with contextlib.suppress(OSError, AttributeError):
            self._fd = os.pidfd_open(pid)
            self._poll = select.poll()
            self._poll.register(self._fd, select.POLLIN)

    def wait(self, seconds: float) -> None:
        if self._poll is not None:
            self._poll.poll(seconds * 1000)
        else:
            time.sleep(min(seconds, 0.005))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class Supervised:
    """What :func:`supervise` saw: how the process ended and whether the supervisor ended it."""

    exit_code: int | None  # None when the supervisor killed it or it died of a signal
    returncode: int  # as subprocess reports it (negative: killed by that signal)
    killed_by: str | None
    reason: str
    wall_seconds: float
    tail: list[str]  # the last lines of the log, for classifying the end
    log_truncated: bool


def supervise(
    proc: subprocess.Popen[bytes],
    run: SandboxRun,
    on_output: OutputCallback,
    cancel: threading.Event | None,
    kill: Callable[[], None],
    watch: Callable[[], tuple[str, str] | None] | None = None,
) -> Supervised:
    """Stream ``proc``'s output and wait for it, calling ``kill`` on wall time, cancel or a full /out.

    ``watch`` is an implementation's own periodic check (total CPU from a cgroup, the
    process count): it returns ``(killed_by, reason)`` when the job must be stopped.

    ``proc`` must have been started with ``stdout=PIPE, stderr=STDOUT``. ``kill`` must end
    the whole process tree; this function then reaps ``proc``.
    """
    lim = run.limits
    tail: deque[str] = deque(maxlen=20)

    def relay(line: str) -> None:
        tail.append(line)
        on_output(line)

    assert proc.stdout is not None
    streamer = LogStreamer(proc.stdout, relay)
    streamer.start()
    started = time.monotonic()
    deadline = started + lim.wall_seconds
    next_output_check = started
    killed_by: str | None = None
    reason = ""
    exited = _ExitWaiter(proc.pid)
    while True:
        pid, wstatus = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        now = time.monotonic()
        if cancel is not None and cancel.is_set():
            killed_by, reason = "cancelled", "cancelled"
        elif now >= deadline:
            killed_by, reason = "wall", f"killed: wall time of {fmt_seconds(lim.wall_seconds)} exceeded"
        elif now >= next_output_check:
            next_output_check = now + OUTPUT_POLL_SECONDS
            size, entries = output_usage(run.output_dir)
            if size > lim.max_output_bytes:
                killed_by, reason = "output", f"killed: output exceeded {fmt_bytes(lim.max_output_bytes)}"
            elif entries > lim.max_output_files:
                killed_by, reason = "output", f"killed: output exceeded {lim.max_output_files} files"
            elif watch is not None and (verdict := watch()) is not None:
                killed_by, reason = verdict
        if killed_by:
            kill()
            _, wstatus = os.waitpid(proc.pid, 0)
            break
        exited.wait(POLL_SECONDS)
    exited.close()
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(wstatus)
    streamer.join(timeout=5)
    exit_code = proc.returncode if proc.returncode >= 0 and not killed_by else None
    return Supervised(
        exit_code=exit_code,
        returncode=proc.returncode,
        killed_by=killed_by,
        reason=reason,
        wall_seconds=wall,
        tail=list(tail),
        log_truncated=streamer.truncated,
    )


# -- what may leave -----------------------------------------------------------------------


def _check_relative(name: str) -> tuple[str, ...]:
    if not name or "\x00" in name or "\\" in name:
        raise OutputRejected(f"declared output {name!r} is not a valid relative path")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise OutputRejected(f"declared output {name!r} is an absolute path")
    parts = tuple(part for part in p.parts if part != ".")
    if not parts or ".." in parts:
        raise OutputRejected(f"declared output {name!r} leaves the output directory")
    return parts


def collect_outputs(output_dir: Path, declared: list[str], max_bytes: int) -> dict[str, Path]:
    """The declared files of a finished run, checked; undeclared files never leave.

    Each declared name is a relative path inside ``output_dir`` (no ``..``, not absolute)
    whose every component is checked with ``lstat``: no component may be a symlink, the
    final one must be a regular file with a single link, and the declared files together
    must not exceed ``max_bytes``. Raises :class:`OutputRejected` with the reason otherwise.
    Returns ``{declared name: host path}``.
    """
    result: dict[str, Path] = {}
    total = 0
    for name in declared:
        parts = _check_relative(name)
        path = output_dir
        for i, part in enumerate(parts):
            path = path / part
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise OutputRejected(f"declared output {name!r} was not produced") from None
            except OSError as exc:
                raise OutputRejected(f"declared output {name!r} cannot be read: {exc.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                raise OutputRejected(f"declared output {name!r} goes through a symlink (to {target!r})")
            last = i == len(parts) - 1
            if not last and not stat.S_ISDIR(st.st_mode):
                raise OutputRejected(f"declared output {name!r}: {part!r} is not a directory")
            if last:
                if not stat.S_ISREG(st.st_mode):
                    raise OutputRejected(f"declared output {name!r} is not a regular file")
                if st.st_nlink > 1:
                    raise OutputRejected(f"declared output {name!r} is a hard link")
                total += st.st_size
        if total > max_bytes:
            raise OutputRejected(f"declared outputs exceed the cap of {fmt_bytes(max_bytes)} (at {name!r})")
        result[name] = path
    return result
