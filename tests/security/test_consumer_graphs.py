"""Consumer graphs never run in the node process: hostile ONNX graphs meet only the audit sandbox.

A job's pickle comes alive in the export run and replaces the exported model with a graph
built with ``onnx.helper``: one that expands to gigabytes, one that loops 2**62 times. The
audit runs ONNX Runtime on it in a sandbox with memory, CPU-time and wall-clock limits, so
the job fails with the node's reason, while the provider's ``agora serve`` process — which
runs the job's worker thread — neither grows nor stops serving, and its other jobs complete.
Cancel stops a job in its export and in its audit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.job_orgs import EXAMPLES, FINAL, JobOrgs, job_orgs, poll, run_job, submit
from tests.security.hostile_jobs import carrier_job

MiB = 1024 * 1024
# the job's own limits are small; the audit gets at least 30 s of CPU and 60 s of wall time
SMALL = {"cpu_seconds": 20, "memory": "512MiB", "wall_time": "30s", "max_output": "1MiB"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobOrgs]:
    """Jobs run in two worker threads of Acme's serve process: the process measured here."""
    root = tmp_path_factory.mktemp("consumer-graphs")
    compute = {"access_modes": ["compute"], "policy": {"template": "provide-access"}}
    offerings = {
        "digits": compute,
        "digits-open-log": {**compute, "job_logs": "full"},
        "digits-once": {**compute, "policy": {"template": "n-times-usage", "params": {"count": 1}}},
    }
    agreements = {name: (name, "compute") for name in offerings}
    with job_orgs(root, offerings, agreements, workers=2) as orgs:
        yield orgs


def peak_rss(world: JobOrgs) -> int:
    """The serve process's high-water mark of resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{world.acme.node.proc.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def serving(world: JobOrgs) -> float:
    """Seconds the provider takes to answer /health (it must answer)."""
    started = time.monotonic()
    assert httpx.get(f"{world.acme.node.url}/health", timeout=10).status_code == 200
    return time.monotonic() - started


def job_state(world: JobOrgs, job_id: str) -> dict[str, object]:
    return dict(world.beta.api("GET", f"/jobs/{job_id}").json())


@pytest.mark.parametrize("size", ["huge", "large"])
def test_a_graph_that_allocates_without_bound_fails_its_job_and_the_node_does_not_grow(
    world: JobOrgs, tmp_path: Path, size: str
) -> None:
    """3 GiB: more than the audit's address space, the allocation is refused; 1.5 GiB: within
    it, but over the audit's memory limit of 1 GiB, the sandbox stops the run."""
    run_job(world.beta, world.acme, world.agreements["digits"], EXAMPLES / "digits-sklearn", _quick_sklearn())
    before = peak_rss(world)  # after a first job: the process has imported what jobs need

    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *carrier_job(tmp_path, size, "graph", repr(size), resources=SMALL),
    )

    assert job["state"] == "FAILED", job
    assert job["reason"] in (
        "ONNX Runtime fails on the node's probe inputs",
        "ONNX Runtime cannot load the model",
        "the audit of the ONNX model was stopped: memory limit of 1 GiB exceeded; the node cannot verify it",
    ), job["reason"]
    grown = peak_rss(world) - before
    print(
        f"\n{size} graph: {job['reason']}; serve process peak RSS {before / MiB:.0f} MiB, grew {grown / MiB:.1f} MiB"
    )
    assert grown < 64 * MiB, f"the serve process grew by {grown / MiB:.0f} MiB"
    assert serving(world) < 2.0


@pytest.mark.slow
def test_a_graph_that_loops_forever_is_stopped_and_other_jobs_keep_running(
    world: JobOrgs, tmp_path: Path
) -> None:
    before = peak_rss(world)
    r = submit(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *carrier_job(tmp_path, "loop", "graph", "'loop'", resources=SMALL),
    )
    assert r.status_code == 201, r.text
    looping = r.json()["id"]
    poll(lambda: job_state(world, looping), ("TRANSLATING", *FINAL), timeout=120)

    # while ONNX Runtime spins in the audit sandbox, another job runs start to end beside it
    other = run_job(
        world.beta, world.acme, world.agreements["digits"], EXAMPLES / "digits-sklearn", _quick_sklearn()
    )
    assert other["state"] == "COMPLETED", other
    assert job_state(world, looping)["state"] == "TRANSLATING"
    assert serving(world) < 2.0

    job = poll(lambda: job_state(world, looping), FINAL, timeout=180)
    assert job["state"] == "FAILED", job
    assert job["reason"] in (
        "the audit of the ONNX model was stopped: CPU time limit of 30 s exceeded; the node cannot verify it",
        "the audit of the ONNX model was stopped: wall time limit of 60 s exceeded; the node cannot verify it",
    ), job["reason"]
    grown = peak_rss(world) - before
    print(f"\nendless loop: {job['reason']}; serve process grew {grown / MiB:.1f} MiB")
    assert grown < 64 * MiB


@pytest.mark.parametrize(
    ("stage", "action", "payload"), [("VERIFYING", "sleep", "300"), ("TRANSLATING", "graph", "'loop'")]
)
def test_cancel_stops_a_job_in_its_export_and_in_its_audit(
    world: JobOrgs, tmp_path: Path, stage: str, action: str, payload: str
) -> None:
    resources = {**SMALL, "wall_time": "5m", "cpu_seconds": 300}
    r = submit(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *carrier_job(tmp_path, action, action, payload, resources=resources),
    )
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    poll(lambda: job_state(world, job_id), (stage,), timeout=120)
    time.sleep(2)  # inside the sandbox run, not between stages
    assert world.beta.api("POST", f"/jobs/{job_id}/cancel").status_code == 200
    job = poll(lambda: job_state(world, job_id), FINAL, timeout=30)
    assert job["state"] == "CANCELLED", job  # not the five minutes the run would have taken


def _quick_sklearn() -> str:
    return (EXAMPLES / "digits-sklearn" / "job.yaml").read_text().replace("max_iter: 1000", "max_iter: 100")


def test_what_the_audit_prints_about_held_out_rows_stays_with_the_provider(
    world: JobOrgs, tmp_path: Path
) -> None:
    """A graph that behaves on the probes and, on the held-out rows, makes ONNX Runtime's
    error quote a value computed from the first held-out row: on an offering whose terms
    release the job's full output, the consumer still reads nothing the audit printed."""
    from tests.job_orgs import received

    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits-open-log"],
        *carrier_job(tmp_path, "gather", "graph", "'gather'", resources=SMALL),
    )
    assert job["state"] == "FAILED", job
    print(f"\ngather graph: {job['reason']}")
    got = received(world.beta, job["id"])
    stages = {line["stage"] for line in got.log_lines}
    assert stages <= {"node", "job", "export"}, stages
    consumer_text = repr(got.status) + repr(got.log_lines)
    assert "idx" not in consumer_text and "out of bound" not in consumer_text.lower()
    provider = world.acme.api("GET", f"/jobs/{job['peer_pid']}/logs", params={"limit": 5000}).json()
    assert any(line["stage"] == "node-private" for line in provider["lines"]), "the provider reads it all"


def test_a_graph_the_audit_cannot_score_uses_up_its_agreement(world: JobOrgs, tmp_path: Path) -> None:
    """A graph whose output is text makes the audit fail on the consumer's side: the job
    FAILS as the consumer's doing and the use is not given back (else one agreement would
    buy unlimited runs)."""
    first = run_job(
        world.beta,
        world.acme,
        world.agreements["digits-once"],
        *carrier_job(tmp_path, "text", "graph", "'text'", resources=SMALL),
    )
    assert first["state"] == "FAILED", first
    assert "provider's side" not in first["reason"]
    again = submit(
        world.beta,
        world.acme,
        world.agreements["digits-once"],
        *carrier_job(tmp_path, "text-again", "graph", "'text'", resources=SMALL),
    )
    assert again.status_code == 201 and again.json()["state"] == "REJECTED", again.text
