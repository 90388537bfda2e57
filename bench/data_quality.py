"""Validation and profile of a large CSV against a plain pandas read of the same file.

(Not named ``quality.py``: a script's directory comes first on ``sys.path``, and a module of
that name would hide the node's ``quality`` package from every script in ``bench/``.)

Writes a CSV of ``--size-mib`` MiB (numbers and categories) in a temporary directory and a
ten-expectation suite, then, in the same run, each in a fresh process whose peak RSS is read
with ``resource.getrusage(RUSAGE_CHILDREN)``:

1. the baseline: ``pandas.read_csv(FILE)`` (and, for reference, with ``engine="pyarrow"``):
   its time and its DataFrame's ``memory_usage(deep=True)``;
2. ``python -m quality.run``, what the node's quality worker runs for a version: one read,
   the suite with Great Expectations, the profile; its time (and per stage) and peak RSS;
3. a registration of the file through a real node's API (multipart upload) with the suite:
   how long the request takes, the status it answers (``validating``: it does not wait), and
   how long after it the node's worker has the outcome;
4. ``agora --help``: wall time, median of five.

    .venv/bin/python bench/data_quality.py            # 1 GiB
    .venv/bin/python bench/data_quality.py --quick    # 32 MiB smoke run

Targets: validation + profile <= 2x the plain read's time; peak memory <= 2x the plain read's
DataFrame; registration answers before the validation is done (status validating);
``agora --help`` < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _node import AGORA, TempDir, met, start_node

TIME_TARGET = 2.0
MEMORY_TARGET = 2.0
HELP_TARGET_S = 0.5
CHUNK_ROWS = 1_000_000
SITES = [f"site-{i:02d}" for i in range(20)]
TURBINES = [f"T-{i:04d}" for i in range(400)]
STATES = ["running", "idle", "fault", "maintenance"]
SCHEMA = {
    "columns": [
        {"name": "reading", "type": "integer", "role": "id"},
        {"name": "temp", "type": "float", "unit": "degC"},
        {"name": "pressure", "type": "float", "unit": "hPa"},
        {"name": "speed", "type": "float", "unit": "m/s"},
        {"name": "rpm", "type": "integer"},
        {"name": "site", "type": "category"},
        {"name": "turbine", "type": "category"},
        {"name": "state", "type": "category"},
        {"name": "label", "type": "integer", "role": "label"},
    ]
}
SUITE = {
    "name": "turbine-readings",
    "expectations": [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "temp"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "temp", "min_value": -60, "max_value": 80},
        },
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "pressure", "min_value": 900, "max_value": 1100},
        },
        {"type": "expect_column_max_to_be_between", "kwargs": {"column": "speed", "max_value": 100}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "rpm", "min_value": 0, "max_value": 3000},
        },
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "site", "value_set": SITES}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "state", "value_set": STATES}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "turbine"}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "label", "value_set": [0, 1]}},
    ],
}

MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"seconds": time.perf_counter() - t0, "code": code,
                  "peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""

PLAIN_READ = """
import json, sys, time
import pandas as pd
t0 = time.perf_counter()
frame = pd.read_csv(sys.argv[1], **json.loads(sys.argv[2]))
seconds = time.perf_counter() - t0
size = int(frame.memory_usage(deep=True).sum())
print(json.dumps({"read_s": seconds, "frame_bytes": size, "rows": len(frame)}))
"""


def write_csv(path: Path, size: int) -> tuple[int, float]:
    """Readings of turbines until the file holds ``size`` bytes; (rows, seconds)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pc

    t0 = time.perf_counter()
    rng = np.random.default_rng(12)
    rows = 0
    with path.open("wb") as f:
        header = True
        while f.tell() < size:
            n = CHUNK_ROWS
            table = pa.table(
                {
                    "reading": np.arange(rows, rows + n, dtype=np.int64),
                    "temp": np.round(rng.normal(12, 9, n), 2),
                    "pressure": np.round(rng.normal(1013, 12, n), 1),
                    "speed": np.round(rng.gamma(2.0, 3.5, n), 2),
                    "rpm": rng.integers(0, 3000, n),
                    "site": pa.array(np.array(SITES)[rng.integers(0, len(SITES), n)]),
                    "turbine": pa.array(np.array(TURBINES)[rng.integers(0, len(TURBINES), n)]),
                    "state": pa.array(np.array(STATES)[rng.integers(0, len(STATES), n)]),
                    "label": rng.integers(0, 2, n),
                }
            )
            pc.write_csv(table, f, pc.WriteOptions(include_header=header, quoting_style="none"))
            header = False
            rows += n
    return rows, time.perf_counter() - t0


def measured(cmd: list[str], cwd: Path) -> tuple[dict[str, Any], str]:
    """Run ``cmd`` under a small parent that reports its wall time and peak RSS; (figures, stdout)."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, cwd=cwd, timeout=7200
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{cmd[:4]} failed:\n{out.stderr[-3000:]}")
    figures = json.loads(lines[-1])
    if figures["code"] != 0:
        raise RuntimeError(f"{cmd[:4]} exited with {figures['code']}:\n{out.stderr[-3000:]}")
    return figures, "\n".join(lines[:-1])


def plain_read(path: Path, tmp: Path, **options: Any) -> dict[str, Any]:
    figures, stdout = measured([sys.executable, "-c", PLAIN_READ, str(path), json.dumps(options)], tmp)
    return {**figures, **json.loads(stdout)}


def validation(path: Path, tmp: Path) -> dict[str, Any]:
    job = {
        "media_type": "text/csv",
        "schema": SCHEMA,
        "suite": SUITE,
        "min_count": 10,
        "max_memory": 8 * 1024**3,  # AGORA_QUALITY_MAX_MEMORY's default: the run the node would do
        "offering": "bench",
        "version": 1,
        "dataset_sha256": "00" * 32,
    }
    (tmp / "job.json").write_text(json.dumps(job))
    out = tmp / "out.json"
    figures, _ = measured(
        [sys.executable, "-I", "-m", "quality.run", str(tmp / "job.json"), str(path), str(out)], tmp
    )
    output = json.loads(out.read_text())
    if not output.get("ok"):
        raise RuntimeError(f"the validation did not run: {output.get('reason')}")
    return {**figures, **output["figures"], "summary": output["summary"]}


def registration(path: Path, tmp: Path, timeout: float) -> dict[str, Any]:
    home = tmp / "home"
    home.mkdir()
    node = start_node(home)
    try:
        token = node.token("admin")
        headers = {"Authorization": f"Bearer {token}"}
        meta = {
            "title": "Turbine readings",
            "media_type": "text/csv",
            "access_modes": ["download"],
            "schema": SCHEMA,
            "expectations": SUITE,
        }
        with httpx.Client(timeout=timeout) as client, path.open("rb") as f:
            t0 = time.perf_counter()
            r = client.post(
                f"{node.url}/api/v1/offerings",
                headers=headers,
                files={"metadata": (None, json.dumps(meta)), "file": (path.name, f, "text/csv")},
            )
            registered_s = time.perf_counter() - t0
            if r.status_code != 201:
                raise RuntimeError(f"registration failed: HTTP {r.status_code}: {r.text[:2000]}")
            answered = r.json()["quality_status"]
            oid = r.json()["id"]
            seen = [answered]
            while True:
                version = client.get(f"{node.url}/api/v1/offerings/{oid}", headers=headers).json()[
                    "versions"
                ][0]
                if version["quality_status"] != seen[-1]:
                    seen.append(version["quality_status"])
                if version["quality_status"] not in ("validating", "none"):
                    break
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"not validated after {timeout} s:\n{node.log_tail()}")
                time.sleep(0.25)
            done_s = time.perf_counter() - t0
        return {
            "registered_s": registered_s,
            "answered": answered,
            "statuses": seen,
            "validated_after_s": done_s - registered_s,
        }
    finally:
        node.stop()


def help_time() -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([AGORA, "--help"], capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="CSV size in MiB (default 1024)")
    parser.add_argument("--quick", action="store_true", help="a 32 MiB smoke run")
    parser.add_argument("--no-node", action="store_true", help="skip the registration through a node")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a registration may take")
    args = parser.parse_args()
    size_mib = 32 if args.quick else args.size_mib
    if size_mib <= 0:
        parser.error("--size-mib must be positive")

    with TempDir("agora-bench-quality-") as tmp:
        data = tmp / "readings.csv"
        rows, write_s = write_csv(data, size_mib * 1024 * 1024)
        actual = data.stat().st_size
        print(f"wrote {actual / 2**20:.0f} MiB ({rows:,} rows, 9 columns) in {write_s:.1f} s")
        subprocess.run(["cat", str(data)], stdout=subprocess.DEVNULL, check=True)  # page cache warm alike

        plain = plain_read(data, tmp)
        arrow = plain_read(data, tmp, engine="pyarrow")
        ours = validation(data, tmp)
        node = None if args.no_node else registration(data, tmp, args.timeout)
    help_s = help_time()

    df_mb = plain["frame_bytes"] / 1e6
    work_s = ours["validate_s"] + ours["profile_s"]
    print()
    print(f"{'':38}{'seconds':>9}{'peak RSS MB':>13}{'DataFrame MB':>14}")
    print(
        f"{'pandas.read_csv (C engine)':38}{plain['read_s']:>9.2f}{plain['peak_rss'] / 1e6:>13.0f}"
        f"{df_mb:>14.0f}"
    )
    print(
        f"{'pandas.read_csv(engine=pyarrow)':38}{arrow['read_s']:>9.2f}{arrow['peak_rss'] / 1e6:>13.0f}"
        f"{arrow['frame_bytes'] / 1e6:>14.0f}"
    )
    print(
        f"{'quality.run: whole process':38}{ours['seconds']:>9.2f}{ours['peak_rss'] / 1e6:>13.0f}"
        f"{ours['frame_bytes'] / 1e6:>14.0f}"
    )
    print(f"{'  read (pandas, declared categories)':38}{ours['read_s']:>9.2f}")
    print(f"{'  validate (GX, 10 expectations)':38}{ours['validate_s']:>9.2f}")
    print(f"{'  profile':38}{ours['profile_s']:>9.2f}")
    startup = ours["seconds"] - ours["read_s"] - work_s
    print(f"{'  start-up (imports) and output':38}{startup:>9.2f}")
    summary = ours["summary"]
    print(f"suite: {summary['passed']} passed, {summary['failed']} failed of {summary['evaluated']}")
    if node is not None:
        print(
            f"registration through the API: {node['registered_s']:.2f} s, answered {node['answered']}; "
            f"outcome {node['statuses'][-1]} {node['validated_after_s']:.2f} s after the answer "
            f"(statuses seen: {' -> '.join(node['statuses'])})"
        )
    print(f"agora --help: {help_s:.3f} s (median of 5)")

    time_ratio = work_s / plain["read_s"]
    whole_ratio = ours["seconds"] / plain["read_s"]
    memory_ratio = ours["peak_rss"] / plain["frame_bytes"]
    print()
    print(
        f"validate + profile / plain read: {time_ratio:.2f}x; "
        f"the whole run (its own read included): {whole_ratio:.2f}x"
    )
    print(
        f"peak RSS of the run / plain read's DataFrame: {memory_ratio:.2f}x "
        f"(/ its own DataFrame: {ours['peak_rss'] / ours['frame_bytes']:.2f}x)"
    )
    checks = [
        f"validate + profile <= {TIME_TARGET}x read: {met(time_ratio <= TIME_TARGET)} ({time_ratio:.2f}x)",
        f"whole run <= {TIME_TARGET}x read: {met(whole_ratio <= TIME_TARGET)} ({whole_ratio:.2f}x)",
        f"peak memory <= {MEMORY_TARGET}x DataFrame: {met(memory_ratio <= MEMORY_TARGET)} "
        f"({memory_ratio:.2f}x)",
        f"agora --help < {HELP_TARGET_S} s: {met(help_s < HELP_TARGET_S)} ({help_s:.3f} s)",
    ]
    if node is not None:
        waits = node["answered"] == "validating"
        checks.append(f"registration does not wait: {met(waits)} (answered {node['answered']})")
    print("targets: " + "; ".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
