"""``agora policy …``: check what a usage policy allows, and why.

Exit codes of ``explain``: 0 allowed, 1 denied, 2 the policy or the request is invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from kernel.cli import JsonOpt, console, err_console, print_json

if TYPE_CHECKING:
    from kernel.errors import InvalidInput
    from marketplace.policy.engine import Evaluation

app = typer.Typer(help="Usage policies: what they allow, and why.", no_args_is_help=True)

EXIT_ALLOW, EXIT_DENY, EXIT_INVALID = 0, 1, 2


@app.callback()
def _group() -> None:
    """Usage policies: what they allow, and why."""
    # a callback keeps ``explain`` a subcommand: a Typer app with a single command and no
    # callback would otherwise turn that command into the app itself


@app.command("explain")
def explain(
    file: Annotated[
        Path,
        typer.Option(
            "--file", "-f", help="the policy (YAML or JSON)", exists=True, dir_okay=False, readable=True
        ),
    ],
    participant: Annotated[str, typer.Option(help="the requester's address (0x…)")],
    purpose: Annotated[str, typer.Option(help="what the requester wants it for")],
    name: Annotated[str | None, typer.Option("--name", help="the requester's name")] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="a group of the requester; repeatable")
    ] = None,
    mode: Annotated[str, typer.Option(help="download | compute | federate")] = "download",
    uses: Annotated[int, typer.Option(help="uses of the agreement so far")] = 0,
    agreed_at: Annotated[
        str | None, typer.Option("--agreed-at", help="when the agreement was signed (ISO 8601 with zone)")
    ] = None,
    now: Annotated[str | None, typer.Option(help="evaluate as of this instant (default: now)")] = None,
    region: Annotated[str | None, typer.Option(help="where the data would be used")] = None,
    dp_epsilon: Annotated[
        float | None,
        typer.Option("--dp-epsilon", help="federate: the privacy budget ε the federation states"),
    ] = None,
    dp_delta: Annotated[
        float | None, typer.Option("--dp-delta", help="federate: the δ of that budget")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Decide a request against the policy in FILE and say why, constraint by constraint."""
    from kernel.errors import InvalidInput
    from kernel.validation import validate
    from marketplace.policy.engine import RequestContext, evaluate_policy
    from marketplace.policy.language import load_policy

    context: dict[str, object] = {
        "participant": participant,
        "participant_name": name,
        "groups": group or [],
        "purpose": purpose,
        "mode": mode,
        "uses": uses,
        "agreed_at": agreed_at,
        "region": region,
        "dp_epsilon": dp_epsilon,
        "dp_delta": dp_delta,
    }
    if now is not None:
        context["now"] = now
    try:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"cannot read {file}: {exc}") from exc
        policy = load_policy(text, source=str(file))
        request = validate(RequestContext, context, what="request")
    except InvalidInput as exc:
        _invalid(exc)
    evaluation = evaluate_policy(policy, request)
    if as_json:
        print_json(evaluation.as_dict())
    else:
        _show(evaluation)
    raise typer.Exit(EXIT_ALLOW if evaluation.allowed else EXIT_DENY)


def _invalid(exc: InvalidInput) -> NoReturn:
    err_console.print(f"[bold red]invalid:[/] {_esc(exc.detail)}", highlight=False)
    for field in exc.errors:
        err_console.print(f"  [red]{_esc(field.path)}[/]: {_esc(field.message)}", highlight=False)
    raise typer.Exit(EXIT_INVALID)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _show(evaluation: Evaluation) -> None:
    verdict = "[bold green]ALLOW[/]" if evaluation.allowed else "[bold red]DENY[/]"
    console.print(f"{verdict}  {_esc(evaluation.summary)}", highlight=False)
    if evaluation.reasons:
        console.print("reasons:", highlight=False)
    for reason in evaluation.reasons:
        mark = "[green]✓[/]" if reason.satisfied else "[red]✗[/]"
        indent = "  " * (reason.depth + 1)
        console.print(f"{indent}{mark} {_esc(reason.path)}: {_esc(reason.explanation)}", highlight=False)
    if evaluation.duties:
        console.print("duties:", highlight=False)
    for duty in evaluation.duties:
        console.print(f"  • {_esc(duty.text)}", highlight=False)
    console.print("policy:", highlight=False)
    for sentence in evaluation.sentences:
        console.print(f"  {_esc(sentence)}", highlight=False)
