"""``agora fl …``: federated learning, as the coordinator (and a provider) sees it."""

from __future__ import annotations

import time
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
    fetch_with_provenance,
    get_or_print,
    handle_errors,
    print_json,
)
from kernel.errors import AgoraError

app = typer.Typer(help="Federated learning: one model trained across providers' data.", no_args_is_help=True)
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "REJECTED")


class FederationNotCompleted(AgoraError):
    title = "Federation did not complete"


def _line(fed: dict[str, Any]) -> str:
    reason = f" — {fed['reason']}" if fed.get("reason") else ""
    return (
        f"{fed['id']}  {fed['role']:11} {fed['name']:20} {fed['state']:10} "
        f"round {fed['current_round']}/{fed['rounds']}{reason}"
    )


@app.command("create")
@handle_errors
def create(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Option("-f", "--file", help="the federation spec (YAML or JSON)", exists=True)
    ],
    start: Annotated[
        bool, typer.Option("--start", help="start it at once when every provider joined")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pack the model bundle, invite the spec's providers through this node; prints the id."""
    import base64

    from federation.spec import load_spec
    from kernel.errors import InvalidInput
    from training_jobs import bundle as bundles

    spec = load_spec(file.read_text(), file.name)
    source = (file.parent / (spec.model.bundle or ".")).resolve()
    if not source.exists():
        raise InvalidInput(f"{file.name}: model.bundle {spec.model.bundle} does not exist ({source})")
    packed = bundles.pack(source)
    initial = None
    if spec.model.initial_weights:
        weights_file = (file.parent / spec.model.initial_weights).resolve()
        if not weights_file.is_file():
            raise InvalidInput(
                f"{file.name}: model.initial_weights {spec.model.initial_weights} does not exist"
            )
        initial = base64.b64encode(weights_file.read_bytes()).decode()
    body = {
        "spec": spec.model_dump(
            mode="json", exclude_none=True, exclude={"model": {"bundle", "initial_weights"}}
        ),
        "bundle": base64.b64encode(packed).decode(),
        "initial_weights": initial,
    }
    with connect_from(ctx)(url=url, token=token, home=home, scope="federations:write") as client:
        fed = client.post_json("/api/v1/federations", body)
        if start and fed["state"] == "READY":
            fed = client.post_json(f"/api/v1/federations/{fed['id']}/start", {})
    if as_json:
        print_json(fed)
        return
    for member in fed.get("members", []):
        console.print(
            f"  {member['name'] or member['provider']:20} {member['state']:8} {member['reason']}",
            highlight=False,
        )
    console.print(_line(fed), highlight=False)
    print(fed["id"])
    if fed["state"] in FINAL:
        raise FederationNotCompleted(f"federation {fed['id']} is {fed['state']}: {fed['reason']}")


@app.command("start")
@handle_errors
def start(
    ctx: typer.Context,
    federation_id: Annotated[str, typer.Argument(help="the federation id")],
    wait: Annotated[bool, typer.Option("--wait", help="print each round until it ends")] = False,
    timeout: Annotated[float, typer.Option(help="seconds --wait waits")] = 24 * 3600.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Start the rounds of a federation every provider joined."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="federations:write") as client:
        fed = client.post_json(f"/api/v1/federations/{federation_id}/start", {})
        console.print(_line(fed), highlight=False)
        if wait:
            fed = follow(client, federation_id, timeout)
    if wait and fed["state"] != "COMPLETED":
        raise FederationNotCompleted(f"federation {federation_id} is {fed['state']}: {fed['reason']}")


def follow(client: Any, federation_id: str, timeout: float) -> dict[str, Any]:
    """Print each round's federated evaluation as it ends, until the federation ends."""
    deadline, shown = time.monotonic() + timeout, 0
    while True:
        fed = client.get(f"/api/v1/federations/{federation_id}")
        rounds = client.get(f"/api/v1/federations/{federation_id}/rounds")
        for rnd in rounds:
            if rnd["round"] > shown and rnd["state"] in ("DONE", "FAILED"):
                shown = rnd["round"]
                console.print(_round_line(rnd), highlight=False)
        if fed["state"] in FINAL or time.monotonic() > deadline:
            console.print(_line(fed), highlight=False)
            return dict(fed)
        time.sleep(0.5)


def _round_line(rnd: dict[str, Any]) -> str:
    metrics = rnd.get("metrics") or {}
    evaluated = (
        "final model"
        if not rnd.get("participants") and rnd["state"] == "DONE"
        else f"round {rnd['round'] - 1}"
    )
    accuracy = metrics.get("accuracy")
    figures = (
        f"held-out accuracy of the {evaluated} weights {accuracy:.4f}, loss {metrics.get('loss', 0):.4f}"
        if isinstance(accuracy, (int, float)) and rnd["round"] > 1
        else ""
    )
    parts = rnd.get("contributions") or []
    answered = sum(1 for p in parts if p["state"] == "RECEIVED")
    reason = rnd.get("reason", "")
    return f"round {rnd['round']:3} {rnd['state']:6} {answered}/{len(parts)} updates  {figures}  {reason}"


@app.command("status")
@handle_errors
def status(
    ctx: typer.Context,
    federation_id: Annotated[str, typer.Argument(help="the federation id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """State with its reason, the providers' states and the timeline."""
    fed = get_or_print(
        ctx, f"/api/v1/federations/{federation_id}", url=url, token=token, home=home, as_json=as_json
    )
    if fed is None:
        return
    console.print(_line(fed), highlight=False)
    for member in fed.get("members", []):
        epsilon = f" ε={member['epsilon']:.3g}" if member.get("epsilon") is not None else ""
        console.print(
            f"  {member['name'] or member['provider']:20} {member['state']:8} "
            f"{member['num_train']:6} rows{epsilon}  "
            f"{member['reason']}",
            highlight=False,
        )
    for step in fed["history"][-20:]:
        console.print(f"  {step['at'][:19]}  {step['state']:10} {step['reason']}", highlight=False)


@app.command("rounds")
@handle_errors
def rounds(
    ctx: typer.Context,
    federation_id: Annotated[str, typer.Argument(help="the federation id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every round: its state, the updates that arrived, the federated evaluation, its anchor."""
    rows = get_or_print(
        ctx, f"/api/v1/federations/{federation_id}/rounds", url=url, token=token, home=home, as_json=as_json
    )
    for rnd in rows or []:
        console.print(_round_line(rnd), highlight=False)
        for part in rnd.get("contributions") or []:
            eps = (part.get("privacy") or {}).get("epsilon")
            console.print(
                f"      {part['provider'][:10]}… {part['state']:9} {part['num_examples']:5} examples"
                + (f" ε={eps:.3g}" if isinstance(eps, (int, float)) else "")
                + (f"  {part['reason']}" if part["state"] not in ("RECEIVED",) else ""),
                highlight=False,
            )


@app.command("cancel")
@handle_errors
def cancel(
    ctx: typer.Context,
    federation_id: Annotated[str, typer.Argument(help="the federation id")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Cancel a federation; its providers stop training for it."""
    with connect_from(ctx)(url=url, token=token, home=home, scope="federations:write") as client:
        fed = client.post_json(f"/api/v1/federations/{federation_id}/cancel", {})
    console.print(_line(fed), highlight=False)


@app.command("fetch")
@handle_errors
def fetch(
    ctx: typer.Context,
    federation_id: Annotated[str, typer.Argument(help="the federation id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write the model")],
    weights: Annotated[
        bool, typer.Option("--weights", help="the safetensors weights instead of ONNX")
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    home: HomeOpt = None,
) -> None:
    """Write the final global model (ONNX, or --weights) and PATH.provenance.json; check it
    with ``agora verify PATH``."""
    artifact = "weights" if weights else "onnx"
    base = f"/api/v1/federations/{federation_id}/model"
    with connect_from(ctx)(url=url, token=token, home=home, scope="catalog:read") as client:
        fetch_with_provenance(
            client, f"{base}/provenance", f"{base}?artifact={artifact}", output, artifact=artifact
        )


@app.command("schema")
def schema() -> None:
    """Print the federation spec's JSON Schema."""
    from federation.spec import SCHEMA_FILE

    print(SCHEMA_FILE.read_text(), end="")
