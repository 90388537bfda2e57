"""Hostile jobs against the bubblewrap sandbox: each attack fails and the host is unharmed.

Every test runs real untrusted-looking Python under ``bwrap`` (installed by the test setup,
.ci/install-services.sh) and checks two things: the outcome (a specific reason, or the
job's own probe reporting that the attack failed) and that the test process and the host
are intact (no leftover process, no file outside ``/out``, the node's secrets unread).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from kernel.errors import ConfigurationError
from training_jobs.sandbox import (
    BubblewrapSandbox,
    Limits,
    Mount,
    OutputRejected,
    SandboxOutcome,
    SandboxRun,
    SandboxUnavailable,
    collect_outputs,
    detect_sandbox,
)

MiB = 1024 * 1024
SECRET = "canary-" + uuid.uuid4().hex


@dataclass
class Node:
    """A fake node data directory with secrets, and one job directory under it."""

    home: Path
    job: Path
    sibling_data: Path
    secrets: list[Path] = field(default_factory=list)

    @property
    def code(self) -> Path:
        return self.job / "code"

    @property
    def data(self) -> Path:
        return self.job / "data"

    @property
    def out(self) -> Path:
        return self.job / "out"


@pytest.fixture
def node(tmp_path: Path) -> Node:
    home = tmp_path / "agora-home"
    secrets = [home / "keystore.json", home / "node.db", home / "token.key"]
    for path in secrets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{path.name} {SECRET}\n")
        path.chmod(0o600)
    sibling = home / "jobs" / "other-job" / "data"
    sibling.mkdir(parents=True)
    (sibling / "private.csv").write_text(f"other consumer's data {SECRET}\n")
    job = home / "jobs" / "this-job"
    for sub in ("code", "data", "out"):
        (job / sub).mkdir(parents=True)
    (job / "data" / "train.csv").write_text("x,y\n1,2\n")
    return Node(home=home, job=job, sibling_data=sibling, secrets=secrets)


@pytest.fixture
def sandbox(node: Node) -> BubblewrapSandbox:
    box = BubblewrapSandbox(protected=[node.home / "keystore.json", node.home / "node.db"])
    box.check()
    return box


@dataclass
class Result:
    outcome: SandboxOutcome
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


RunJob = Callable[..., Result]


@pytest.fixture
def run_job(sandbox: BubblewrapSandbox, node: Node) -> RunJob:
    """``run_job(source, limits=..., cancel=...)``: run ``source`` as /job/main.py with /data mounted."""

    def run(
        source: str,
        *,
        limits: Limits | None = None,
        cancel: threading.Event | None = None,
        box: BubblewrapSandbox | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        (node.code / "main.py").write_text(textwrap.dedent(source))
        job = SandboxRun(
            command=["python", "/job/main.py"],
            mounts=[Mount(node.code, "/job"), Mount(node.data, "/data")],
            output_dir=node.out,
            env=env or {},
            limits=limits or Limits(wall_seconds=30),
            name="hostile job",
        )
        lines: list[str] = []
        outcome = (box or sandbox).run(job, on_output=lines.append, cancel=cancel)
        return Result(outcome, lines)

    return run


_started_before: set[int] = set()


@pytest.fixture(autouse=True)
def _known_children() -> None:
    """The children this process had before the test (servers of session fixtures)."""
    _started_before.clear()
    _started_before.update(p.pid for p in psutil.Process().children(recursive=True))


def no_descendants() -> list[psutil.Process]:
    """Processes the test started below this process and left behind (a sandbox must leave none)."""
    deadline = time.monotonic() + 2
    while True:
        left = [
            p for p in psutil.Process().children(recursive=True) if p.pid not in _started_before and _alive(p)
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def probe_results(result: Result) -> dict[str, str]:
    """The JSON line a probe job prints last."""
    assert result.outcome.ok, (result.outcome, result.text)
    return dict(json.loads(result.lines[-1]))


# -- a job that behaves -----------------------------------------------------------------


def test_trivial_job_runs_and_streams_its_output(sandbox: BubblewrapSandbox, node: Node) -> None:
    lines: list[str] = []
    run = SandboxRun(command=["python", "-c", "print('hi')"], mounts=[], output_dir=node.out)
    outcome = sandbox.run(run, on_output=lines.append)
    assert outcome.ok and outcome.exit_code == 0
    assert outcome.reason == "exited with status 0"
    assert lines == ["hi"]
    assert no_descendants() == []


def test_output_lines_arrive_in_order(run_job: RunJob) -> None:
    result = run_job(
        """
        import time
        print("first", flush=True)
        time.sleep(1.0)
        print("second")
        """
    )
    assert result.outcome.ok
    assert result.lines == ["first", "second"]
    assert result.outcome.wall_seconds >= 1.0


def test_lines_are_streamed_before_exit(sandbox: BubblewrapSandbox, node: Node) -> None:
    arrivals: list[tuple[str, float]] = []
    run = SandboxRun(
        command=["python", "-c", "import time; print('early', flush=True); time.sleep(1.0)"],
        mounts=[],
        output_dir=node.out,
    )
    t0 = time.monotonic()
    outcome = sandbox.run(run, on_output=lambda line: arrivals.append((line, time.monotonic() - t0)))
    assert outcome.ok
    assert arrivals[0][0] == "early"
    assert arrivals[0][1] < outcome.wall_seconds - 0.5


def test_long_lines_and_huge_logs_are_capped(run_job: RunJob) -> None:
    result = run_job(
        """
        import sys
        print("x" * 100_000)
        for i in range(3000):
            sys.stdout.write("y" * 2000 + "\\n")
        print("done")
        """
    )
    assert result.outcome.ok
    assert result.lines[0] == "x" * 4096 + " [line truncated]"
    assert result.outcome.log_truncated
    assert result.lines[-1].startswith("[log truncated after 4 MiB]")
    assert "done" not in result.lines


def test_torch_imports_within_the_default_limits(sandbox: BubblewrapSandbox, node: Node) -> None:
    lines: list[str] = []
    code = "import torch; m = torch.nn.Linear(4, 1); print(float(m(torch.ones(2, 4)).shape[0]))"
    run = SandboxRun(command=["python", "-c", code], mounts=[], output_dir=node.out, limits=Limits())
    outcome = sandbox.run(run, on_output=lines.append)
    assert outcome.ok, (outcome, lines)
    assert lines == ["2.0"]


def test_the_job_sees_its_data_read_only_and_writes_out(run_job: RunJob, node: Node) -> None:
    result = run_job(
        """
        import os
        print(open("/data/train.csv").read().splitlines()[0])
        with open("/out/model.pt", "w") as f:
            f.write("weights")
        print(os.getuid(), os.getgid(), os.getcwd())
        """
    )
    assert result.outcome.ok, result.text
    assert result.lines == ["x,y", "65534 65534 /job"]
    assert (node.out / "model.pt").read_text() == "weights"


# -- network ------------------------------------------------------------------------------

NETWORK_PROBE = """
import json, socket
port = {port}
results = {{}}
for host, p in [("127.0.0.1", port), ("10.255.255.1", 80), ("1.1.1.1", 53), ("1.1.1.1", 443)]:
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((host, p))
        results[f"{{host}}:{{p}}"] = "CONNECTED"
    except OSError as exc:
        results[f"{{host}}:{{p}}"] = f"blocked {{exc.__class__.__name__}}"
    finally:
        s.close()
for name in ("example.com", "pypi.org"):
    try:
        socket.getaddrinfo(name, 443)
        results[name] = "RESOLVED"
    except OSError as exc:
        results[name] = f"blocked {{exc.__class__.__name__}}"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    u.sendto(b"x", ("1.1.1.1", 53))
    results["udp"] = "SENT"
except OSError as exc:
    results["udp"] = f"blocked {{exc.__class__.__name__}}"
results["interfaces"] = " ".join(sorted(n for _, n in socket.if_nameindex()))
print(json.dumps(results))
"""


def test_no_network_egress(run_job: RunJob) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        results = probe_results(run_job(NETWORK_PROBE.format(port=port)))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing reached the host's listener
    assert results.pop("interfaces") == "lo"
    assert all(v.startswith("blocked") for v in results.values()), results


# -- the node's secrets and other jobs ------------------------------------------------------

SECRETS_PROBE = """
import json, os
paths = {paths}
results = {{}}
for path in paths:
    try:
        with open(path) as f:
            results[path] = "READ " + f.read()
    except OSError as exc:
        results[path] = f"denied {{exc.__class__.__name__}}"
try:
    results["/root listing"] = " ".join(sorted(os.listdir("/root")))
except OSError as exc:
    results["/root listing"] = f"denied {{exc.__class__.__name__}}"
print(json.dumps(results))
"""


def test_node_secrets_and_other_jobs_are_invisible(run_job: RunJob, node: Node) -> None:
    paths = [str(p) for p in node.secrets]
    paths += [
        str(node.sibling_data / "private.csv"),
        str(node.home / "jobs" / "this-job" / "data" / "train.csv"),
    ]
    paths += ["/proc/1/root" + p for p in paths[:3]]
    paths += ["/root/.bash_history", "/root/.ssh/id_rsa", "/work/main/pyproject.toml", "/etc/shadow"]
    paths += ["/proc/1/root/etc/shadow", "/data/../../" + str(node.secrets[0]).lstrip("/")]
    result = run_job(SECRETS_PROBE.format(paths=json.dumps(paths)))
    results = probe_results(result)
    listing = results.pop("/root listing")
    assert listing in ("", ".pyenv"), listing  # only the interpreter's own tree, if it lives there
    assert all(v.startswith("denied") for v in results.values()), results
    assert SECRET not in result.text


def test_binding_a_protected_path_is_refused(sandbox: BubblewrapSandbox, node: Node) -> None:
    for source in (node.home, Path("/"), Path("/root"), Path("/work")):
        run = SandboxRun(
            command=["python", "-c", "pass"], mounts=[Mount(source, "/data")], output_dir=node.out
        )
        with pytest.raises(ConfigurationError):
            sandbox.run(run)


# -- writing outside /out -------------------------------------------------------------------

WRITE_PROBE = """
import json
results = {{}}
for path in ["/escape", "/usr/escape", "/job/escape", "/data/escape", "/etc/escape", "/dev/escape",
             "/proc/escape", "{host_tmp}", "/tmp/{marker}", "/out/ok"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        results[path] = "WROTE"
    except OSError as exc:
        results[path] = f"denied {{exc.__class__.__name__}}"
print(json.dumps(results))
"""


def test_writes_outside_out_fail_and_tmp_is_ephemeral(run_job: RunJob, node: Node) -> None:
    marker = "agora-sandbox-" + uuid.uuid4().hex
    host_tmp = str(node.job / "escape")
    results = probe_results(run_job(WRITE_PROBE.format(host_tmp=host_tmp, marker=marker)))
    assert results.pop("/out/ok") == "WROTE"
    assert results.pop(f"/tmp/{marker}") == "WROTE"  # allowed, but private to the run
    assert all(v.startswith("denied") for v in results.values()), results
    assert not Path("/tmp", marker).exists()
    assert not Path(host_tmp).exists()
    assert sorted(p.name for p in node.code.iterdir()) == ["main.py"]
    assert sorted(p.name for p in node.data.iterdir()) == ["train.csv"]
    assert (node.out / "ok").read_text() == "x"


# -- resource exhaustion --------------------------------------------------------------------


FORK_COUNTER = """
import os, time
n = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    n += 1
print(n)
"""


def test_fork_bomb_is_contained(run_job: RunJob) -> None:
    limits = Limits(wall_seconds=3, max_processes=16)
    counter = run_job(FORK_COUNTER, limits=limits)
    assert counter.outcome.ok, counter.text  # its children die with it when it exits
    assert int(counter.lines[-1]) < limits.max_processes

    bomb = run_job(BOMB, limits=limits)
    assert not bomb.outcome.ok
    assert bomb.outcome.reason == "killed: wall time of 3 s exceeded"  # forks fail; it spins
    assert subprocess.run(["true"], timeout=10).returncode == 0  # the host can still fork
    assert no_descendants() == []


BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_without_a_pids_cgroup_a_job_running_as_host_root_is_refused(node: Node) -> None:
    """Root ignores RLIMIT_NPROC: with no pids cgroup, a job whose host uid would be root (a
    root node that does not stage its runs) must not run at all."""
    if os.getuid() != 0:
        pytest.skip("only a root node can run a job as host root")
    box = BubblewrapSandbox(use_cgroups=False, stage_on_root=False)
    run = SandboxRun(command=["python", "-c", "print('ran')"], mounts=[], output_dir=node.out)
    with pytest.raises(SandboxUnavailable, match="RLIMIT_NPROC"):
        box.check()
    with pytest.raises(SandboxUnavailable, match="fork bomb"):
        box.run(run)


def test_without_a_pids_cgroup_rlimit_nproc_caps_an_unprivileged_job(node: Node) -> None:
    """A job whose host uid is not root (an unprivileged node, or a root node staging its
    runs as uid 65534): RLIMIT_NPROC binds, so forks beyond the limit fail."""
    box = BubblewrapSandbox(use_cgroups=False)
    box.check()
    assert box.isolation["job_host_uid"] != 0, box.isolation
    lines: list[str] = []
    counter = Limits(max_processes=16, wall_seconds=10)
    job = SandboxRun(command=["python", "-c", FORK_COUNTER], mounts=[], output_dir=node.out, limits=counter)
    assert box.run(job, on_output=lines.append).ok
    assert int(lines[-1]) < counter.max_processes


@pytest.mark.parametrize("use_cgroups", [True, False], ids=["cgroup-or-rlimit", "rlimit-only"])
def test_memory_bomb_is_killed_with_a_memory_reason(run_job: RunJob, use_cgroups: bool) -> None:
    box = BubblewrapSandbox(use_cgroups=use_cgroups, allow_uncapped_processes=not use_cgroups)
    result = run_job(
        """
        chunks = []
        while True:
            chunks.append(bytearray(16 * 1024 * 1024))
        """,
        limits=Limits(memory_bytes=256 * MiB, wall_seconds=20),
        box=box,
    )
    assert not result.outcome.ok
    assert result.outcome.killed_by == "memory", result.outcome
    assert result.outcome.reason.startswith("killed: memory limit of 256 MiB exceeded")
    assert no_descendants() == []


def test_cpu_time_limit(run_job: RunJob) -> None:
    result = run_job("while True:\n    pass\n", limits=Limits(cpu_seconds=1, wall_seconds=20))
    assert result.outcome.killed_by == "cpu", result.outcome
    assert result.outcome.reason == "killed: CPU time limit of 1 s exceeded"


def test_filling_out_is_stopped_with_the_output_reason(run_job: RunJob, node: Node) -> None:
    result = run_job(
        """
        import itertools, time
        for i in itertools.count():
            with open(f"/out/fill-{i}", "wb") as f:
                f.write(b"z" * 256 * 1024)
            time.sleep(0.001)
        """,
        limits=Limits(max_output_bytes=MiB, wall_seconds=20),
    )
    assert result.outcome.killed_by == "output", result.outcome
    assert result.outcome.reason == "killed: output exceeded 1 MiB"
    assert no_descendants() == []


def test_one_file_cannot_outgrow_the_output_cap(run_job: RunJob, node: Node) -> None:
    result = run_job(
        """
        import json
        try:
            with open("/out/huge", "wb") as f:
                f.write(b"z" * 3 * 1024 * 1024)
            print(json.dumps({"huge": "WROTE"}))
        except OSError as exc:
            print(json.dumps({"huge": f"denied {exc.errno}"}))
        """,
        limits=Limits(max_output_bytes=MiB, wall_seconds=20),
    )
    assert result.lines[-1] == json.dumps({"huge": f"denied {errno.EFBIG}"})
    assert (node.out / "huge").stat().st_size <= MiB


def test_tmp_and_shm_are_size_capped(run_job: RunJob) -> None:
    results = probe_results(
        run_job(
            """
            import json
            results = {}
            for path in ("/tmp/fill", "/dev/shm/fill"):
                try:
                    with open(path, "wb") as f:
                        for _ in range(64):
                            f.write(b"t" * 1024 * 1024)
                            f.flush()
                    results[path] = "WROTE 64 MiB"
                except OSError as exc:
                    results[path] = f"denied {exc.errno}"
            print(json.dumps(results))
            """,
            limits=Limits(tmp_bytes=4 * MiB, wall_seconds=20),
        )
    )
    assert results == {"/tmp/fill": f"denied {errno.ENOSPC}", "/dev/shm/fill": f"denied {errno.ENOSPC}"}


def test_wall_time_kills_the_whole_tree(run_job: RunJob) -> None:
    marker = f"{61 + uuid.uuid4().int % 1000 / 1000:.3f}"
    result = run_job(
        f"""
        import subprocess, time
        subprocess.Popen(["sleep", "{marker}"])
        subprocess.Popen(["sh", "-c", "sleep {marker} & sleep {marker}"])
        print("started", flush=True)
        time.sleep(60)
        """,
        limits=Limits(wall_seconds=1.5),
    )
    assert result.lines == ["started"]
    assert result.outcome.reason == "killed: wall time of 1.5 s exceeded"
    assert result.outcome.killed_by == "wall" and result.outcome.exit_code is None
    assert no_descendants() == []
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert survivors == []


def test_cancel_stops_the_job(run_job: RunJob) -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    result = run_job("import time\ntime.sleep(30)\n", cancel=cancel)
    timer.join()
    assert result.outcome.reason == "cancelled"
    assert result.outcome.killed_by == "cancelled" and not result.outcome.ok
    assert no_descendants() == []


def test_a_failing_job_is_an_outcome_not_an_exception(run_job: RunJob) -> None:
    result = run_job("raise SystemExit(3)\n")
    assert not result.outcome.ok
    assert result.outcome.exit_code == 3
    assert result.outcome.reason == "exited with status 3"


def test_detect_sandbox_finds_bubblewrap() -> None:
    assert detect_sandbox().kind == "bubblewrap"


# -- what may leave -------------------------------------------------------------------------


def test_collect_outputs_refuses_symlinks_planted_by_the_job(run_job: RunJob, node: Node) -> None:
    result = run_job(
        """
        import os
        os.symlink("/etc/passwd", "/out/model.pt")
        os.symlink("../../secret", "/out/metrics.json")
        os.mkdir("/out/real")
        os.symlink("/etc", "/out/linked")
        with open("/out/real/weights.bin", "wb") as f:
            f.write(b"w" * 10)
        """
    )
    assert result.outcome.ok, result.text
    for name in ("model.pt", "metrics.json", "linked/passwd"):
        with pytest.raises(OutputRejected, match="symlink"):
            collect_outputs(node.out, [name], MiB)
    assert collect_outputs(node.out, ["real/weights.bin"], MiB) == {
        "real/weights.bin": node.out / "real" / "weights.bin"
    }


def test_collect_outputs_checks(node: Node) -> None:
    (node.out / "model.pt").write_bytes(b"m" * 600)
    (node.out / "metrics.json").write_bytes(b"{}")
    (node.out / "undeclared.bin").write_bytes(b"u" * 10_000)
    (node.out / "dir").mkdir()
    os.mkfifo(node.out / "fifo")

    files = collect_outputs(node.out, ["model.pt", "metrics.json"], 1000)
    assert files == {"model.pt": node.out / "model.pt", "metrics.json": node.out / "metrics.json"}
    with pytest.raises(OutputRejected, match="not produced"):
        collect_outputs(node.out, ["model.pt", "missing.onnx"], 1000)
    with pytest.raises(OutputRejected, match="exceed the cap"):
        collect_outputs(node.out, ["model.pt", "metrics.json"], 601)
    for bad in ("/etc/passwd", "../secret", "a/../../b", ""):
        with pytest.raises(OutputRejected):
            collect_outputs(node.out, [bad], 1000)
    for not_file in ("dir", "fifo"):
        with pytest.raises(OutputRejected, match="not a regular file"):
            collect_outputs(node.out, [not_file], 1000)
    os.link(node.out / "metrics.json", node.out / "alias.json")
    with pytest.raises(OutputRejected, match="hard link"):
        collect_outputs(node.out, ["alias.json"], 1000)


def test_an_interpreter_under_tmp_is_bound_over_the_tmpfs(sandbox: BubblewrapSandbox, tmp_path: Path) -> None:
    """A checkout (and its venv) under /tmp must stay visible: the binds come after the tmpfs."""
    out = tmp_path / "out"
    out.mkdir()
    argv = sandbox.build_command(SandboxRun(command=["python", "-c", "pass"], mounts=[], output_dir=out), {})
    tmpfs = max(i for i, a in enumerate(argv) if a == "--tmpfs" and argv[i + 1] == "/tmp")
    interpreter = next(i for i, a in enumerate(argv) if a == "--ro-bind" and argv[i + 1] == sys.prefix)
    assert tmpfs < interpreter
