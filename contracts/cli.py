"""``agora verify``, ``agora devchain`` and ``agora contracts compile``.

``verify`` must start fast: web3 is imported in a background thread while the file is
hashed, so the import overlaps with the I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from kernel.cli import console, err_console, handle_errors, print_json
from kernel.errors import AgoraError

contracts_app = typer.Typer(
    help="The Solidity registry: compile and check its artifacts.", no_args_is_help=True
)

EXIT_VERIFIED, EXIT_NOT_VERIFIED, EXIT_CANNOT_CHECK = 0, 1, 2


@contracts_app.command("compile")
@handle_errors
def compile_(
    check: Annotated[bool, typer.Option("--check", help="fail when the committed artifacts differ")] = False,
) -> None:
    """Compile the Solidity sources (native solc when installed, else solcjs)."""
    from contracts.compile import check_artifacts, compile_sources, find_compiler, write_artifacts

    compiler = find_compiler()
    artifacts = compile_sources(compiler)
    if check:
        check_artifacts(artifacts)
        console.print(f"contracts/build matches the sources (solc {compiler.version}, {compiler.kind})")
        return
    for path in write_artifacts(artifacts):
        console.print(f"wrote {path} (solc {compiler.version}, {compiler.kind})")


def devchain(
    port: Annotated[int, typer.Option(help="loopback port to serve JSON-RPC on")] = 8545,
    state: Annotated[Path | None, typer.Option(help="directory that keeps the chain across restarts")] = None,
) -> None:
    """A development chain on loopback with the registry deployed, for several nodes on one
    machine. Prints the AGORA_CHAIN_URL and AGORA_CHAIN_REGISTRY lines to export."""
    import tempfile

    from contracts.devchain import serve_devchain

    data_dir = state or Path(tempfile.mkdtemp(prefix="agora-devchain-"))
    serve_devchain(data_dir, port)


def run_verify(
    target: str,
    *,
    chain_url: str | None,
    trusted_registry: str | None,
    fetch_document: Callable[[str], dict[str, Any] | None] | None,
    as_json: bool,
) -> int:
    """Verify and print; returns the exit code (0 verified, 1 not verified, 2 could not check).

    ``fetch_document`` asks a node for the provenance document of a key (the node CLI passes
    one when it knows a node); ``chain_url`` defaults to the one the document names.
    """
    from contracts.verify import CannotCheck

    importer = threading.Thread(target=_import_web3, daemon=True)
    importer.start()
    try:
        report = _verify(Path(target), target, chain_url, trusted_registry, fetch_document, importer)
    except AgoraError as exc:
        if isinstance(exc, CannotCheck) or exc.status >= 500:
            err_console.print(f"[bold yellow]COULD NOT CHECK:[/] {exc.detail}", highlight=False)
            if as_json:  # a document on stdout for every outcome, not only for verdicts
                print_json({"subject": target, "verified": False, "checked": False, "reason": exc.detail})
            return EXIT_CANNOT_CHECK
        if as_json:
            print_json({"subject": target, "verified": False, "reason": exc.detail})
        else:
            console.print(f"[bold red]NOT VERIFIED:[/] {exc.detail}", highlight=False)
        return EXIT_NOT_VERIFIED
    if as_json:
        print_json(report.as_dict())
    else:
        _print_report(report)
    return EXIT_VERIFIED if report.verified else EXIT_NOT_VERIFIED


def _import_web3() -> None:
    import web3  # noqa: F401


def _verify(
    path: Path,
    target: str,
    chain_url: str | None,
    trusted: str | None,
    fetch_document: Callable[[str], dict[str, Any] | None] | None,
    importer: threading.Thread,
) -> Any:
    from kernel.errors import InvalidInput
    from kernel.hashing import is_digest, parse_digest, sha256_file

    content_sha: str | None = None
    doc: dict[str, Any] | None = None
    if path.is_file():
        from contracts.verify import load_sidecar

        content_sha, _ = sha256_file(path)
        doc = load_sidecar(path)
        key = f"sha256:{content_sha}"
    elif is_digest(target):
        content_sha = parse_digest(target)
        key = f"sha256:{content_sha}"
    elif target.lower().startswith("0x") and len(target) == 66:
        key = target.lower()
    else:
        raise InvalidInput(f"{target} is neither a file, an asset id (0x + 64 hex) nor a sha256")
    if doc is None and fetch_document is not None:
        doc = fetch_document(key)
    importer.join()
    if doc is None and (content_sha is None or not trusted):
        # nothing to check and nothing to search the chain for: no --chain would help
        raise InvalidInput(
            f"no provenance record for {target}: no sidecar, no node that knows it"
            + ("" if trusted else ", and no --registry to search the chain for it")
        )
    from contracts.chain import RpcChain
    from contracts.verify import CannotCheck, Verifier

    rpc_url = chain_url or ((doc or {}).get("chain") or {}).get("rpc_url")
    if not rpc_url:
        raise CannotCheck("no chain to check against: give --chain URL")
    try:
        chain = RpcChain(rpc_url, None, registry=None, retries=2)
    except AgoraError as exc:
        raise CannotCheck(f"cannot reach the chain at {rpc_url}: {exc.detail}") from exc
    verifier = Verifier(chain, trusted_registry=trusted)
    if doc is None:
        assert content_sha is not None and trusted is not None  # checked above
        doc = verifier.find_by_content(content_sha, trusted)
        if doc is None:
            raise InvalidInput(
                f"no anchor for sha256:{content_sha} in registry {trusted} on chain {chain.chain_id}"
            )
    return verifier.verify(doc, str(path) if path.is_file() else target, content_sha)


def _print_report(report: Any) -> None:
    from rich.markup import escape
    from rich.tree import Tree

    def label(check: Any) -> str:
        mark = "[green]✓[/]" if check.reason is None else "[red]✗[/]"
        title = f" “{check.title}”" if check.title else ""
        return f"{mark} [bold]{check.kind}[/]{title}  sha256:{check.sha256[:16]}…  id {check.asset_id[:14]}…"

    def add(tree: Any, check: Any) -> None:
        if check.owner:
            name = f"{check.owner_name} " if check.owner_name else ""
            tree.add(f"owner    {name}({check.owner})")
        if check.anchor:
            when = f", {check.anchored_at}" if check.anchored_at else ""
            tree.add(f"anchored {check.anchor}{when}")
        if check.block_number is not None:
            tree.add(f"block    {check.block_number}, tx {check.tx_hash}")
        for fact in check.facts:
            tree.add(f"lineage  {escape(fact)}")
        if check.result_hash:
            summary = (check.result or {}).get("summary")
            tree.add(f"result   attested {check.result_hash[:16]}…" + (f": {summary}" if summary else ""))
        if check.reason:
            tree.add(f"[red]reason   {check.reason}[/]")
        for parent in check.parents:
            add(tree.add("parent " + label(parent)), parent)

    tree = Tree(label(report.root))
    add(tree, report.root)
    console.print(
        f"provenance of [bold]{report.subject}[/] on chain {report.chain_id}, registry {report.registry}"
    )
    console.print(tree)
    if report.verified:
        console.print("[bold green]VERIFIED[/]")
    else:
        console.print(f"[bold red]NOT VERIFIED:[/] {report.reason}", highlight=False)
