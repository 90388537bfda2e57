"""``agora peers …``: the participants this node talks to."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
from kernel.errors import AgoraError, InvalidInput
from kernel.sidecar import write_sidecar

if TYPE_CHECKING:
    from kernel.client import NodeClient

app = typer.Typer(help="Peers: other organisations' nodes.", no_args_is_help=True)


@app.command("add")
@handle_errors
def add(
    ctx: typer.Context,
    peer_url: Annotated[str, typer.Argument(help="the peer's URL, e.g. http://127.0.0.1:8001")],
    did: Annotated[
        str | None,
        typer.Option(help="another DSP connector's DID (an Agora node's is the did:web of its URL)"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="another connector's name (default: its DID)")] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for its catalog (0: do not wait)")] = 30.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Add a peer: its DID document gives its keys (and an Agora node's name and address), its
    /.well-known/dspace-version its DSP base; then wait (up to --wait seconds) until this node
    has fetched its catalog."""
    body = {"url": peer_url, **({"did": did} if did else {}), **({"name": name} if name else {})}
    with connect_from(ctx)(url=url, token=token, home=home, scope="admin") as client:
        before = _crawl_state(client, None)
        peer = client.post_json("/api/v1/participants", body)
        kind = "Agora node" if peer.get("kind") == "agora" else "DSP connector"
        console.print(
            f"[green]peer[/] {peer['label']}  {kind}  {peer.get('did') or peer['address']}  {peer['dsp_url']}"
        )
        deadline = time.monotonic() + wait
        state = None
        while time.monotonic() < deadline:
            state = _crawl_state(client, peer["address"])
            if state is not None and state != before.get(peer["address"]):
                break
            time.sleep(0.2)
    if state is None or state == before.get(peer["address"]):
        console.print(f"catalog: not fetched within {wait:.0f} s; the crawler keeps trying")
    elif state["last_error"]:
        console.print(f"catalog: not fetched yet ({state['last_error']}); the crawler tries again")
    else:
        console.print(f"catalog: {state['entries']} offering(s) this node may see")


def _crawl_state(client: NodeClient, address: str | None) -> Any:
    """The node's last crawl of one peer (``address``), or of every peer by address: when it
    last succeeded, its error, how many offerings it brought."""
    states = {
        s["provider"]: {k: s[k] for k in ("last_success_at", "last_error", "entries")}
        for s in client.get("/health").get("peers", [])
    }
    return states if address is None else states.get(address)


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """This node, its peers, and participants known only from the registry (not peers)."""
    rows = get_or_print(ctx, "/api/v1/participants", url=url, token=token, home=home, as_json=as_json)
    if rows is None:
        return
    for row in rows:
        marker = "self" if row["is_self"] else "peer" if row["trusted"] else "registered"
        kind = "agora" if row.get("kind", "agora") == "agora" else "dsp"
        console.print(f"{marker:10} {kind:5} {row['address']}  {row['label']:32} {row['endpoint']}")


negotiations_app = typer.Typer(help="Contract negotiations with other organisations.", no_args_is_help=True)
agreements_app = typer.Typer(
    help="Agreements: signed by both parties, recorded on chain.", no_args_is_help=True
)
FINAL = ("FINALIZED", "TERMINATED")


@handle_errors
def negotiate_command(
    ctx: typer.Context,
    offering_id: Annotated[
        str, typer.Argument(help="the provider's offering id, or its name (see agora catalog)")
    ],
    provider: Annotated[str, typer.Option("--provider", help="the provider node's URL (a known peer)")],
    purpose: Annotated[str, typer.Option("--purpose", help="what the data will be used for")],
    mode: Annotated[str, typer.Option("--mode", help="download | compute | federate")] = "download",
    alias: Annotated[
        str | None, typer.Option("--alias", help="the version this alias names when the provider agrees")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="this version (default: the latest)")
    ] = None,
    accept_offers: Annotated[
        bool, typer.Option("--accept-offers", help="accept a counter-offer from the provider at once")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="wait until agreed or terminated")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 120.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Negotiate an agreement; prints the agreement id (exit 0) or the reason it ended (exit 1)."""
    import time

    with connect_from(ctx)(url=url, token=token, home=home, scope="negotiations:write") as client:
        offering_id = _offering_by_name(client, offering_id, provider)
        asked = {k: v for k, v in (("alias", alias), ("version", version)) if v is not None}
        n = client.post_json(
            "/api/v1/negotiations",
            {
                "offering_id": offering_id,
                "provider": provider,
                "purpose": purpose,
                "access_mode": mode,
                **asked,
                **({"accept_offers": True} if accept_offers else {}),
            },
        )
        deadline = time.monotonic() + timeout
        while wait and n["state"] not in FINAL and time.monotonic() < deadline:
            time.sleep(0.2)
            n = client.get(f"/api/v1/negotiations/{n['id']}")
    if as_json:
        print_json(n)
    else:
        console.print(f"negotiation {n['id']}: {n['state']}" + (f" — {n['reason']}" if n["reason"] else ""))
        if n["state"] == "FINALIZED":
            terms = (n.get("agreement") or {}).get("terms") or {}
            named = f" (alias {terms['alias']})" if terms.get("alias") else ""
            console.print(f"agreement {n['agreement_id']} on version {terms.get('version', '?')}{named}")
            print(n["agreement_id"])
    if n["state"] == "TERMINATED" or (wait and n["state"] != "FINALIZED"):
        ended = "ended" if n["state"] in FINAL else "is still"
        raise NegotiationNotAgreed(
            f"negotiation {n['id']} {ended} {n['state']}: {n['reason'] or 'no reason given'}"
        )


class NegotiationNotAgreed(AgoraError):
    """A negotiation that did not reach an agreement: the CLI's one-line error, exit 1."""

    title = "Negotiation not agreed"


def _offering_by_name(client: NodeClient, key: str, provider: str) -> str:
    """An offering id as given, or the id of the provider's offering of that name in the catalog copy."""
    import re

    if re.fullmatch(r"[0-9a-fA-F-]{36}", key):
        return key
    origin = provider.rstrip("/")
    addresses = [
        p["address"]
        for p in client.get("/api/v1/participants")
        if p["trusted"] and p["endpoint"].rstrip("/") == origin
    ]
    if not addresses:
        raise InvalidInput(f"{provider} is not a known peer: `agora peers add {provider}` first")
    named: list[str] = []
    cursor = None
    while True:
        page = client.get("/api/v1/catalog", provider=addresses[0], limit=200, cursor=cursor)
        named += [str(i["offering_id"]) for i in page["items"] if i.get("name") == key]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if len(named) != 1:
        found = "no offering" if not named else f"{len(named)} offerings"
        raise InvalidInput(f"{found} named {key!r} from {provider} in this node's catalog; give its id")
    return named[0]


@negotiations_app.command("list")
@handle_errors
def negotiations_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="only this state, e.g. REQUESTED")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Negotiations, newest first."""
    rows = get_or_print(
        ctx, "/api/v1/negotiations", url=url, token=token, home=home, as_json=as_json, state=state
    )
    if rows is None:
        return
    for n in rows:
        console.print(
            f"{n['id']}  {n['role']:8} {n['state']:10} {n['offering_id'][:8]}…  {n['purpose']:20} "
            f"{n['reason']}"
        )


@negotiations_app.command("show")
@handle_errors
def negotiations_show(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument()],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """State and full history with reasons: why it is stuck, or why it ended."""
    n = get_or_print(
        ctx, f"/api/v1/negotiations/{negotiation_id}", url=url, token=token, home=home, as_json=as_json
    )
    if n is None:
        return
    console.print(f"[bold]{n['id']}[/] ({n['role']}) with {n['counterparty']} — [bold]{n['state']}[/]")
    if n["reason"]:
        console.print(f"  reason: {n['reason']}")
    for e in n["history"]:
        mark = "" if e["accepted"] else " [red](refused)[/]"
        console.print(
            f"  {e['at'][:19]}  {e['from'] or '-':>10} → {e['to']:10} {e['message']:40} "
            f"by {e['signer'][:10]}… {e['reason']}{mark}"
        )
    for m in n["outbox"]:
        console.print(
            f"  waiting to deliver to {m['url']}: {m['status']}, {m['attempts']} attempt(s) {m['last_error']}"
        )
    if n["agreement"]:
        console.print(f"  agreement {n['agreement']['id']}, on chain in tx {n['agreement']['tx_hash']}")


@negotiations_app.command("approve")
@handle_errors
def negotiations_approve(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument()],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Provider: approve a request that waits for a person."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="negotiations:write") as client:
        n = client.post_json(f"/api/v1/negotiations/{negotiation_id}/approve", {})
    console.print(f"{n['id']}: {n['state']}")


@negotiations_app.command("reject")
@handle_errors
def negotiations_reject(
    ctx: typer.Context,
    negotiation_id: Annotated[str, typer.Argument()],
    reason: Annotated[str, typer.Option(help="told to the consumer")] = "rejected",
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Provider: reject a request, with the reason."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="negotiations:write") as client:
        n = client.post_json(f"/api/v1/negotiations/{negotiation_id}/reject", {"reason": reason})
    console.print(f"{n['id']}: {n['state']} — {n['reason']}")


@agreements_app.command("list")
@handle_errors
def agreements_list(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Agreements this node is party to."""
    rows = get_or_print(ctx, "/api/v1/agreements", url=url, token=token, home=home, as_json=as_json)
    if rows is None:
        return
    for a in rows:
        uses = f"{a['uses']}/{a['max_uses']}" if a["max_uses"] else str(a["uses"])
        console.print(
            f"{a['id'][:18]}…  {a['role']:8} {a['terms']['purpose']:20} uses {uses:7} "
            f"tx {(a['tx_hash'] or 'not yet')[:18]}"
        )


@agreements_app.command("show")
@handle_errors
def agreements_show(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument()],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """An agreement's terms, signatures, chain record and usage log."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        print_json(client.get(f"/api/v1/agreements/{agreement_id}"))


@handle_errors
def transfer_command(
    ctx: typer.Context,
    agreement_id: Annotated[str, typer.Argument(help="the agreement (see agora agreements list)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the file")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Fetch an offering under an agreement: the node downloads it from the provider, checks it
    against the agreed sha256 and the chain; then it is written here with PATH.provenance.json."""

    with connect_from(ctx)(url=url, token=token, home=home, scope="negotiations:write") as client:
        transfer = client.post_json("/api/v1/transfers", {"agreement_id": agreement_id})
        digest, size = client.download(
            f"/api/v1/transfers/{transfer['id']}/data", output, expected_sha256=transfer["sha256"]
        )
        doc = client.get(f"/api/v1/transfers/{transfer['id']}/provenance")
    sidecar = write_sidecar(output, doc)
    console.print(
        f"[green]transferred[/] {output}  {size} bytes  sha256:{digest} (matches the agreement and the chain)"
    )
    console.print(f"provenance in {sidecar}")


transfers_app = typer.Typer(help="Transfer processes, either role (DSP states).", no_args_is_help=True)


@transfers_app.command("list")
@handle_errors
def transfers_list(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest transfers, both roles, with their state."""
    rows = get_or_print(ctx, "/api/v1/transfers", url=url, token=token, home=home, as_json=as_json)
    for row in rows or []:
        console.print(f"{row['state']:10} {row['role']:8} {row['id']}  {row['reason']}")


def _transfer_action(action: str, summary: str) -> None:
    @transfers_app.command(action, help=summary)
    @handle_errors
    def command(
        ctx: typer.Context,
        transfer_id: Annotated[str, typer.Argument(help="the transfer (see agora transfers list)")],
        reason: Annotated[str | None, typer.Option(help="told to the other side")] = None,
        url: UrlOpt = None,
        token: TokenOpt = None,
        home: HomeOpt = None,
    ) -> None:
        with connect_from(ctx)(url=url, token=token, home=home, scope="negotiations:write") as client:
            body = {"reason": reason} if reason else {}
            row = client.post_json(f"/api/v1/transfers/{transfer_id}/{action}", body)
        console.print(f"transfer {row['id']}: {row['state']} — {row['reason']}")


for _action, _summary in (
    ("suspend", "Suspend a started transfer (its data token stops working); the other side is told."),
    ("resume", "Resume a suspended transfer (the provider issues a new token)."),
    ("complete", "Complete a started transfer."),
    ("terminate", "Terminate a transfer that is not final."),
):
    _transfer_action(_action, _summary)
