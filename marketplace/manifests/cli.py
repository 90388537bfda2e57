"""``agora plan -f FILE`` and ``agora apply -f FILE``."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from kernel.cli import HomeOpt, JsonOpt, TokenOpt, UrlOpt, connect_from, console, handle_errors, print_json
from kernel.errors import InvalidInput
from kernel.hashing import sha256_file

if TYPE_CHECKING:
    from kernel.client import NodeClient

FileOpt = Annotated[
    Path, typer.Option("-f", "--file", help="the manifest (YAML or JSON)", exists=True, dir_okay=False)
]
SYMBOLS = {
    "create": "[green]+[/]",
    "new-version": "[cyan]↑[/]",
    "update": "[yellow]~[/]",
    "retire": "[red]-[/]",
    "reactivate": "[green]↺[/]",
    "alias": "[magenta]@[/]",
    "add-peer": "[green]+[/]",
}


MAX_SUITE_BYTES = 256 * 1024  # one expectation suite file


@contextmanager
def prepared(file: Path) -> Iterator[tuple[dict[str, Any], dict[str, Path]]]:
    """:func:`prepare_request` with a scratch directory for the bytes of DVC sources."""
    with tempfile.TemporaryDirectory(prefix="agora-manifest-") as work:
        yield prepare_request(file, Path(work))


def prepare_request(file: Path, work: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Validate locally (errors name file and line), hash the sources next to the manifest,
    resolve ``dvc://`` sources (their bytes land in ``work``) and read suite files."""
    from marketplace.manifests.loader import load_manifest
    from quality import dvc_source
    from quality.spec import SuiteFile

    text = file.read_text()
    loaded = load_manifest(text, file.name)

    def refused(index: int, name: str, message: str) -> InvalidInput:
        line = loaded.document.line_of(f"offerings.{index}.{name}")
        return InvalidInput(f"{file.name}:{line}: offerings.{index}.{name}: {message}")

    sources: dict[str, Any] = {}
    suites: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for index, item in enumerate(loaded.manifest.offerings):
        if isinstance(item.expectations, SuiteFile):
            try:
                suites[item.name] = _read_suite(file.parent, item.expectations.suite)
            except InvalidInput as exc:
                raise refused(index, "expectations.suite", exc.detail) from None
        if dvc_source.is_dvc(item.source):
            try:
                ref = dvc_source.parse(item.source)
                resolved = dvc_source.resolve(ref, file.parent, work / f"{index}-{item.name}")
            except InvalidInput as exc:
                raise refused(index, "source", exc.detail) from None
            sources[item.name] = {
                "sha256": resolved.sha256,
                "size": resolved.size,
                "source": resolved.source(),
            }
            paths[item.name] = resolved.file
            continue
        if Path(item.source).is_absolute():
            continue  # read on the node itself, under its AGORA_IMPORT_DIRS
        path = (file.parent / item.source).resolve()
        if not path.is_file():
            raise refused(index, "source", f"no such file {path}")
        digest, size = sha256_file(path)
        if size == 0:
            raise refused(index, "source", f"{path} is empty")
        sources[item.name] = {"sha256": digest, "size": size}
        paths[item.name] = path
    request = {"manifest": text, "source_name": file.name, "sources": sources, "suites": suites}
    return request, paths


def _read_suite(base: Path, name: str) -> dict[str, Any]:
    """A GX suite JSON file beside the manifest, checked and reduced to what the node keeps."""
    from kernel.limits import loads
    from kernel.validation import validate
    from quality.spec import ExpectationSuite

    path = (base / name).resolve()
    if not path.is_file():
        raise InvalidInput(f"no such suite file {path}")
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise InvalidInput(f"{name} is over {MAX_SUITE_BYTES // 1024} KiB")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{name}: {exc.strerror}") from None
    try:
        data = loads(raw, what=name)
        suite = validate(ExpectationSuite, data, what=f"expectation suite {name}")
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.detail}") from None
    return suite.model_dump()


def print_plan(plan: dict[str, Any], applied: bool) -> None:
    for change in plan["changes"]:
        symbol = SYMBOLS.get(change["action"], "?")
        console.print(f"  {symbol} {change['action']:12} {change['target']}  {change['detail']}")
    for name in plan["unchanged"]:
        console.print(f"    {'unchanged':12} {name}")
    for note in plan.get("notes", []):
        console.print(f"    {'note':12} {note}")
    verb = "applied" if applied else "plan"
    console.print(f"{verb}: {plan['summary']}")


@handle_errors
def plan_command(
    ctx: typer.Context,
    file: FileOpt,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the changes a manifest asks for; changes nothing."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="offerings:write") as client:
        plan = plan_manifest(client, file)
    print_json(plan) if as_json else print_plan(plan, applied=False)


@handle_errors
def apply_command(
    ctx: typer.Context,
    file: FileOpt,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Carry out a manifest; a second apply finds nothing to do."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="offerings:write") as client:
        result = apply_manifest(client, file)
    print_json(result) if as_json else print_plan(result, applied=True)


def plan_manifest(client: NodeClient, file: Path) -> dict[str, Any]:
    with prepared(file) as (request, _):
        plan: dict[str, Any] = client.post_json("/api/v1/manifests/plan", request)
    return plan


def apply_manifest(client: NodeClient, file: Path) -> dict[str, Any]:
    """Plan, then apply, uploading only the sources the plan needs."""
    with prepared(file) as (request, paths):
        plan = client.post_json("/api/v1/manifests/plan", request)
        needed = {f"source:{name}": paths[name] for name in plan["needs_bytes"] if name in paths}
        if needed:
            result: dict[str, Any] = client.post_files(
                "/api/v1/manifests/apply", {"request": json.dumps(request)}, needed
            )
        else:
            result = client.post_json("/api/v1/manifests/apply", request)
    return result
