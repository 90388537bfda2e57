"""``agora credentials …``: verifiable credentials this node issues, holds and trusts.

``issue`` signs offline, with the organisation key of the node home (``--home``), so an
issuer's key never needs a running node; the other commands talk to the node's management
API (``/api/v1/credentials``, scope admin).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import typer

from kernel.cli import (
    HomeOpt,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    connect_from,
    console,
    handle_errors,
    print_json,
)
from kernel.errors import InvalidInput

app = typer.Typer(help="Verifiable credentials: issue, hold, trust (DCP).", no_args_is_help=True)
trust_app = typer.Typer(help="Issuers whose credentials this node accepts.", no_args_is_help=True)
app.add_typer(trust_app, name="trust")
BASE = "/api/v1/credentials"


def parse_claims(pairs: list[str]) -> dict[str, object]:
    """``k=v`` pairs as claims; a value that reads as JSON (a number, true, a list) is taken as such."""
    claims: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"a claim is key=value, not {pair[:80]!r}")
        try:
            claims[key.strip()] = json.loads(value)
        except ValueError:
            claims[key.strip()] = value
    return claims


@app.command("issue")
@handle_errors
def issue(
    subject: Annotated[str, typer.Option("--subject", help="the subject's DID")],
    type_: Annotated[str, typer.Option("--type", help="the credential type, e.g. MembershipCredential")],
    claim: Annotated[
        list[str] | None, typer.Option("--claim", help="a claim key=value about the subject; repeatable")
    ] = None,
    days: Annotated[float, typer.Option(help="days it is valid")] = 365,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write the JWT here")] = None,
    home: HomeOpt = None,
) -> None:
    """Sign a credential with this node's organisation key (offline, from --home)."""
    from connector.dcp.credentials import Signer, issue_credential
    from node.identity import org_private_key
    from node.settings import Settings

    settings = Settings.load(home=home)
    if not settings.keystore_path.exists():
        raise InvalidInput(f"no node is initialised at {settings.home}: run `agora init --name NAME` first")
    signer = Signer.secp256k1(settings.effective_did, lambda: org_private_key(settings))
    jwt = issue_credential(signer, subject=subject, type_=type_, claims=parse_claims(claim or []), days=days)
    if output is None:
        typer.echo(jwt)
        return
    output.write_text(jwt + "\n", encoding="utf-8")
    console.print(f"[green]issued[/] {type_} for {subject} by {signer.did} -> {output}")


@app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="a file holding the credential's JWT")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Keep a credential issued to this node (its signature and subject are checked)."""
    jwt = file.read_text(encoding="utf-8").strip()
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        held = client.post_json(BASE, {"jwt": jwt})
    console.print(f"[green]stored[/] {held['type']} {held['id']} from {held['issuer']}")


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The credentials this node holds."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        held = client.get(BASE)
    if as_json:
        print_json(held)
        return
    if not held:
        console.print("no credentials held")
    for row in held:
        console.print(
            f"{row['type']}  {row['id']}  from {row['issuer']}  expires {row['expires_at'] or 'never'}"
        )


@app.command("remove")
@handle_errors
def remove(
    ctx: typer.Context,
    credential_id: Annotated[str, typer.Argument(help="the credential's id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Forget a held credential."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        client.delete(f"{BASE}/{quote(credential_id, safe='')}")
    console.print(f"[green]removed[/] {credential_id}")


TypeOpt = Annotated[str | None, typer.Option("--type", help="one credential type (default: every type)")]


@trust_app.command("add")
@handle_errors
def trust_add(
    ctx: typer.Context,
    did: Annotated[str, typer.Argument(help="the issuer's DID")],
    type_: TypeOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Accept credentials (of --type, or of every type) issued by DID."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        client.post_json(f"{BASE}/trusted-issuers", {"did": did, "type": type_})
    console.print(f"[green]trusted[/] {did} for {type_ or 'every type'}")


@trust_app.command("remove")
@handle_errors
def trust_remove(
    ctx: typer.Context,
    did: Annotated[str, typer.Argument(help="the issuer's DID")],
    type_: TypeOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Stop accepting credentials issued by DID (for --type, or its every-type entry)."""
    query = urlencode({"did": did, **({"type": type_} if type_ else {})})
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        client.delete(f"{BASE}/trusted-issuers?{query}")
    console.print(f"[green]no longer trusted[/] {did} for {type_ or 'every type'}")


@trust_app.command("list")
@handle_errors
def trust_list(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The issuers this node trusts."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        rows = client.get(f"{BASE}/trusted-issuers")
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print("no trusted issuers")
    for row in rows:
        console.print(f"{row['did']}  {row['type'] or 'every type'}")
