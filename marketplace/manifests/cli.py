"""``agora plan -f FILE`` and ``agora apply -f FILE``."""

from __future__ import annotations

import json
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
    "add-peer": "[green]+[/]",
}


def prepare_request(file: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """Validate locally (errors name file and line) and hash the sources next to the manifest."""
    from marketplace.manifests.loader import load_manifest

    text = file.read_text()
    loaded = load_manifest(text, file.name)
    sources: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    for index, item in enumerate(loaded.manifest.offerings):
        if Path(item.source).is_absolute():
            continue  # read on the node itself, under its AGORA_IMPORT_DIRS
        path = (file.parent / item.source).resolve()
        if not path.is_file():
            line = loaded.document.line_of(f"offerings.{index}.source")
            raise InvalidInput(f"{file.name}:{line}: offerings.{index}.source: no such file {path}")
        digest, size = sha256_file(path)
        if size == 0:
            line = loaded.document.line_of(f"offerings.{index}.source")
            raise InvalidInput(f"{file.name}:{line}: offerings.{index}.source: {path} is empty")
        sources[item.name] = {"sha256": digest, "size": size}
        paths[item.name] = path
    return {"manifest": text, "source_name": file.name, "sources": sources}, paths


def print_plan(plan: dict[str, Any], applied: bool) -> None:
    for change in plan["changes"]:
        symbol = SYMBOLS.get(change["action"], "?")
        console.print(f"  {symbol} {change['action']:12} {change['target']}  {change['detail']}")
    for name in plan["unchanged"]:
        console.print(f"    {'unchanged':12} {name}")
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
    request, _ = prepare_request(file)
    plan: dict[str, Any] = client.post_json("/api/v1/manifests/plan", request)
    return plan


def apply_manifest(client: NodeClient, file: Path) -> dict[str, Any]:
    """Plan, then apply, uploading only the sources the plan needs."""
    request, paths = prepare_request(file)
    plan = client.post_json("/api/v1/manifests/plan", request)
    needed = {f"source:{name}": paths[name] for name in plan["needs_bytes"] if name in paths}
    if needed:
        result: dict[str, Any] = client.post_files(
            "/api/v1/manifests/apply", {"request": json.dumps(request)}, needed
        )
    else:
        result = client.post_json("/api/v1/manifests/apply", request)
    return result
