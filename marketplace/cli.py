"""``agora offerings …``: register, list, show and download this node's offerings."""

from __future__ import annotations

import json
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
    get_or_print,
    handle_errors,
    print_json,
    transfer_progress,
)
from kernel.errors import InvalidInput
from marketplace import alias_cli

app = typer.Typer(help="Offerings (datasets and models) of this node.", no_args_is_help=True)


def _metadata(
    metadata_file: Path | None,
    title: str | None,
    kind: str,
    description: str,
    keywords: list[str],
    license_: str,
    media_type: str | None,
    access_modes: list[str],
    name: str | None,
    terms: dict[str, Any],
) -> dict[str, Any]:
    if metadata_file is not None:
        try:
            data: dict[str, Any] = json.loads(metadata_file.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read metadata from {metadata_file}: {exc}") from exc
        return data
    if not title:
        raise InvalidInput("give --title (or --metadata FILE.json)")
    data = {
        "title": title,
        "kind": kind,
        "description": description,
        "keywords": keywords,
        "license": license_,
        "access_modes": access_modes or ["download"],
    }
    if media_type:
        data["media_type"] = media_type
    if name:
        data["name"] = name
    return {**data, **terms}


def describe_terms(terms: dict[str, Any]) -> str:
    """An offering's compute terms in one line (what a job's consumer may receive)."""
    logs = str(terms.get("job_logs", "none"))
    reads = {"none": "none of its output", "tail": "the tail of its output", "full": "all its output, capped"}
    return (
        f"job logs: {logs} (the consumer reads {reads.get(logs, logs)}); "
        f"native model release: {'allowed' if terms.get('allow_native_release') else 'no'}; "
        f"stored training rows in a model: {'allowed' if terms.get('allow_stored_examples') else 'no'}"
    )


def _guess_media_type(path: Path) -> str:
    import mimetypes

    special = {".onnx": "application/onnx", ".csv": "text/csv", ".parquet": "application/vnd.apache.parquet"}
    return (
        special.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


@app.command("add")
@handle_errors
def add(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="file to register", exists=True, dir_okay=False, readable=True)
    ],
    title: Annotated[str | None, typer.Option(help="title shown in the catalog")] = None,
    kind: Annotated[str, typer.Option(help="dataset | model")] = "dataset",
    description: Annotated[str, typer.Option(help="what it is")] = "",
    keyword: Annotated[list[str] | None, typer.Option("--keyword", "-k", help="repeatable")] = None,
    license_: Annotated[str, typer.Option("--license", help="e.g. CC-BY-4.0")] = "",
    media_type: Annotated[str | None, typer.Option(help="default: guessed from the file name")] = None,
    access_mode: Annotated[
        list[str] | None, typer.Option("--access-mode", "-m", help="download | compute | federate")
    ] = None,
    name: Annotated[str | None, typer.Option(help="stable key (manifests match on it)")] = None,
    job_logs: Annotated[
        str, typer.Option(help="compute jobs: what of its output a consumer reads: none, tail or full")
    ] = "none",
    allow_native_release: Annotated[
        bool, typer.Option(help="compute jobs: a job may release its native (non-ONNX) model")
    ] = False,
    allow_stored_examples: Annotated[
        bool, typer.Option(help="compute jobs: a released model may contain training rows")
    ] = False,
    metadata: Annotated[Path | None, typer.Option("--metadata", help="JSON file with all metadata")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload FILE as a new offering."""
    meta = _metadata(
        metadata,
        title,
        kind,
        description,
        keyword or [],
        license_,
        media_type or _guess_media_type(file),
        access_mode or [],
        name,
        {
            "job_logs": job_logs,
            "allow_native_release": allow_native_release,
            "allow_stored_examples": allow_stored_examples,
        },
    )
    with (
        connect_from(ctx)(url=url, token=token, home=home, scope="offerings:write") as client,
        transfer_progress(f"uploading {file.name}", file.stat().st_size) as advance,
    ):
        result = client.upload("/api/v1/offerings", file, {"metadata": json.dumps(meta)}, advance)
    if as_json:
        print_json(result)
        return
    stored = "stored" if result["created"] else "already stored, deduplicated"
    console.print(f"[green]registered[/] {result['id']}  {result['title']}")
    console.print(
        f"  {result['sha256']}  {result['size']} bytes ({stored}); anchor {result['anchor']['status']}"
    )


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    kind: Annotated[str | None, typer.Option(help="dataset | model")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 50,
    all_pages: Annotated[bool, typer.Option("--all", help="follow every page")] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """This node's offerings, newest first."""
    items: list[dict[str, Any]] = []
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        cursor = None
        while True:
            page = client.get("/api/v1/offerings", kind=kind, limit=limit, cursor=cursor)
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if not (all_pages and cursor):
                break
    if as_json:
        print_json(items)
        return
    from rich.table import Table

    table = Table("id", "kind", "title", "v", "size", "sha256", "anchor", box=None)
    for o in items:
        table.add_row(
            o["id"],
            o["kind"],
            o["title"],
            str(o["version"]),
            _size(o["size"]),
            o["sha256"][:19] + "…",
            o["anchor"]["status"],
        )
    console.print(table)
    if not items:
        console.print("no offerings yet: `agora offerings add FILE --title …`")


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    offering_id: Annotated[str, typer.Argument(help="offering id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One offering with all its versions."""
    o = get_or_print(
        ctx, f"/api/v1/offerings/{offering_id}", url=url, token=token, home=home, as_json=as_json
    )
    if o is None:
        return
    console.print(f"[bold]{o['title']}[/]  ({o['kind']}, {o['status']})")
    for label, key in [
        ("id", "id"),
        ("name", "name"),
        ("provider", "provider"),
        ("license", "license"),
        ("media type", "media_type"),
        ("description", "description"),
    ]:
        if o.get(key):
            console.print(f"  {label:12} {o[key]}")
    console.print(f"  {'keywords':12} {', '.join(o['keywords']) or '-'}")
    console.print(f"  {'access':12} {', '.join(o['access_modes'])}")
    console.print(f"  {'compute':12} {describe_terms(o.get('compute_terms') or {})}")
    for v in o["versions"]:
        named = f"  aliases: {', '.join(v['aliases'])}" if v.get("aliases") else ""
        console.print(
            f"  v{v['version']}  {v['sha256']}  {_size(v['size'])}  anchor {v['anchor']['status']}{named}",
            highlight=False,
        )
        quality = describe_quality(v)
        if quality:
            console.print(f"      {quality}", markup=False, highlight=False)
        for line in describe_schema(v):
            console.print(f"      {line}", markup=False, highlight=False)


def describe_quality(version: dict[str, Any]) -> str | None:
    """A version's validation outcome in one line: status, expectations passed and failed,
    failing columns (None: the offering declares no suite)."""
    status = version.get("quality_status") or "none"
    if status == "none":
        return None
    summary = version.get("quality") or {}
    published = "published" if version.get("published", True) else "not published"
    if status == "validating":
        return f"quality: validating against its suite ({published} meanwhile)"
    if status == "error":
        reason = summary.get("error", "no reason given")
        return f"quality: error, the suite could not run: {reason} ({published})"
    line = (
        f"quality: {status}, suite {summary.get('suite', '?')}: {summary.get('passed', 0)} passed, "
        f"{summary.get('failed', 0)} failed of {summary.get('evaluated', 0)}"
    )
    failing = summary.get("failing_columns") or []
    if failing:
        line += f"; failing columns: {', '.join(str(c) for c in failing)}"
    return f"{line} ({published})"


@app.command("validate")
@handle_errors
def validate_version(
    ctx: typer.Context,
    offering_id: Annotated[str, typer.Argument(help="offering id")],
    version: Annotated[int | None, typer.Option(help="default: the newest version")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset version again (after its suite failed or could not run), or profile a
    passed or suite-less version again (after a column was declared an id).

    The node runs it beside the notary; a failed version shows `validating` meanwhile.
    """
    connect = connect_from(ctx)
    if version is None:
        with connect(url=url, token=token, home=home, scope="catalog:read") as client:
            versions = client.get(f"/api/v1/offerings/{offering_id}")["versions"]
        version = max(int(v["version"]) for v in versions)
    with connect(url=url, token=token, home=home, scope="offerings:write") as client:
        result = client.post_json(f"/api/v1/offerings/{offering_id}/versions/{version}/validate", {})
    if as_json:
        print_json(result)
        return
    console.print(
        f"version {result['version']} of {result['offering_id']} is {result['quality_status']}: "
        f"`agora offerings show {result['offering_id']}` shows the outcome",
        markup=False,
        highlight=False,
    )


@app.command("download")
@handle_errors
def download(
    ctx: typer.Context,
    offering_id: Annotated[str, typer.Argument(help="offering id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the file")],
    version: Annotated[int | None, typer.Option(help="default: latest")] = None,
    alias: Annotated[str | None, typer.Option("--alias", help="the version this alias names now")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Download an offering's bytes (resumes an interrupted download) and check its sha256."""
    if alias and version:
        raise InvalidInput("give --alias or --version, not both")
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        o = client.get(f"/api/v1/offerings/{offering_id}")
        wanted = version or o["version"]
        if alias and alias != "latest":
            if alias not in o.get("aliases", {}):
                known = ", ".join(o.get("aliases") or {}) or "none"
                raise InvalidInput(f"offering {offering_id} has no alias {alias!r} (its aliases: {known})")
            wanted = o["aliases"][alias]
        match = next((v for v in o["versions"] if v["version"] == wanted), None)
        if match is None:
            raise InvalidInput(f"offering {offering_id} has no version {wanted}")
        expected = match["sha256"].removeprefix("sha256:")
        # the number the alias named when asked: the bytes checked are those of that version
        pinned = version or (wanted if alias else None)
        path = f"/api/v1/offerings/{offering_id}/download" + (f"?version={pinned}" if pinned else "")
        with transfer_progress(f"downloading {output.name}", match["size"]) as advance:
            digest, size = client.download(path, output, expected_sha256=expected, progress=advance)
        sidecar = write_sidecar(client, match, output)
    console.print(f"[green]downloaded[/] {output}  {size} bytes  sha256:{digest} (matches)")
    if sidecar:
        console.print(f"provenance in {sidecar} (check it with `agora verify {output}`)")
    else:
        console.print(
            f"[yellow]not notarized yet[/] (anchor {match['anchor']['status']}): no provenance sidecar"
        )


def write_sidecar(client: Any, version: dict[str, Any], output: Path) -> Path | None:
    """Write ``OUTPUT.provenance.json`` for a downloaded version once it is anchored."""
    if version["anchor"]["status"] != "ANCHORED":
        return None
    from kernel.sidecar import write_sidecar as write

    return write(output, client.get(f"/api/v1/provenance/{version['anchor']['asset_id']}"))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@handle_errors
def catalog_command(
    ctx: typer.Context,
    q: Annotated[str | None, typer.Option("-q", "--query", help="full-text search")] = None,
    kind: Annotated[str | None, typer.Option(help="dataset | model")] = None,
    peer: Annotated[str | None, typer.Option("--peer", help="only this peer's offerings (its URL)")] = None,
    keyword: Annotated[str | None, typer.Option(help="offerings with this keyword")] = None,
    access_mode: Annotated[str | None, typer.Option(help="download | compute | federate")] = None,
    limit: Annotated[int, typer.Option(help="page size")] = 50,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Browse the marketplace: this node's offerings and its peers' (as last crawled)."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        provider = None
        participants = client.get("/api/v1/participants")
        names = {p["address"]: p["label"] for p in participants}
        if peer:
            endpoints = {p["endpoint"].rstrip("/"): p["address"] for p in participants if p["trusted"]}
            provider = endpoints.get(peer.rstrip("/"))
            if provider is None:
                raise InvalidInput(f"{peer} is not a known peer: `agora peers add {peer}` first")
        page = client.get(
            "/api/v1/catalog",
            q=q,
            kind=kind,
            provider=provider,
            keyword=keyword,
            access_mode=access_mode,
            limit=limit,
        )
    if as_json:
        print_json(page["items"])
        return
    from rich.table import Table

    table = Table("provider", "kind", "title", "access", "v", "anchor", "freshness", box=None)
    for item in page["items"]:
        freshness = "this node" if item["local"] else ("STALE" if item["stale"] else "fresh")
        table.add_row(
            names.get(item["provider"], item["provider"]),
            item["kind"],
            item["title"],
            ", ".join(item["access_modes"]),
            str(item["version"]),
            item["anchor_status"] or "-",
            freshness,
        )
    console.print(table)
    if not page["items"]:
        console.print("nothing matches")


SHOWN_COLUMNS = 12


def describe_schema(version: dict[str, Any]) -> list[str]:
    """A version's schema (its first columns or arrays, with type and role) and, for a compute
    or federate offering, whether the node can train on it and why (no lines: no schema)."""
    lines: list[str] = []
    schema = version.get("schema") or {}
    parts = schema.get("columns") or schema.get("arrays") or []
    if parts:
        shown = [
            " ".join(
                [str(p.get("name")), str(p.get("type") or p.get("dtype"))]
                + ([f"[{p['role']}]"] if p.get("role", "feature") != "feature" else [])
                + ([str(p["unit"])] if p.get("unit") else [])
            )
            for p in parts[:SHOWN_COLUMNS]
        ]
        more = f", … {len(parts) - SHOWN_COLUMNS} more" if len(parts) > SHOWN_COLUMNS else ""
        what = "columns" if schema.get("columns") else "arrays"
        lines.append(f"schema ({schema.get('source', '?')}, {len(parts)} {what}): {', '.join(shown)}{more}")
    trainable = version.get("trainable")
    if trainable:
        verdict = "yes" if trainable.get("ok") else "NO"
        line = f"trainable: {verdict}: {trainable.get('reason', '')}"
        encoded = [f"{e['name']} {e['encoding']}" for e in trainable.get("encoded") or []]
        dropped = [f"{d['name']} ({d['reason']})" for d in trainable.get("dropped") or []]
        if encoded:
            line += f"; encoded: {', '.join(encoded[:SHOWN_COLUMNS])}"
        if dropped:
            line += f"; dropped: {', '.join(dropped[:SHOWN_COLUMNS])}"
        lines.append(line)
    return lines


alias_cli.register(app)
