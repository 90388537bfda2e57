"""``agora peers …``: the participants this node talks to."""

from __future__ import annotations

from typing import Annotated

import typer

from kernel.cli import HomeOpt, JsonOpt, TokenOpt, UrlOpt, connect_from, console, handle_errors, print_json

app = typer.Typer(help="Peers: other organisations' nodes.", no_args_is_help=True)


@app.command("add")
@handle_errors
def add(
    ctx: typer.Context,
    peer_url: Annotated[str, typer.Argument(help="the peer's protocol endpoint, e.g. http://127.0.0.1:8001")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Add a peer: its signed identity statement gives its address and name."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        peer = client.post_json("/api/v1/participants", {"url": peer_url})
    console.print(f"[green]peer[/] {peer['name']}  {peer['address']}  {peer['endpoint']}")


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """This node and its peers."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        rows = client.get("/api/v1/participants")
    if as_json:
        print_json(rows)
        return
    for row in rows:
        marker = "self" if row["is_self"] else "peer"
        console.print(f"{marker:5} {row['address']}  {row['name']:24} {row['endpoint']}")
