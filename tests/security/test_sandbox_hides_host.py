"""A job in the bubblewrap sandbox learns nothing of the host it runs on.

The probe below is the hostile job: it reads every process's command line and environment it
can see (``/proc/1`` is bubblewrap's own), its mount table, its own environment and uid, the
file descriptors it holds, the host name, ``/``, ``/tmp``, ``/etc``, ``/dev``, ``/sys``, tries
to create a user namespace, and tries the directory of another job running at the same time;
then it prints all of it. The tests look for the node's secrets, argv, environment values,
home and the other job's directory in that report, and check the job's uid from the host.

First against the sandbox itself (the test process is the node), then end to end: a real
provider node with a secret-looking ``AGORA_KEY_PASSPHRASE``, two jobs at once, and the
report read back from the provider's log.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.job_orgs import FINAL, job_orgs, poll, submit
from tests.job_orgs import bundle as job_bundle
from training_jobs.sandbox import BubblewrapSandbox, Limits, Mount, SandboxRun

SECRET = "s3cr3t-passphrase-" + os.urandom(8).hex()
PROBE = r"""
import ctypes, json, os, socket, sys

def read(path, limit=20000):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError as exc:
        return f"<{type(exc).__name__}>"

def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        return f"<{type(exc).__name__}>"

other = json.load(open(sys.argv[1]))["other"]
libc = ctypes.CDLL(None, use_errno=True)
found = {
    "uid": os.getuid(),
    "environ": dict(os.environ),
    "argv": sys.argv,
    "pid1_cmdline": read("/proc/1/cmdline"),
    "mountinfo": read("/proc/self/mountinfo"),
    "procs": {
        pid: {"cmdline": read(f"/proc/{pid}/cmdline"), "environ": read(f"/proc/{pid}/environ")}
        for pid in os.listdir("/proc") if pid.isdigit()
    },
    "listings": {p: listing(p) for p in ("/", "/tmp", "/etc", "/dev", "/sys", "/root", "/out")},
    "fds": {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.lexists(f"/proc/self/fd/{fd}")},
    "hostname": socket.gethostname(),
    "other_job": {"list": listing(other), "data": listing(other + "/data"),
                  "read": read(other + "/data/train.npz", 100)},
    "new_user_namespace": libc.unshare(0x10000000) == 0,
}
open("/out/written-by-the-job", "w").write("x")
text = json.dumps(found)
for i in range(0, len(text), 400):
    print("FOUND " + text[i:i + 400])
"""


def report(lines: list[str]) -> tuple[dict[str, Any], str]:
    """The probe's findings, and every line of the run as one text to search."""
    chunks = [line.removeprefix("FOUND ") for line in lines if line.startswith("FOUND ")]
    return json.loads("".join(chunks)), "\n".join(lines)


def assert_nothing_of_the_host(found: dict[str, Any], text: str, *, home: Path, other: Path) -> None:
    assert SECRET not in text
    assert str(home) not in text, "the node's home (or a path under it) is visible"
    assert other.name not in text, "the other job's directory is visible"
    assert found["other_job"] == {"list": "<FileNotFoundError>", "data": "<FileNotFoundError>",
                                  "read": "<FileNotFoundError>"}  # fmt: skip
    assert found["procs"]["1"]["environ"] == ""  # bubblewrap runs with an empty environment
    cmdline = found["pid1_cmdline"].split("\0")
    assert cmdline[1:3] == ["--args", cmdline[2]] and "--bind" not in cmdline and "--ro-bind" not in cmdline
    assert set(found["procs"]) <= {"1", "2"}, found["procs"].keys()  # bubblewrap's init and the job
    assert found["hostname"] == "sandbox"
    # /tmp is the job's own tmpfs; only a node whose Python lives under /tmp (a CI checkout)
    # shows the top directory of that installation there, read-only (SECURITY.md says so)
    assert set(found["listings"]["/tmp"]) <= _python_under_tmp(), found["listings"]["/tmp"]
    assert found["listings"]["/sys"] == "<FileNotFoundError>"
    assert found["listings"]["/etc"] == [
        "group",
        "hosts",
        "ld.so.cache",
        "localtime",
        "nsswitch.conf",
        "passwd",
    ]
    assert found["listings"]["/dev"] == sorted(
        ["core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty",
         "urandom", "zero"]
    )  # fmt: skip
    assert set(found["fds"]) <= {"0", "1", "2", "3"}  # stdin, stdout/err, and the listing's own
    assert found["new_user_namespace"] is False
    assert found["environ"].keys() <= {
        "PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONUNBUFFERED",
        "OMP_NUM_THREADS", "PWD", "PYTHONHASHSEED", "AGORA_DATA", "AGORA_OUTPUT", "AGORA_PARAMS_FILE",
        "AGORA_SEED",
    }  # fmt: skip


# -- the sandbox itself -------------------------------------------------------------------------


def test_a_job_sees_nothing_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGORA_KEY_PASSPHRASE", SECRET)
    home = tmp_path / "agora-home"
    (home / "keystore.json").parent.mkdir(parents=True)
    (home / "keystore.json").write_text(SECRET)
    jobs = {}
    for name in ("job-a1b2c3", "job-d4e5f6"):
        for sub in ("code", "data", "out"):
            (home / "jobs" / name / sub).mkdir(parents=True)
        jobs[name] = home / "jobs" / name
    other, this = jobs["job-a1b2c3"], jobs["job-d4e5f6"]
    (other / "data" / "train.npz").write_text("the other consumer's rows")
    (this / "code" / "probe.py").write_text(PROBE)
    (this / "data" / "params.json").write_text(json.dumps({"other": str(other)}))
    box = BubblewrapSandbox(protected=[home / "keystore.json"])
    box.check()

    def run(job: Path, command: list[str], lines: list[str]) -> None:
        outcome = box.run(
            SandboxRun(
                command=command,
                mounts=[Mount(job / "code", "/job"), Mount(job / "data", "/data")],
                output_dir=job / "out",
                limits=Limits(wall_seconds=30),
            ),
            on_output=lines.append,
        )
        assert outcome.ok, (outcome, lines[-5:])

    other_lines: list[str] = []
    running = threading.Thread(
        target=run, args=(other, ["python", "-c", "import time; time.sleep(3)"], other_lines)
    )
    running.start()
    time.sleep(0.5)
    lines: list[str] = []
    run(this, ["python", "/job/probe.py", "/data/params.json"], lines)
    running.join()
    found, text = report(lines)
    assert_nothing_of_the_host(found, text, home=home, other=other)
    assert found["argv"] == ["/job/probe.py", "/data/params.json"]
    owner = os.stat(this / "out" / "written-by-the-job").st_uid
    assert owner != 0, "the job ran as root on the host"
    if os.getuid() == 0:  # a root node stages the run and drops the job to an unprivileged uid
        assert owner == 65534 and box.isolation["job_host_uid"] == 65534, box.isolation
        assert box.isolation["mount_sources"] == "hidden", box.isolation
        assert "overlay" in found["mountinfo"]


# -- end to end ---------------------------------------------------------------------------------

SLEEPER = "import time\nprint('holding the other job directory')\ntime.sleep(25)\n"


@pytest.mark.slow
def test_a_job_on_a_real_node_sees_nothing_of_it(tmp_path: Path) -> None:
    offerings = {"digits": {"access_modes": ["compute"], "policy": {"template": "provide-access"}}}
    with job_orgs(
        tmp_path,
        offerings,
        {"digits": ("digits", "compute")},
        workers=2,
        env={"AGORA_KEY_PASSPHRASE": SECRET},
    ) as orgs:
        acme = orgs.acme.node
        agreement = orgs.agreements["digits"]
        sleeper_dir, sleeper_spec = job_bundle(tmp_path, "sleeper", SLEEPER, resources={"wall_time": "40s"})
        first = submit(orgs.beta, orgs.acme, agreement, sleeper_dir, sleeper_spec).json()
        running = poll(lambda: orgs.beta.api("GET", f"/jobs/{first['id']}").json(), ("RUNNING", *FINAL))
        assert running["state"] == "RUNNING", running
        other = acme.home / "jobs" / running["peer_pid"].rsplit(":", 1)[-1]
        assert (other / "data" / "train.npz").is_file()

        probe_dir, probe_spec = job_bundle(
            tmp_path, "probe", PROBE.replace("json.load(open(sys.argv[1]))", "json.load(open('/data/params.json'))"),
            parameters={"other": str(other)},
        )  # fmt: skip
        second = submit(orgs.beta, orgs.acme, agreement, probe_dir, probe_spec).json()
        uids: set[int] = set()
        while (job := orgs.beta.api("GET", f"/jobs/{second['id']}").json())["state"] not in FINAL:
            uids |= {
                p.info["uids"].real
                for p in psutil.process_iter(["cmdline", "uids"])
                if "train.py" in " ".join(p.info["cmdline"] or [])
            }
            time.sleep(0.05)
        assert uids and 0 not in uids, uids  # seen from the host: no job process is root
        own = orgs.acme.api("GET", f"/jobs/{job['peer_pid']}/logs", params={"limit": 5000}).json()["lines"]
        found, text = report([line["line"] for line in own if line["stage"] == "job"])
        assert_nothing_of_the_host(found, text, home=acme.home, other=other)
        node_argv = " ".join(psutil.Process(acme.proc.pid).cmdline())
        assert node_argv not in text and f"--port {acme.port}" not in text
        for name in ("AGORA_HOME", "AGORA_PUBLIC_URL", "AGORA_CHAIN_URL", "AGORA_CHAIN_REGISTRY", "PATH"):
            assert acme.env[name] not in text, name


def test_a_job_cannot_pass_its_words_off_as_the_sandboxs(tmp_path: Path) -> None:
    """bubblewrap reports an exit code only for a command it started (``--json-status-fd``):
    after that, a line saying ``bwrap: …`` is the job's own, and no reason quotes it."""
    out, data = tmp_path / "out", tmp_path / "data"
    out.mkdir()
    data.mkdir()
    box = BubblewrapSandbox()
    code = "import sys; print('bwrap: Can\\'t find source path 0,0,5,13,9,1'); sys.exit(1)"
    outcome = box.run(SandboxRun(command=["python", "-c", code], mounts=[], output_dir=out))
    assert outcome.reason == "exited with status 1", outcome
    # a real setup failure still says so: a mount point bwrap cannot make inside a read-only mount
    (tmp_path / "inner").mkdir()
    mounts = [Mount(data, "/job"), Mount(tmp_path / "inner", "/job/inner")]
    failed = box.run(SandboxRun(command=["python", "-c", "pass"], mounts=mounts, output_dir=out))
    assert failed.reason.startswith("sandbox setup failed: "), failed


def test_stages_left_by_a_node_that_died_mid_run_are_swept() -> None:
    import tempfile

    from training_jobs.sandbox import staging

    stale = Path(tempfile.mkdtemp(prefix=staging.PREFIX))
    fresh = Path(tempfile.mkdtemp(prefix=staging.PREFIX))
    kept = Path(tempfile.mkdtemp(prefix=staging.PREFIX))
    (kept / "not-a-stage").write_text("x")  # a stage is always empty on the host: never delete files
    long_ago = time.time() - staging.STALE_SECONDS - 60
    for path in (stale, kept):
        os.utime(path, (long_ago, long_ago))
    try:
        assert staging.sweep() >= 1
        assert not stale.exists() and fresh.is_dir() and (kept / "not-a-stage").is_file()
    finally:
        for path in (fresh, kept):
            (path / "not-a-stage").unlink(missing_ok=True)
            path.rmdir()


def _python_under_tmp() -> set[str]:
    """The first directory under /tmp of the node's interpreter and its environment, if any."""
    paths = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.executable)}
    return {p.relative_to("/tmp").parts[0] for p in paths if p.is_relative_to("/tmp") and p != Path("/tmp")}
