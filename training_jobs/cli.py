"""``agora jobs …``: compute-to-data training jobs, as the consumer (and the provider) sees them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kernel.cli import (
    HomeOpt,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    connect_from,
    console,
    fetch_with_provenance,
    get_or_print,
    handle_errors,
    print_json,
)
from kernel.errors import AgoraError


class JobNotCompleted(AgoraError):
    """A submitted job that did not complete: the CLI's one-line error, exit 1."""

    title = "Job did not complete"


app = typer.Typer(help="Training jobs: your code on a provider's data, in its sandbox.", no_args_is_help=True)
FINAL = ("COMPLETED", "FAILED", "REJECTED", "CANCELLED")


def _line(job: dict[str, Any]) -> str:
    reason = f" — {job['reason']}" if job.get("reason") else ""
    percent = f" {job['progress'] * 100:3.0f}%" if job["state"] not in FINAL else ""
    return f"{job['id']}  {job['role']:8} {job['name']:20} {job['state']:12}{percent}{reason}"


@app.command("submit")
@handle_errors
def submit(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("-f", "--file", help="the job spec (YAML or JSON)", exists=True)],
    agreement: Annotated[str | None, typer.Option(help="the compute agreement (overrides the file)")] = None,
    provider: Annotated[str | None, typer.Option(help="the provider node's URL (overrides the file)")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 3600.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pack the bundle, send the job through this node to the provider; exit 0 when submitted
    (or, with --wait, completed), 1 when rejected or failed."""
    import base64

    from kernel.errors import InvalidInput
    from training_jobs import bundle as bundles
    from training_jobs.spec import load_spec

    spec = load_spec(file.read_text(), file.name)
    if agreement:
        spec.agreement = agreement
    if provider:
        spec.provider = provider
    packed = None
    if spec.code.bundle is not None:
        source = (file.parent / spec.code.bundle).resolve()
        if not source.exists():
            raise InvalidInput(f"{file.name}: code.bundle {spec.code.bundle} does not exist ({source})")
        packed = bundles.pack(source)
        spec.code.digest = bundles.digest(packed)
    body = {
        "spec": spec.model_dump(mode="json", exclude_none=True, exclude={"code": {"bundle"}}),
        "bundle": base64.b64encode(packed).decode() if packed is not None else None,
    }
    with connect_from(ctx)(url=url, token=token, home=home, scope="jobs:write") as client:
        job = client.post_json("/api/v1/jobs", body)
        if not as_json:
            console.print(
                f"job {job['id']}: {job['state']}" + (f" — {job['reason']}" if job["reason"] else "")
            )
            if packed is not None:
                console.print(f"code bundle sha256:{spec.code.digest} ({len(packed)} bytes)")
        if wait:
            job = _follow(client, job, timeout, quiet=as_json)
    if as_json:
        print_json(job)
    else:
        print(job["id"])
    if job["state"] in ("FAILED", "REJECTED", "CANCELLED") or (wait and job["state"] != "COMPLETED"):
        ended = "ended" if job["state"] in FINAL else "is still"
        raise JobNotCompleted(f"job {job['id']} {ended} {job['state']}: {job['reason'] or 'no reason given'}")


def _print_log(page: dict[str, Any]) -> None:
    for line in page["lines"]:
        console.print(f"{line['stage']:6} {line['line']}", highlight=False, markup=False)


def _follow(client: Any, job: dict[str, Any], timeout: float, *, quiet: bool) -> dict[str, Any]:
    """Print the job's log and state changes until it ends (or ``timeout``). Once the job has
    ended its log is read until the provider says it is complete (the tail of a job's output,
    when the offering's terms release only that, comes last; see ``log_is_whole``)."""
    from training_jobs.joblog import log_is_whole

    deadline = time.monotonic() + timeout
    after, state = 0, job["state"]
    while True:
        page = {"complete": True}
        if job["state"] not in ("REJECTED",):
            after, page["complete"] = _print_new_lines(client, job["id"], after, quiet=quiet)
        if job["state"] != state and not quiet:
            console.print(f"[bold]{job['state']}[/] {job['reason']}", highlight=False)
        state = job["state"]
        if log_is_whole(job["state"], job["updated_at"], page, final_states=FINAL):
            return job
        if job["state"] not in FINAL and time.monotonic() > deadline:
            return job
        time.sleep(1.0)
        job = client.get(f"/api/v1/jobs/{job['id']}")


def _print_new_lines(client: Any, job_id: str, after: int, *, quiet: bool) -> tuple[int, bool]:
    """Read (and print) every log line after ``after``; where the next read starts and
    whether the log is complete."""
    while True:
        page = client.get(f"/api/v1/jobs/{job_id}/logs", after=after)
        after = page["next"]
        if not quiet:
            _print_log(page)
        if not page["lines"]:
            return after, bool(page.get("complete", True))


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="only this state, e.g. RUNNING")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs this node runs or sent, newest first."""
    rows = get_or_print(ctx, "/api/v1/jobs", url=url, token=token, home=home, as_json=as_json, state=state)
    for job in rows or []:
        console.print(_line(job), highlight=False)


@app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """State with its reason, progress, history and, once completed, metrics and artifacts."""
    job = get_or_print(ctx, f"/api/v1/jobs/{job_id}", url=url, token=token, home=home, as_json=as_json)
    if job is None:
        return
    console.print(_line(job), highlight=False)
    if job.get("stale"):
        console.print(f"[yellow]{job['stale']}[/]")
    for step in job["history"]:
        console.print(f"  {step['at'][:19]}  {step['state']:12} {step['reason']}", highlight=False)
    metrics = (job.get("result") or {}).get("metrics")
    if metrics:
        console.print(
            f"held-out rows {metrics.get('holdout_rows')}: ONNX accuracy {metrics.get('onnx_accuracy')}; "
            f"max |ONNX - native| {metrics.get('max_abs_diff')} on {metrics.get('probe_inputs')} probe inputs"
        )
    for name, artifact in ((job.get("result") or {}).get("artifacts") or {}).items():
        released = "released" if artifact.get("released") else "stays with the provider"
        console.print(f"{name:7} sha256:{artifact['sha256']}  {artifact['size']} bytes  {released}")


@app.command("logs")
@handle_errors
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job id")],
    follow: Annotated[bool, typer.Option("--follow", "-F", help="keep printing until the job ends")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """What the job printed, and what the provider's node did about it."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        if follow:
            _follow(client, client.get(f"/api/v1/jobs/{job_id}"), 24 * 3600.0, quiet=False)
            return
        after = 0
        while True:
            page = client.get(f"/api/v1/jobs/{job_id}/logs", after=after)
            _print_log(page)
            if not page["lines"]:
                return
            after = page["next"]


@app.command("cancel")
@handle_errors
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Cancel a job: a queued one at once, a running one is stopped by its worker."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="jobs:write") as client:
        job = client.post_json(f"/api/v1/jobs/{job_id}/cancel", {})
    console.print(_line(job), highlight=False)


@app.command("fetch")
@handle_errors
def fetch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="the job id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the model")],
    native: Annotated[bool, typer.Option("--native", help="the native model instead of ONNX")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Write the job's ONNX model (or, when released, the native one) and PATH.provenance.json;
    check it any time with ``agora verify PATH``."""
    artifact = "native" if native else "onnx"
    base = f"/api/v1/jobs/{job_id}/result"
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        fetch_with_provenance(
            client, f"{base}/provenance", f"{base}?artifact={artifact}", output, artifact=artifact
        )


@app.command("schema")
def schema() -> None:
    """Print the job spec's JSON Schema."""
    from training_jobs.spec import SCHEMA_FILE

    print(SCHEMA_FILE.read_text(), end="")
