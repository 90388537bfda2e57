"""What every ``agora`` command group shares: options, output and error handling.

Domain command groups (``marketplace/cli.py`` …) get a :class:`Connect` from the root
command's context object; it resolves ``--url``/``--token``/``--home`` into a
:class:`~kernel.client.NodeClient`, so domains never import the node package.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypeVar

import typer
from rich.console import Console

from kernel.errors import AgoraError

if TYPE_CHECKING:
    from kernel.client import NodeClient

# wide when not a terminal, so pipes and logs get whole lines (reasons, hashes, trees)
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 240)

F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="node data dir (AGORA_HOME)", show_default=False)
]
UrlOpt = Annotated[
    str | None, typer.Option("--url", help="node URL (AGORA_URL; default: this node)", show_default=False)
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="bearer token (AGORA_TOKEN; default: minted from --home)", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


class Connect(Protocol):
    def __call__(
        self, *, url: str | None, token: str | None, home: Path | None, scope: str
    ) -> NodeClient: ...


def connect_from(ctx: typer.Context) -> Connect:
    connect: Connect = ctx.obj
    return connect


def handle_errors(func: F) -> F:
    """Print an :class:`AgoraError` as the node said it and exit 1 (2 for unreachable)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AgoraError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]


def fail(exc: AgoraError) -> None:
    err_console.print(f"[bold red]error:[/] {exc.detail}", highlight=False)
    for field in exc.errors:
        err_console.print(f"  [red]{field.path}[/]: {field.message}", highlight=False)
    raise typer.Exit(2 if exc.status == 503 else 1)


def get_or_print(
    ctx: typer.Context,
    path: str,
    *,
    url: str | None,
    token: str | None,
    home: Path | None,
    as_json: bool,
    **params: Any,
) -> Any:
    """GET a resource with a read token; with ``--json`` print it and return None."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        data = client.get(path, **params)
    if as_json:
        print_json(data)
        return None
    return data


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


@contextmanager
def transfer_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar for uploads and downloads; yields an ``advance(n)`` callback."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)

        def advance(n: int) -> None:
            progress.advance(task, n)

        yield advance


def fetch_with_provenance(
    client: Any, provenance_path: str, download_path: str, output: Path, **params: str
) -> None:
    """Write a model a node serves and its provenance sidecar: the document first, then the
    bytes, checked against the sha256 the document names; says how to verify it."""
    from kernel.sidecar import write_sidecar

    doc = client.get(provenance_path, **params)
    digest, size = client.download(
        download_path, output, expected_sha256=str((doc.get("asset") or {}).get("sha256") or "") or None
    )
    sidecar = write_sidecar(output, doc)
    console.print(f"[green]fetched[/] {output}  {size} bytes  sha256:{digest}")
    console.print(f"provenance in {sidecar}; check it with: agora verify {output}")
