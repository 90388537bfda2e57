"""Staging a run for bubblewrap on a root node: the job runs as an unprivileged host user and
sees no host path of its data.

Unprivileged bubblewrap maps the sandbox's uid onto the uid that started it, so on a root
node the job's processes are host root (without capabilities, but the kernel still treats
their uid as root's for files and signals). And a bind mount shows its source path to anyone
who reads ``/proc/self/mountinfo`` (its "root" field is the path inside the source's file
system), which names the node's home and the job's directory.

So between fork and ``exec bwrap`` the child of a root node prepares a mount namespace of its
own, never visible to the host, and then drops to :data:`HOST_UID`:

1. a private mount namespace with a small tmpfs on a fresh, empty directory
   (``/tmp/agora-sandbox-XXXX``): the *stage*;
2. every source bubblewrap will bind is bound into the stage first (root can reach it; the
   unprivileged bubblewrap then can, through the stage, without the node's home being
   opened to anyone);
3. the run's read-only directories are shown through a read-only overlay whose layers are
   named by stage paths, and ``/out`` through a read-write overlay whose upper layer is the
   real output directory: the job's ``mountinfo`` shows ``overlay`` with stage paths, never
   a host path of its data;
4. ``setgroups([])``, then gid and uid :data:`HOST_UID`, and ``exec bwrap``, which maps the
   sandbox's uid onto that unprivileged uid.

The output directory is handed to :data:`HOST_UID` (the job writes there); the run's
read-only sources are made readable to others (they live in the node's home, which is
0700). What stays visible is listed in :mod:`training_jobs.sandbox.bubblewrap`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST_UID = 65534  # "nobody": the host identity of a job on a root node
PREFIX = "agora-sandbox-"
STALE_SECONDS = 600  # a stage serves bubblewrap's setup only (milliseconds); older ones were left
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18


class StagingFailed(OSError):
    """A step of the stage failed in the child (the message names it)."""


@dataclass
class Stage:
    """What the child does before ``exec bwrap``, and where bubblewrap binds from."""

    root: Path
    overlay: bool
    sources: dict[str, str] = field(default_factory=dict)  # host path → the stage path bwrap binds
    steps: list[tuple[str, tuple[bytes, ...]]] = field(default_factory=list)
    work_dirs: list[Path] = field(default_factory=list)  # overlay work directories beside /out

    def source(self, host_path: str) -> str:
        return self.sources.get(host_path, host_path)

    def cleanup(self) -> None:
        for work in self.work_dirs:
            shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.root.rmdir()


def plan(
    interpreter_paths: Sequence[str],
    read_only: Sequence[str],
    output_dir: str,
    *,
    overlay: bool,
) -> Stage:
    """The stage for one run; ``read_only`` and ``output_dir`` are resolved host paths.

    Prepares the host side (the empty stage directory, the overlay work directory, the
    output directory's owner, read access to the read-only sources); the rest happens in
    the child (:func:`enterer`)."""
    stage = Stage(Path(tempfile.mkdtemp(prefix=PREFIX)), overlay)
    try:
        _prepare(stage, interpreter_paths, read_only, output_dir)
    except BaseException:
        stage.cleanup()
        raise
    return stage


def sweep(now: float | None = None) -> int:
    """Remove stage directories a node left behind when it died during a run (each is empty
    on the host; a stage is only read while bubblewrap sets the sandbox up, so one older than
    :data:`STALE_SECONDS` serves no one). Returns how many went."""
    now = time.time() if now is None else now
    removed = 0
    for entry in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        with contextlib.suppress(OSError):
            if now - entry.lstat().st_mtime > STALE_SECONDS:
                entry.rmdir()
                removed += 1
    return removed


def _prepare(stage: Stage, interpreters: Sequence[str], read_only: Sequence[str], output_dir: str) -> None:
    root = str(stage.root)
    stage.steps.append(("tmpfs", (root.encode(),)))
    empty = f"{root}/empty"
    stage.steps.append(("mkdir", (empty.encode(),)))
    for i, path in enumerate(interpreters):
        stage.sources[path] = _bind(stage, path, f"{root}/python{i}")
    for i, path in enumerate(read_only):
        _grant_read(path)
        bound = _bind(stage, path, f"{root}/source{i}")
        if stage.overlay and os.path.isdir(path):
            shown = f"{root}/ro{i}"
            stage.steps.append(("mkdir", (shown.encode(),)))
            stage.steps.append(("overlay", (shown.encode(), f"ro,lowerdir={bound}:{empty}".encode())))
            bound = shown
        stage.sources[path] = bound
    os.chown(output_dir, HOST_UID, HOST_UID)
    if stage.overlay:
        parent, name = os.path.split(output_dir)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-overlay-", dir=parent))
        stage.work_dirs.append(work)
        both = _bind(stage, parent, f"{root}/output")
        shown = f"{root}/out"
        stage.steps.append(("mkdir", (shown.encode(),)))
        options = f"lowerdir={empty},upperdir={both}/{name},workdir={both}/{work.name}"
        stage.steps.append(("overlay", (shown.encode(), options.encode())))
        stage.sources[output_dir] = shown
    else:
        stage.sources[output_dir] = _bind(stage, output_dir, f"{root}/out")


def _bind(stage: Stage, host_path: str, at: str) -> str:
    kind = "mkdir" if os.path.isdir(host_path) else "touch"
    stage.steps.append((kind, (at.encode(),)))
    stage.steps.append(("bind", (host_path.encode(), at.encode())))
    return at


def _grant_read(path: str) -> None:
    """Let others read ``path`` (and traverse it, for directories), recursively, adding bits
    only: the job's host uid is not the node's."""
    if not os.path.isdir(path):
        _add_mode(path, stat.S_IROTH)
        return
    _add_mode(path, stat.S_IROTH | stat.S_IXOTH)
    for current, dirs, files in os.walk(path):
        for name in dirs:
            _add_mode(os.path.join(current, name), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            _add_mode(os.path.join(current, name), stat.S_IROTH)


def _add_mode(path: str, bits: int) -> None:
    st = os.lstat(path)
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & bits != bits:
        os.chmod(path, stat.S_IMODE(st.st_mode) | bits)


def enterer(stage: Stage, report_fd: int) -> Callable[[], None]:
    """The child's part (between fork and exec: no imports, no locks, only system calls); a
    failing step writes its reason to ``report_fd`` before the fork's exec is abandoned."""
    libc = ctypes.CDLL(None, use_errno=True)
    mount, unshare = libc.mount, libc.unshare
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    tmpfs, overlay, none = b"tmpfs", b"overlay", None
    steps = list(stage.steps)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise StagingFailed(f"{what}: {os.strerror(err)}")

    def enter() -> None:
        try:
            steps_in_child()
        except OSError as exc:
            os.write(report_fd, str(exc).encode()[:4000])
            raise

    def steps_in_child() -> None:
        check(unshare(CLONE_NEWNS), "unshare the mount namespace")
        check(mount(none, b"/", none, MS_REC | MS_PRIVATE, none), "make the mounts private")
        for kind, args in steps:
            if kind == "tmpfs":
                check(mount(tmpfs, args[0], tmpfs, MS_NOSUID | MS_NODEV, b"mode=0755,size=1m"), "stage tmpfs")
            elif kind == "mkdir":
                os.mkdir(args[0], 0o755)
            elif kind == "touch":
                os.close(os.open(args[0], os.O_CREAT | os.O_WRONLY, 0o644))
            elif kind == "bind":
                check(mount(args[0], args[1], none, MS_BIND | MS_REC, none), "bind into the stage")
            else:
                check(mount(overlay, args[0], overlay, MS_NOSUID | MS_NODEV, args[1]), "overlay")
        os.setgroups([])
        os.setresgid(HOST_UID, HOST_UID, HOST_UID)
        os.setresuid(HOST_UID, HOST_UID, HOST_UID)

    return enter
