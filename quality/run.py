"""The validation run, in a process of its own: ``python -m quality.run JOB.json DATA OUT.json``.

The node's quality worker (:mod:`quality.worker`) starts it for each dataset version to
validate or profile, so a large file's DataFrame and the Great Expectations import never live
in the server, and a crash or an out-of-memory kill costs this process, not the node.

The stages, on one read of the file:

1. read: CSV with pandas (declared category columns as Categoricals), Parquet with pyarrow;
   ``.npz`` with numpy;
2. validate: the suite with Great Expectations (:mod:`quality.expectations`), kept without rows;
3. profile: :mod:`quality.profile`, on the same DataFrame.

``JOB.json`` holds ``media_type``, ``schema``, ``suite`` (or null), ``min_count`` and the
version's ``offering``/``version``/``dataset_sha256``; ``OUT.json`` gets either
``{"ok": true, "result", "summary", "profile", "figures"}`` (figures: rows, the DataFrame's
bytes and each stage's seconds, for the node's log and ``bench/quality.py``) or
``{"ok": false, "reason"}``. A reason is a fixed sentence naming the stage and the
exception's type: library messages may quote the data (pyarrow's parse errors print the
offending line), so they go to stderr only, which the node writes to its own log.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

CSV, PARQUET, NPZ = "csv", "parquet", "npz"
UNLIMITED_ARRAY_BYTES = 8 * 1024**3  # the largest .npz array loaded when the run has no memory limit


def read_table(path: Path, kind: str, schema: dict[str, Any] | None) -> pd.DataFrame:
    """The DataFrame of a CSV or Parquet file, read once; declared category and string columns
    keep those types (a category becomes a pandas Categorical: a fraction of the memory).

    CSV goes through pandas' C parser, which converts the file in chunks: its peak is about
    twice the DataFrame, where pyarrow's reader holds the whole parsed table beside it (for
    1 GiB of CSV ``bench/quality.py`` measured a peak of 2.9 GB against 4.2 GB with pyarrow,
    whose read was faster on an idle machine: 5 s against about 9 s).
    """
    import pandas as pd

    declared = {c["name"]: c.get("type") for c in (schema or {}).get("columns") or []}
    if kind == PARQUET:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        frame = table.to_pandas(self_destruct=True, split_blocks=True)  # frees Arrow buffers as it goes
        del table
        return frame
    types = {
        name: "category" if t == "category" else "str"
        for name, t in declared.items()
        if t in ("category", "string")
    }
    return pd.read_csv(path, dtype=types or None)


def analyse(path: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Read, validate and profile one version; the output document (see the module docstring)."""
    from quality import expectations, profile
    from quality.sampling import file_format

    kind = file_format(path, str(job.get("media_type") or ""))
    suite = job.get("suite")
    schema = job.get("schema")
    min_count = int(job["min_count"])
    if kind == NPZ:
        if suite:
            return _refused("expectation suites validate tables (CSV, Parquet); this version is an .npz")
        limit = int(job.get("max_memory") or 0) or UNLIMITED_ARRAY_BYTES
        try:
            found = profile.profile_arrays(path, min_count=min_count, max_bytes=limit)
        except profile.TooLarge as exc:
            return _refused(str(exc))  # names, sizes and the limit: no value of the data
        except Exception as exc:
            raise _Failed("profile", exc) from exc
        return {"ok": True, "result": None, "summary": None, "profile": found}
    if kind is None:
        return _refused(
            f"{job.get('media_type')} is neither CSV, Parquet nor .npz: nothing to validate or profile"
        )
    started = time.perf_counter()
    frame = _stage("read", read_table, path, kind, schema)
    read = time.perf_counter()
    id_columns = {c["name"] for c in (schema or {}).get("columns") or [] if c.get("role") == "id"}
    result = summary = None
    if suite:
        try:
            rows = expectations.validate(frame, suite, id_columns=id_columns)
        except expectations.SuiteError as exc:
            return _refused(f"the suite cannot run: {exc}")
        except Exception as exc:
            raise _Failed("validate", exc) from exc
        result = expectations.document(
            rows,
            suite=suite,
            offering_id=str(job["offering"]),
            version=int(job["version"]),
            dataset_sha256=str(job["dataset_sha256"]),
        )
        summary = expectations.summary(result)
    validated = time.perf_counter()
    found = _stage("profile", profile.profile_table, frame, schema, min_count=min_count)
    figures = {
        "rows": len(frame),
        "frame_bytes": int(frame.memory_usage(deep=True).sum()),
        "read_s": read - started,
        "validate_s": validated - read,
        "profile_s": time.perf_counter() - validated,
    }
    return {"ok": True, "result": result, "summary": summary, "profile": found, "figures": figures}


class _Failed(Exception):
    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(stage)
        self.stage, self.cause = stage, cause


def _stage(stage: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise _Failed(stage, exc) from exc


def _refused(reason: str) -> dict[str, Any]:
    return {"ok": False, "reason": reason}


STAGES = {"read": "reading the file", "validate": "running the suite", "profile": "profiling the data"}


def _exit_with_parent() -> None:
    """A node killed outright (SIGKILL, out of memory) cannot end its run: the run notices its
    parent is gone within a second and exits, and the version is taken again at the restart."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m quality.run JOB.json DATA OUT.json", file=sys.stderr)
        return 2
    os.environ["GX_ANALYTICS_ENABLED"] = "False"
    job_path, data_path, out_path = (Path(a) for a in argv)
    job = json.loads(job_path.read_text(encoding="utf-8"))
    limit = int(job.get("max_memory") or 0)
    if limit > 0:  # the heap and private mappings: pandas and numpy raise MemoryError past it
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        output = analyse(data_path, job)
    except _Failed as failed:
        traceback.print_exception(failed.cause, file=sys.stderr)
        stage = STAGES[failed.stage]
        if isinstance(failed.cause, MemoryError):
            output = _refused(f"{stage} ran out of memory (AGORA_QUALITY_MAX_MEMORY: {limit} bytes)")
        else:
            why = type(failed.cause).__name__
            output = _refused(f"{stage} failed ({why}); the node's log has the details")
    Path(out_path).write_text(json.dumps(output, allow_nan=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    _exit_with_parent()
    sys.exit(main(sys.argv[1:]))
