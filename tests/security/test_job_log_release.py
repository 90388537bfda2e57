"""A job's consumer reads its log only as far as the offering's ``job_logs`` term allows.

The first tests drive the log itself (a real database, the node's own sink): what a consumer
can read under each setting, that withheld lines leave no trace in the numbering or the
paging, and that the released log only grows at its end. The last test is the hostile job
end to end: two organisations on loopback, a job that prints the provider's training rows to
stdout, to stderr and in one huge line, and a count of the rows the consumer can rebuild
from the log its node fetches — against what the provider reads of the same job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from kernel.db import make_engine
from marketplace.terms import MAX_LINE_CHARS, MAX_RELEASED_LOG_CHARS, TAIL_LINES
from node import db
from tests.job_orgs import FINAL, job_orgs, poll, submit
from tests.job_orgs import bundle as job_bundle
from tests.security.rows import RowCounter, digit_rows
from training_jobs import joblog
from training_jobs.joblog import JobLogSink, log_is_whole, read_log, read_released

SECRET = "private-detail-only-the-provider-reads"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    db.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def write_job(engine: Engine, job_id: str, output_lines: int, *, close: bool = True) -> JobLogSink:
    """A job's log as the runner writes it: node lines around the job's own output, a private
    detail, an export run's lines and one over-long line."""
    sink = JobLogSink(engine, job_id)
    sink.node("running the job's code in the sandbox")
    for i in range(output_lines):
        sink.job(f"row {i}: " + "7," * 40)
    sink.job("x" * 4000)
    sink.node("the job's code exited with status 0 after 1 s")
    sink.export("export: loading the model")
    sink.private(SECRET)
    sink.node("failed: the declared output was not produced")
    if close:
        sink.close()
    else:
        sink.flush()
    return sink


def read_all(engine: Engine, job_id: str, job_logs: str, page: int = 7) -> dict[str, Any]:
    """The whole released log, read in small pages as a follower would."""
    lines: list[dict[str, Any]] = []
    after, complete = 0, False
    while True:
        got = read_released(engine, job_id, job_logs, after=after, limit=page)  # type: ignore[arg-type]
        lines += got["lines"]
        complete = got["complete"]
        if not got["lines"]:
            return {"lines": lines, "complete": complete, "next": got["next"]}
        after = got["next"]


def output_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["stage"] != "node"]


@pytest.mark.parametrize("job_logs", ["none", "tail", "full"])
def test_positions_are_contiguous_and_private_lines_never_leave(engine: Engine, job_logs: str) -> None:
    write_job(engine, "urn:uuid:a", 300)
    log = read_all(engine, "urn:uuid:a", job_logs)
    assert [line["seq"] for line in log["lines"]] == list(range(1, len(log["lines"]) + 1))
    assert log["complete"] is True
    assert all(SECRET not in line["line"] for line in log["lines"])
    assert all(line["stage"] != "node-private" for line in log["lines"])
    node = [line["line"] for line in log["lines"] if line["stage"] == "node"]
    assert "failed: the declared output was not produced" in node  # the node's lines always arrive
    output = output_of(log["lines"])
    if job_logs == "none":
        assert output == []
    elif job_logs == "tail":
        assert 0 < len(output) <= TAIL_LINES
        assert output[-1]["line"].startswith("export: ")  # the tail is the end of the job's output
    else:
        assert len(output) == 300 + 2
        assert sum(len(line["line"]) + 1 for line in output) <= MAX_RELEASED_LOG_CHARS
    assert all(len(line["line"]) <= MAX_LINE_CHARS for line in output)


def test_the_provider_reads_everything(engine: Engine) -> None:
    write_job(engine, "urn:uuid:a", 300)
    own = read_log(engine, "urn:uuid:a", limit=5000)
    stages = [line["stage"] for line in own["lines"]]
    assert stages.count("job") == 301 and stages.count("export") == 1
    assert SECRET in [line["line"] for line in own["lines"]]
    assert max(len(line["line"]) for line in own["lines"]) == 4000
    assert own["complete"] is True


def test_hidden_output_leaves_no_trace_in_numbers_or_paging(engine: Engine) -> None:
    """Two jobs whose own output differs a thousandfold: their released logs under ``none``
    have the same lines, numbers and paging; under ``tail`` too, once the tail is full."""
    write_job(engine, "urn:uuid:small", 60)
    write_job(engine, "urn:uuid:large", 6000)
    for job_logs in ("none", "tail"):
        small, large = (
            read_all(engine, "urn:uuid:small", job_logs),
            read_all(engine, "urn:uuid:large", job_logs),
        )
        shape = [[(x["seq"], x["stage"]) for x in log["lines"]] for log in (small, large)]
        assert shape[0] == shape[1], job_logs
        assert small["next"] == large["next"]


def test_the_tail_comes_only_once_the_log_is_complete_and_the_log_only_grows(engine: Engine) -> None:
    sink = write_job(engine, "urn:uuid:a", 120, close=False)
    running = read_all(engine, "urn:uuid:a", "tail")
    assert output_of(running["lines"]) == [] and running["complete"] is False
    sink.node("completed")
    sink.close()
    ended = read_all(engine, "urn:uuid:a", "tail")
    assert ended["lines"][: len(running["lines"])] == running["lines"]  # a follower misses nothing
    assert len(output_of(ended["lines"])) == TAIL_LINES
    after = read_released(engine, "urn:uuid:a", "tail", after=running["next"], limit=5000)
    assert after["lines"] == ended["lines"][len(running["lines"]) :]


def test_full_output_stops_at_the_cap_with_one_line_saying_so(engine: Engine) -> None:
    sink = JobLogSink(engine, "urn:uuid:a")
    for _ in range(2 * MAX_RELEASED_LOG_CHARS // MAX_LINE_CHARS):
        sink.job("y" * 2000)
    sink.node("completed")
    sink.close()
    log = read_all(engine, "urn:uuid:a", "full", page=500)
    output = output_of(log["lines"])
    assert sum(len(line["line"]) + 1 for line in output) <= MAX_RELEASED_LOG_CHARS
    assert all(len(line["line"]) == MAX_LINE_CHARS and line["line"].endswith("…") for line in output)
    withheld = [line["line"] for line in log["lines"] if "withheld" in line["line"]]
    assert len(withheld) == 1 and log["lines"][-1]["line"] == "completed"


def test_a_job_cannot_fill_the_database_with_lines(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(joblog, "MAX_STORED_LINES", 1000)  # the same rule, a smaller number
    sink = JobLogSink(engine, "urn:uuid:a")
    for _ in range(1000 + 500):
        sink.job("")
    sink.node("completed")
    sink.close()
    own = read_log(engine, "urn:uuid:a", limit=5000)
    rows = own["lines"]
    while own["lines"]:
        own = read_log(engine, "urn:uuid:a", after=own["next"], limit=5000)
        rows += own["lines"]
    assert sum(1 for r in rows if r["stage"] == "job") == 1000
    assert [r["line"] for r in rows if r["stage"] == "node"][-2:] == [
        "the job printed over 1000 lines; the rest is not kept",
        "completed",
    ]


def test_a_follower_stops_once_an_ended_jobs_log_is_complete_or_never_will_be() -> None:
    from datetime import UTC, datetime, timedelta

    now, old = datetime.now(UTC).isoformat(), (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    final = ("COMPLETED", "FAILED")
    assert not log_is_whole("RUNNING", old, {"complete": True}, final_states=final)
    assert log_is_whole("COMPLETED", now, {"complete": True}, final_states=final)
    assert not log_is_whole("COMPLETED", now, {"complete": False}, final_states=final)  # the tail may follow
    assert log_is_whole("FAILED", old, {"complete": False}, final_states=final)  # its worker died


# -- end to end: a job that prints the training rows -------------------------------------------

LEAKER = """
import sys
import numpy as np

X = np.load("/data/train.npz")["X"]
pixels = np.rint(X.reshape(len(X), -1) * 16).astype(int)  # the 8x8 scans as their 0..16 grey levels
rows = [",".join(str(v) for v in row) for row in pixels]
for row in rows:
    print("ROW " + row)
for row in rows[:200]:
    print("ERR " + row, file=sys.stderr)
print("BLOB " + ";".join(rows))  # the whole training set in one line
sys.stdout.flush()
"""


def whole_log(org: Any, job_id: str) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        page = org.api("GET", f"/jobs/{job_id}/logs", params={"after": after, "limit": 500}).json()
        if not page["lines"]:
            return lines
        lines += page["lines"]
        after = page["next"]


@pytest.mark.slow
def test_a_job_printing_training_rows_leaks_only_what_the_terms_allow(tmp_path: Path) -> None:
    offerings = {
        f"logs-{mode}": {
            "access_modes": ["compute"],
            "policy": {"template": "provide-access"},
            "job_logs": mode,
        }
        for mode in ("none", "tail", "full")
    }
    agreements = {name: (name, "compute") for name in offerings}
    with job_orgs(tmp_path, offerings, agreements) as orgs:
        rows = RowCounter(digit_rows(orgs.digits))
        directory, spec = job_bundle(tmp_path, "leaker", LEAKER)
        leaked: dict[str, int] = {}
        for name in offerings:
            r = submit(orgs.beta, orgs.acme, orgs.agreements[name], directory, spec)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            job = poll(lambda: orgs.beta.api("GET", f"/jobs/{job_id}").json(), FINAL)  # noqa: B023
            assert job["state"] == "FAILED", job  # it wrote no model: only its log could carry rows
            consumer = poll_complete(orgs.beta, job["id"])
            own = rows.in_json(whole_log(orgs.acme, job["peer_pid"]))
            assert len(own) >= 1400, "the provider reads every row the job printed"
            released = [line for line in consumer if line["stage"] != "node"]
            assert all(len(line["line"]) <= MAX_LINE_CHARS for line in released)
            chars = sum(len(line["line"]) + 1 for line in released)
            leaked[name] = len(rows.in_json(consumer))
            # a row is 64 numbers 0-16: at least 127 characters however it is spelt (a row cut
            # across two lines loses one separator to the line break)
            assert leaked[name] <= chars // 126
            if name == "logs-none":
                assert released == []
            elif name == "logs-tail":
                assert 0 < len(released) <= TAIL_LINES
                # the CLI follows the consumer's log to its end: the node's lines, then the tail
                beta = orgs.beta.node
                followed = beta.cli("jobs", "logs", job["id"], "--follow", "--home", str(beta.home)).stdout
                assert followed.count("\njob ") + followed.startswith("job ") == len(released)
                assert "failed: " in followed
            else:
                assert chars <= MAX_RELEASED_LOG_CHARS
        print(f"\ndataset rows the consumer rebuilt from the log: {leaked} (of {len(own)} the provider read)")
        assert leaked["logs-none"] == 0
        assert 0 < leaked["logs-tail"] <= TAIL_LINES * MAX_LINE_CHARS // 126
        assert leaked["logs-tail"] < leaked["logs-full"] <= MAX_RELEASED_LOG_CHARS // 126


def poll_complete(beta: Any, job_id: str) -> list[dict[str, Any]]:
    """The consumer's whole log once the provider says it is complete."""
    for _ in range(100):
        lines = whole_log(beta, job_id)
        last = beta.api("GET", f"/jobs/{job_id}/logs", params={"after": len(lines)}).json()
        if last["complete"]:
            return lines
    raise AssertionError(f"the log of job {job_id} never became complete")
