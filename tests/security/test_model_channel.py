"""Compute-to-data, attacked from the consumer's side: a hostile job per channel out of the node.

Two real nodes on one devchain: Acme offers the digits dataset for compute (its compute terms
at their defaults: no job output, no native models, no stored examples), and once more with
stored examples allowed. Beta submits hostile jobs, one channel each — weights holding rows,
nearest neighbours and support vectors, rows in the ONNX file's text, an export that snoops
for the held-out rows, metrics stuffed with rows, failures that would echo rows — and then
everything Beta can read of each job through its node's API (status and result, the log,
the released ONNX bytes, provenance) is searched for rows of the dataset
(:class:`tests.security.rows.RowCounter`). Target: 0 rows per channel; the figures are printed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.job_orgs import JobOrgs, job_orgs, received, run_job
from tests.security.hostile_jobs import carrier_job, echo_job, estimator_job, metrics_job, weights_job
from tests.security.rows import RowCounter, digit_rows
from training_jobs import holdout

FIGURES: dict[str, dict[str, int]] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobOrgs]:
    root = tmp_path_factory.mktemp("model-channel")
    compute = {"access_modes": ["compute"], "policy": {"template": "provide-access"}}
    offerings = {"digits": compute, "digits-examples": {**compute, "allow_stored_examples": True}}
    agreements = {name: (name, "compute") for name in offerings}
    with job_orgs(root, offerings, agreements, workers=2) as orgs:
        yield orgs
    print("\nrows of the dataset the consumer could read, per hostile job and channel:")
    for job, channels in FIGURES.items():
        print(f"  {job:28} " + ", ".join(f"{channel} {count}" for channel, count in channels.items()))


@pytest.fixture(scope="module")
def counter(world: JobOrgs) -> RowCounter:
    return RowCounter(digit_rows(world.digits))


def recovered(world: JobOrgs, counter: RowCounter, job: dict[str, Any], name: str) -> dict[str, int]:
    """Rows of the dataset in everything Beta can read of ``job``, per channel (recorded)."""
    got = received(world.beta, job["id"])
    channels = {
        "status": counter.in_json(got.status),
        "log": counter.in_json(got.log_lines),
        "onnx": counter.in_onnx(got.artifacts["onnx"]) if "onnx" in got.artifacts else set(),
        "native": counter.in_bytes(got.artifacts["native"]) if "native" in got.artifacts else set(),
        "provenance": counter.in_json(got.provenance),
    }
    FIGURES[name] = {channel: len(rows) for channel, rows in channels.items()}
    return FIGURES[name]


def nothing(counts: dict[str, int]) -> bool:
    return not any(counts.values())


def test_the_counter_finds_rows_in_every_spelling_it_reads(counter: RowCounter) -> None:
    """The control for every figure below: rows written as text, as float32 bytes, base64, in an
    ONNX file's metadata or a tensor are found; so a 0 means none was there."""
    import base64

    import onnx
    from onnx import helper, numpy_helper

    rows = counter.rows[100:103] / 16.0
    text = "ROWS:" + ",".join(f"{v:g}" for v in rows.reshape(-1))
    raw = rows.astype(np.float32).tobytes()
    model = helper.make_model(helper.make_graph([], "g", [], [], [numpy_helper.from_array(rows[:1], "t")]))
    helper.set_model_props(model, {"rows": text})
    assert counter.in_text(text) == {100, 101, 102}
    assert counter.in_bytes(raw) == counter.in_bytes(base64.b64encode(raw)) == {100, 101, 102}
    assert counter.in_json({"reason": text}) == {100, 101, 102}
    assert counter.in_json([{"line": str(int(v))} for v in counter.rows[7]]) == {7}
    assert counter.in_onnx(onnx.ModelProto.SerializeToString(model)) == {100, 101, 102}


def test_weights_holding_training_rows_are_refused(
    world: JobOrgs, counter: RowCounter, tmp_path: Path
) -> None:
    job = run_job(world.beta, world.acme, world.agreements["digits"], *weights_job(tmp_path))
    assert job["state"] == "FAILED", job
    assert (
        job["reason"].startswith("the model's weights hold ")
        and "rows of the provider's data" in job["reason"]
    )
    assert nothing(recovered(world, counter, job, "weights: 200 rows in a tensor"))


@pytest.mark.parametrize(
    ("name", "estimator", "reason"),
    [
        ("knn", "KNeighborsClassifier(3)", "rows of the provider's data"),
        ("svm", "SVC()", "stores training examples (support vectors)"),
    ],
)
def test_estimators_that_store_their_training_set_are_refused(
    world: JobOrgs, counter: RowCounter, tmp_path: Path, name: str, estimator: str, reason: str
) -> None:
    job = run_job(
        world.beta, world.acme, world.agreements["digits"], *estimator_job(tmp_path, name, estimator)
    )
    assert job["state"] == "FAILED" and reason in job["reason"], job
    assert nothing(recovered(world, counter, job, f"{name}: stored examples"))


def test_stored_examples_leave_only_where_the_offering_allows_them(
    world: JobOrgs, counter: RowCounter, tmp_path: Path
) -> None:
    """The control: the same nearest-neighbour model on the offering that allows stored
    examples completes, and the counter finds the training set in the released model."""
    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits-examples"],
        *estimator_job(tmp_path, "knn", "KNeighborsClassifier(3)"),
    )
    assert job["state"] == "COMPLETED", job
    assert job["result"]["onnx_check"]["memorized_rows"] >= 1438
    counts = recovered(world, counter, job, "knn, stored examples allowed")
    assert counts["onnx"] >= 1400  # the 1,438 training rows, less duplicates within the dataset


def test_rows_in_the_onnx_files_text_do_not_survive_the_rewrite(
    world: JobOrgs, counter: RowCounter, tmp_path: Path
) -> None:
    """The pickle comes alive in the export run and writes training rows into the exported
    file's doc strings, metadata, names and an unused tensor field; the node rewrites them."""
    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *carrier_job(tmp_path, "text", "smuggle", "X[:20]"),
    )
    assert job["state"] == "COMPLETED", job
    counts = recovered(world, counter, job, "text: rows in ONNX names, docs, metadata")
    assert nothing(counts)
    released = received(world.beta, job["id"]).artifacts["onnx"]
    assert b"ROWS" not in released and b"agora" in released


def test_the_export_run_cannot_read_the_held_out_rows(
    world: JobOrgs, counter: RowCounter, tmp_path: Path
) -> None:
    """The pickle walks the export sandbox's file system and reports every data file's rows
    (to the provider's log, which only the provider reads); none is a held-out row."""
    job = run_job(
        world.beta, world.acme, world.agreements["digits"], *carrier_job(tmp_path, "snoop", "snoop", "None")
    )
    assert job["state"] == "COMPLETED", job
    own = next(j for j in world.acme.api("GET", "/jobs").json() if j["peer_pid"] == job["id"])
    lines = world.acme.api("GET", f"/jobs/{own['id']}/logs", params={"limit": 5000}).json()["lines"]
    snooped = [
        line["line"] for line in lines if line["stage"] == "export" and line["line"].startswith("SNOOP")
    ]
    assert any(s == "SNOOP open /holdout/holdout.npz: absent" for s in snooped), snooped
    assert not any("holdout" in s for s in snooped if s.startswith("SNOOP files"))
    seen = {h for s in snooped if s.startswith("SNOOP rows") for h in s.split(" ", 3)[3].split(",")}
    assert len(seen) >= 32  # it did read the probe inputs: the training rows among them

    data = world.digits.read_bytes()
    features, labels = holdout.read_dataset(data)
    split = holdout.split(features, labels, fraction=0.2, seed_hex=hashlib.sha256(data).hexdigest())

    def hashes(X: np.ndarray) -> set[str]:
        rows = np.rint(X.reshape(len(X), -1) * 16).astype(np.int64)
        return {hashlib.sha1(row.tobytes()).hexdigest()[:10] for row in rows}

    held_out_only = hashes(split.holdout_X) - hashes(split.train_X)
    FIGURES["snoop: held-out rows seen by export"] = {"export sandbox": len(seen & held_out_only)}
    assert len(held_out_only) > 300 and not seen & held_out_only
    assert nothing(recovered(world, counter, job, "snoop: consumer's view"))


@pytest.mark.parametrize(
    ("name", "metrics", "names", "reason"),
    [
        (
            "metrics-row",
            "{f'p{i}': v for i, v in enumerate(pixels)}",
            [f"p{i}" for i in range(8)],
            "more than 8 entries",
        ),
        ("metrics-text", "{'note': ','.join(map(str, pixels))}", ["note"], "is not a number"),
        ("metrics-nested", "{'rows': {'a': pixels}}", ["rows"], "is not a number"),
        (
            "metrics-names",
            "{'r_' + '_'.join(map(str, pixels[:20])): 1.0}",
            ["loss"],
            "not a metric the job spec declared",
        ),
    ],
)
def test_metrics_stuffed_with_rows_fail_the_job(
    world: JobOrgs,
    counter: RowCounter,
    tmp_path: Path,
    name: str,
    metrics: str,
    names: list[str],
    reason: str,
) -> None:
    job = run_job(
        world.beta, world.acme, world.agreements["digits"], *metrics_job(tmp_path, name, metrics, names)
    )
    assert job["state"] == "FAILED" and reason in job["reason"], job
    assert nothing(recovered(world, counter, job, name))


def test_eight_numbers_are_all_the_metrics_carry(world: JobOrgs, counter: RowCounter, tmp_path: Path) -> None:
    """The bounded channel that remains: 8 declared numbers of 4 significant digits. Packed as
    tightly as the rounding allows — five pixels to a number, in its mantissa and its
    exponent — a job gets 40 of a row's 64 pixels out: no whole row."""
    packed = (
        "{f'm{i}': (1000 + k % 9000) * 10.0 ** (k // 9000 - 300) "
        "for i in range(8) for k in [sum(pixels[5 * i + j] * 17 ** j for j in range(5))]}"
    )
    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *metrics_job(tmp_path, "packed", packed, [f"m{i}" for i in range(8)]),
    )
    assert job["state"] == "COMPLETED", job
    unpacked = [pixel for i in range(8) for pixel in _unpack(job["result"]["job_metrics"][f"m{i}"])]
    training_rows = digit_rows(world.digits)
    assert any(np.array_equal(row[:40], unpacked) for row in training_rows)  # the attack worked this far
    counts = recovered(world, counter, job, "metrics: 8 packed numbers")
    assert nothing(counts)  # ... and no more: no whole row
    FIGURES["metrics: 8 packed numbers"]["pixels"] = len(unpacked)


def _unpack(value: float) -> list[int]:
    """Five pixels from one number packed as ``(1000 + k % 9000) * 10 ** (k // 9000 - 300)``."""
    import math

    for exponent in range(math.floor(math.log10(value)) - 4, math.floor(math.log10(value)) - 1):
        mantissa = round(value / 10.0**exponent)
        if 1000 <= mantissa <= 9999 and math.isclose(mantissa * 10.0**exponent, value, rel_tol=1e-9):
            k = (exponent + 300) * 9000 + mantissa - 1000
            return [k // 17**j % 17 for j in range(5)]
    raise AssertionError(f"{value} is not a packed number")


ECHOES = {
    "echo-exception": "raise RuntimeError(ROWS)\n",
    "echo-first-line": "print('bwrap: ' + ROWS, flush=True)\nsys.exit(1)\n",
    "echo-symlink": "os.symlink(ROWS[:200], '/out/model.joblib')\n",
}


@pytest.mark.parametrize("name", sorted(ECHOES))
def test_failure_reasons_do_not_echo_the_jobs_output(
    world: JobOrgs, counter: RowCounter, tmp_path: Path, name: str
) -> None:
    job = run_job(world.beta, world.acme, world.agreements["digits"], *echo_job(tmp_path, name, ECHOES[name]))
    assert job["state"] == "FAILED", job
    assert "ROWS" not in job["reason"] and not any("ROWS" in h["reason"] for h in job["history"])
    assert nothing(recovered(world, counter, job, name))


def test_an_exception_while_loading_the_model_is_not_quoted(
    world: JobOrgs, counter: RowCounter, tmp_path: Path
) -> None:
    job = run_job(
        world.beta,
        world.acme,
        world.agreements["digits"],
        *carrier_job(tmp_path, "echo-load", "raise", "X[:5]"),
    )
    assert job["state"] == "FAILED", job
    assert (
        job["reason"]
        == "the node could not load or run the sklearn model on its probe inputs, so it cannot verify it"
    )
    assert nothing(recovered(world, counter, job, "echo: exception while loading"))
    assert world.acme.api("GET", "/jobs").status_code == 200  # the provider's node keeps serving
