"""The ``agora`` command line.

Start-up must stay fast (``agora --help`` under half a second): heavy libraries (litestar,
sqlalchemy, web3, torch, onnx) are imported inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from connector.cli import agreements_app, negotiate_command, negotiations_app, transfer_command, transfers_app
from connector.cli import app as peers_app
from connector.dcp.cli import app as credentials_app
from contracts.cli import contracts_app, devchain, run_verify
from federation.cli import app as fl_app
from kernel.cli import HomeOpt, console, err_console, fail, handle_errors
from kernel.errors import AgoraError
from marketplace.cli import app as offerings_app
from marketplace.cli import catalog_command
from marketplace.manifests.cli import apply_command, plan_command
from marketplace.policy.cli import app as policy_app
from training_jobs.cli import app as jobs_app

if TYPE_CHECKING:
    from kernel.client import NodeClient
    from node.settings import Settings

app = typer.Typer(
    name="agora",
    help="Agora: a data-space and model-marketplace node.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="Bearer tokens signed by this node.", no_args_is_help=True)
db_app = typer.Typer(help="The node's database schema.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(db_app, name="db")
app.add_typer(offerings_app, name="offerings")
app.add_typer(contracts_app, name="contracts")
app.add_typer(peers_app, name="peers")
app.add_typer(negotiations_app, name="negotiations")
app.add_typer(agreements_app, name="agreements")
app.command("negotiate")(negotiate_command)
app.command("transfer")(transfer_command)
app.add_typer(transfers_app, name="transfers")
app.add_typer(credentials_app, name="credentials")
app.add_typer(policy_app, name="policy")
app.command()(devchain)
app.command("catalog")(catalog_command)
app.command("plan")(plan_command)
app.command("apply")(apply_command)
app.add_typer(jobs_app, name="jobs")
app.add_typer(fl_app, name="fl")

CLI_TOKEN_TTL = 600


def _settings(**overrides: object) -> Settings:
    from node.settings import Settings

    return Settings.load(**overrides)


def _initialised(home: Path | None) -> Settings:
    """The settings of a node home that ``agora init`` created; else a one-line refusal."""
    from kernel.errors import ConfigurationError

    settings = _settings(home=home)
    if not settings.keystore_path.exists():
        raise ConfigurationError(
            f"no node is initialised at {settings.home}: run `agora init --name NAME` first "
            "(or pass --home / AGORA_HOME of an existing node)"
        )
    return settings


def connect(*, url: str | None, token: str | None, home: Path | None, scope: str) -> NodeClient:
    """A client for the node at ``url`` (default: this node); without a token, one is
    minted from the node's own key in ``home`` for this one command."""
    from kernel.client import NodeClient

    settings = _settings(home=home, url=url)
    base = settings.url or settings.public_url
    bearer = token or (settings.token.get_secret_value() if settings.token else None)
    if bearer is None and settings.token_key_path.exists():
        # a command that changes something also reads what it changed
        bearer = _issuer(settings).issue(sorted({scope, "catalog:read"}), CLI_TOKEN_TTL, subject="cli")
    return NodeClient(base, bearer)


def _issuer(settings: Settings):  # type: ignore[no-untyped-def]
    from node.auth import TokenIssuer

    return TokenIssuer.for_node(settings)


@app.callback()
def _root(ctx: typer.Context) -> None:
    ctx.obj = connect


@app.command()
@handle_errors
def init(
    name: Annotated[str, typer.Option(help="the organisation's name")],
    home: HomeOpt = None,
    public_url: Annotated[str | None, typer.Option(help="URL peers reach this node at")] = None,
) -> None:
    """Create the data dir, the organisation's key and the token-signing key."""
    from node.identity import init_home

    settings = _settings(home=home, public_url=public_url)
    result = init_home(settings, name, public_url)
    console.print(f"[green]initialised[/] {result.home}")
    console.print(f"participant address: [bold]{result.address}[/]")
    if result.passphrase_file:
        err_console.print(
            f"[yellow]note:[/] the keystore passphrase was generated into {result.passphrase_file}; "
            "in production set AGORA_KEY_PASSPHRASE instead and remove that file"
        )
    print(result.address)


@app.command()
@handle_errors
def serve(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="default: the port of AGORA_PUBLIC_URL")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Migrate the database, then serve the API, protocol endpoints and UI."""
    from urllib.parse import urlparse

    from node import db
    from node.app import create_app
    from node.runtime import build_runtime
    from node.server import serve as run_server

    settings = _initialised(home)
    revision = db.upgrade(settings.effective_database_url)
    err_console.print(f"database at revision {revision}")
    runtime = build_runtime(settings)
    listen_port = port or urlparse(settings.public_url).port or 8000
    run_server(
        create_app(runtime),
        host=host,
        port=listen_port,
        log_level=log_level,
        max_header_bytes=settings.max_header_bytes,
        timeout=settings.request_timeout,
    )


@app.command()
@handle_errors
def worker(
    home: HomeOpt = None,
    concurrency: Annotated[int, typer.Option(help="jobs run at the same time", min=1, max=64)] = 1,
) -> None:
    """Run queued training jobs (no HTTP server): more workers on more machines share the
    PostgreSQL queue and the object store; each job is taken by exactly one worker."""
    import signal
    import threading

    from kernel.limits import bound_recursion
    from node import db
    from node.jobs import job_pool
    from node.runtime import build_runtime

    settings = _initialised(home)
    db.upgrade(settings.effective_database_url)
    runtime = build_runtime(settings)
    bound_recursion()  # jobs' outputs are read here: a deep document fails, not the worker
    runtime.sandbox().check()
    pool = job_pool(runtime, concurrency)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pool.start()
    err_console.print(f"{concurrency} job worker(s) running with the {runtime.sandbox().kind} sandbox")
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
        runtime.close()


@token_app.command("create")
@handle_errors
def token_create(
    scope: Annotated[list[str], typer.Option("--scope", help="repeatable; e.g. catalog:read")],
    ttl: Annotated[str, typer.Option(help="lifetime: 90s, 15m, 1h, 7d")] = "1h",
    subject: Annotated[str, typer.Option(help="who the token is for")] = "operator",
    home: HomeOpt = None,
) -> None:
    """Print a bearer token signed by this node."""
    from node.auth import parse_ttl

    settings = _settings(home=home)
    print(_issuer(settings).issue(scope, parse_ttl(ttl), subject=subject))


@db_app.command("upgrade")
@handle_errors
def db_upgrade(home: HomeOpt = None) -> None:
    """Apply every migration up to the newest (Alembic ``upgrade head``)."""
    from node import db

    settings = _settings(home=home)
    console.print(f"database at revision {db.upgrade(settings.effective_database_url)}")


@db_app.command("current")
@handle_errors
def db_current(home: HomeOpt = None) -> None:
    """Print the database's current revision."""
    from node import db

    settings = _settings(home=home)
    console.print(db.current(settings.effective_database_url) or "empty (no revision applied)")


@app.command()
def verify(
    target: Annotated[
        str, typer.Argument(help="a file (with FILE.provenance.json), an asset id or a sha256")
    ],
    chain: Annotated[
        str | None, typer.Option("--chain", help="JSON-RPC URL of the chain to check against")
    ] = None,
    registry: Annotated[str | None, typer.Option("--registry", help="the registry address you trust")] = None,
    url: Annotated[str | None, typer.Option("--url", help="a node to ask for the provenance record")] = None,
    token: Annotated[str | None, typer.Option("--token", help="bearer token for --url")] = None,
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a file or asset against the chain: exit 0 verified, 1 not verified, 2 could not check.

    A file's provenance comes from FILE.provenance.json (written by downloads); without one,
    from the node at --url (or this node), or from the chain's own events with --registry.
    """
    fetch = None
    settings = _settings(home=home, url=url)
    if url or token or settings.url or settings.token_key_path.exists():

        def fetch(key: str) -> dict[str, object] | None:
            from kernel.errors import NotFound, ServiceUnavailable

            try:
                with connect(url=url, token=token, home=home, scope="catalog:read") as client:
                    doc: dict[str, object] = client.get(f"/api/v1/provenance/{key}")
                    return doc
            except (NotFound, ServiceUnavailable):
                return None

    code = run_verify(
        target,
        chain_url=chain or (settings.chain_url if settings.chain_url != "embedded" else None),
        trusted_registry=registry or settings.chain_registry or None,
        fetch_document=fetch,
        as_json=as_json,
    )
    raise typer.Exit(code)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="keep the demo's temporary home")] = False,
) -> None:
    """The end-to-end story on embedded defaults, told step by step."""
    from node.demo import run_demo

    try:
        run_demo(keep=keep)
    except AgoraError as exc:
        fail(exc)


def main() -> None:
    """Run the CLI; whatever goes wrong ends in one ``error: …`` line and a non-zero exit."""
    import sys

    from rich.markup import escape

    def error(text: str, code: int) -> None:
        err_console.print(f"[bold red]error:[/] {escape(text)}", highlight=False)
        sys.exit(code)

    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        error("aborted", 130)
    except typer.TyperException as exc:  # usage errors: a bad option, a missing file
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as click shows it
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        error(str(getattr(exc, "format_message", exc.__str__)()), int(getattr(exc, "exit_code", 2)))
    except KeyboardInterrupt:
        error("interrupted", 130)
    except AgoraError as exc:
        try:
            fail(exc)
        except typer.Exit as exit_:
            code = exit_.exit_code
    except Exception as exc:  # a fault of the CLI itself: still one line, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        error(f"{type(exc).__name__}: {first}", 1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
