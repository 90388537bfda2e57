"""Per-run cgroups for the bubblewrap sandbox: memory (no swap), process count and CPU time.

cgroup v2 when the node may create groups under its own (delegated) cgroup, else v1
``memory`` + ``pids`` + ``cpuacct`` under an ``agora`` parent. :func:`create_cgroup` returns
None where the host does not allow it; callers then fall back to rlimits. A group tells
whether the OOM killer or the pids limit struck, how much CPU and memory the job used, kills
every task left in it, and removes itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: str, key: str | None = None) -> int | None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if key is None:
        return int(text.strip()) if text.strip().isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """controller (or ``"unified"``) → (mount point, root inside the hierarchy)."""
    found: dict[str, tuple[str, str]] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        root, point, fstype = fields[3], fields[4], rfields[0]
        if fstype == "cgroup2":
            found.setdefault("unified", (point, root))
        elif fstype == "cgroup":
            for opt in rfields[2].split(","):
                if opt in ("memory", "pids", "cpuacct"):
                    found.setdefault(opt, (point, root))
    return found


def _own_cgroup_dir(point: str, root: str, controller: str) -> str:
    """Where this process sits in a hierarchy (so a run's group nests under the node's)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return point
    for line in lines:
        _, controllers, path = line.split(":", 2)
        names = controllers.split(",") if controllers else [""]
        if (controller == "unified" and controllers == "") or controller in names:
            if root != "/" and path.startswith(root):
                path = path[len(root) :]
            candidate = os.path.join(point, path.lstrip("/"))
            if os.path.isdir(candidate):
                return candidate
    return point


@dataclass
class Cgroup:
    """The cgroup directories of one run (one per v1 controller, or one v2 directory)."""

    version: int
    memory_dir: str | None
    pids_dir: str | None
    cpu_dir: str | None = None

    @property
    def dirs(self) -> list[str]:
        return list(dict.fromkeys(d for d in (self.memory_dir, self.pids_dir, self.cpu_dir) if d))

    def cpu_seconds(self) -> float | None:
        """CPU time used by every task that ever ran in the group."""
        if not self.cpu_dir:
            return None
        if self.version == 2:
            usec = _read_int(os.path.join(self.cpu_dir, "cpu.stat"), "usage_usec")
            return None if usec is None else usec / 1e6
        nsec = _read_int(os.path.join(self.cpu_dir, "cpuacct.usage"))
        return None if nsec is None else nsec / 1e9

    def oom_killed(self) -> bool:
        if not self.memory_dir:
            return False
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return (_read_int(os.path.join(self.memory_dir, name), "oom_kill") or 0) > 0

    def peak_memory(self) -> int | None:
        if not self.memory_dir:
            return None
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return _read_int(os.path.join(self.memory_dir, name))

    def pids_limit_hit(self) -> bool:
        if not self.pids_dir:
            return False
        return (_read_int(os.path.join(self.pids_dir, "pids.events"), "max") or 0) > 0

    def kill(self) -> None:
        """SIGKILL every task still in the group (the PID namespace normally beat us to it)."""
        for d in self.dirs:
            if self.version == 2 and os.path.exists(os.path.join(d, "cgroup.kill")):
                with contextlib.suppress(OSError):
                    _write(os.path.join(d, "cgroup.kill"), "1")
                continue
            for _ in range(50):
                pids = _tasks(d)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # EBUSY while the last tasks are being reaped
                    time.sleep(0.01)


def _tasks(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _agora_parent(mounts: dict[str, tuple[str, str]], controller: str) -> str:
    point, root = mounts[controller]
    return os.path.join(_own_cgroup_dir(point, root, controller), "agora")


def _make_group(parent: str, name: str) -> str:
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, name)
    os.mkdir(path)
    return path


def create_cgroup(name: str, memory_bytes: int, max_processes: int) -> Cgroup | None:
    """A fresh cgroup for one run with memory and pids limits, or ``None`` if not allowed here."""
    mounts = _cgroup_mounts()
    if "unified" in mounts:
        group = _create_v2(mounts["unified"], name, memory_bytes, max_processes)
        if group:
            return group
    memory_dir = pids_dir = cpu_dir = None
    try:
        if "memory" in mounts:
            with contextlib.suppress(OSError):
                memory_dir = _make_group(_agora_parent(mounts, "memory"), name)
                _write(os.path.join(memory_dir, "memory.limit_in_bytes"), str(memory_bytes))
                with contextlib.suppress(OSError):  # absent or refused without swap accounting
                    _write(os.path.join(memory_dir, "memory.memsw.limit_in_bytes"), str(memory_bytes))
        if "pids" in mounts:
            with contextlib.suppress(OSError):
                pids_dir = _make_group(_agora_parent(mounts, "pids"), name)
                _write(os.path.join(pids_dir, "pids.max"), str(max_processes))
        if "cpuacct" in mounts and (memory_dir or pids_dir):
            with contextlib.suppress(OSError):
                cpu_dir = _make_group(_agora_parent(mounts, "cpuacct"), name)
    except Exception:
        Cgroup(1, memory_dir, pids_dir, cpu_dir).remove()
        raise
    if memory_dir and not os.path.exists(os.path.join(memory_dir, "memory.limit_in_bytes")):
        memory_dir = None
    if not memory_dir and not pids_dir:
        return None
    return Cgroup(1, memory_dir, pids_dir, cpu_dir)


def _create_v2(mount: tuple[str, str], name: str, memory_bytes: int, max_processes: int) -> Cgroup | None:
    point, root = mount
    own = _own_cgroup_dir(point, root, "unified")
    for base in dict.fromkeys((own, point)):
        try:
            with open(os.path.join(base, "cgroup.controllers")) as f:
                if not {"memory", "pids"} <= set(f.read().split()):
                    continue
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
            parent = os.path.join(base, "agora")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            path = _make_group(parent, name)
        except OSError:
            continue
        try:
            _write(os.path.join(path, "memory.max"), str(memory_bytes))
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "memory.swap.max"), "0")
            _write(os.path.join(path, "pids.max"), str(max_processes))
        except OSError:
            Cgroup(2, path, None).remove()
            continue
        return Cgroup(2, path, path, path)
    return None
