"""``agora offerings alias | aliases | publish``: model aliases and publishing models.

OFFERING is an offering's id or its name on this node.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from kernel.cli import (
    HomeOpt,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    connect_from,
    console,
    get_or_print,
    handle_errors,
    print_json,
)
from kernel.errors import InvalidInput

OfferingArg = Annotated[str, typer.Argument(help="offering id or name")]


@handle_errors
def alias(
    ctx: typer.Context,
    offering: OfferingArg,
    version: Annotated[int | None, typer.Argument(help="the published version the alias names")] = None,
    name: Annotated[str | None, typer.Argument(help="alias, e.g. champion or candidate")] = None,
    delete: Annotated[str | None, typer.Option("--delete", help="remove this alias")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias at a version of a model offering, or remove one (--delete NAME).

    Each move is audited and notarized."""
    if (delete is None) == (version is None or name is None):
        raise InvalidInput("give OFFERING VERSION NAME to move an alias, or OFFERING --delete NAME")
    base = f"/api/v1/offerings/{quote(offering, safe='')}/aliases"
    with connect_from(ctx)(url=url, token=token, home=home, scope="offerings:write") as client:
        if delete is not None:
            result = client.delete(f"{base}/{quote(delete, safe='')}")
        else:
            assert name is not None
            result = client.put_json(f"{base}/{quote(name, safe='')}", {"version": version})
    if as_json:
        print_json(result)
    elif delete is not None:
        console.print(f"[green]removed[/] alias {delete}; aliases now: {_names(result['aliases'])}")
    elif not result["moved"]:
        console.print(f"{result['alias']} already names version {result['version']}")
    else:
        was = f" (was v{result['from']})" if result["from"] is not None else ""
        console.print(
            f"[green]{result['alias']}[/] → v{result['version']}{was}; "
            f"anchor {result['anchor']['status']} {result['anchor']['asset_id']}"
        )


@handle_errors
def aliases(
    ctx: typer.Context,
    offering: OfferingArg,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A model offering's aliases and the version each names."""
    found = get_or_print(
        ctx,
        f"/api/v1/offerings/{quote(offering, safe='')}/aliases",
        url=url,
        token=token,
        home=home,
        as_json=as_json,
    )
    if found is None:
        return
    console.print(f"offering {found['offering_id']}  latest v{found['latest']}")
    for alias_name, number in found["aliases"].items():
        console.print(f"  {alias_name:20} v{number}")
    if not found["aliases"]:
        console.print("  no aliases: `agora offerings alias OFFERING VERSION NAME`")


@handle_errors
def publish(
    ctx: typer.Context,
    offering: OfferingArg,
    job: Annotated[
        str | None, typer.Option("--job", help="a completed job whose ONNX model to publish")
    ] = None,
    federation: Annotated[
        str | None, typer.Option("--federation", help="a completed federation whose ONNX model to publish")
    ] = None,
    alias_name: Annotated[
        str | None, typer.Option("--alias", help="point this alias at the new version")
    ] = None,
    create: Annotated[
        bool, typer.Option("--create", help="create the model offering if it does not exist")
    ] = False,
    title: Annotated[str | None, typer.Option(help="--create: the offering's title")] = None,
    description: Annotated[str, typer.Option(help="--create: what it is")] = "",
    keyword: Annotated[list[str] | None, typer.Option("--keyword", "-k", help="--create: repeatable")] = None,
    license_: Annotated[str, typer.Option("--license", help="--create: e.g. CC-BY-4.0")] = "",
    access_mode: Annotated[
        list[str] | None, typer.Option("--access-mode", "-m", help="--create: download | compute | federate")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a job's or a federation's ONNX model as a new version of a model offering.

    The version's anchor names the model's own asset as parent: `agora verify` on a download
    walks its lineage back to the data."""
    if (job is None) == (federation is None):
        raise InvalidInput("give --job JOB_ID or --federation FEDERATION_ID")
    body: dict[str, Any] = {"job": job} if job else {"federation": federation}
    if alias_name:
        body["alias"] = alias_name
    if create:
        if not title:
            raise InvalidInput("--create needs --title")
        body["create"] = {
            "kind": "model",
            "title": title,
            "description": description,
            "keywords": keyword or [],
            "license": license_,
            "access_modes": access_mode or ["download"],
        }
    with connect_from(ctx)(url=url, token=token, home=home, scope="offerings:write") as client:
        result = client.post_json(f"/api/v1/offerings/{quote(offering, safe='')}/publish", body)
    if as_json:
        print_json(result)
        return
    o = result["offering"]
    console.print(f"[green]published[/] {o['id']}  {o['title']} v{result['version']}")
    console.print(
        f"  {o['sha256']}  from {result['source']['kind']} {result['source'].get(result['source']['kind'])}"
    )
    console.print(f"  parent asset {result['source']['asset_id']}; anchor {o['anchor']['status']}")
    if result.get("alias"):
        console.print(f"  alias {result['alias']['alias']} → v{result['alias']['version']}")


def _names(found: dict[str, int]) -> str:
    return ", ".join(f"{k} → v{v}" for k, v in found.items()) or "none"


def register(app: typer.Typer) -> None:
    """Add these commands to ``agora offerings``."""
    app.command("alias")(alias)
    app.command("aliases")(aliases)
    app.command("publish")(publish)
