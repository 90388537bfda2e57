"""The web UI's federation pages: the list, and a federation's page that follows it live.

A federation's page shows its state and reason, its timeline, its members and rounds, and
accuracy and loss per round as server-rendered SVG (:mod:`node.ui.charts`). While the
federation moves by itself (CREATED on a provider, waiting for its first round; RUNNING)
htmx asks for the live part every two seconds; READY waits for a person and a final state
never changes, so those pages are not polled. A coordinator's page has the buttons to start
(READY) and cancel (CREATED, READY, RUNNING); they post the session's CSRF token like every
UI form, and need the ``federations:write`` scope as the API does. A refused press renders
the page again with the reason and the error's status (403 without the scope, 409 in the
wrong state) and changes nothing.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Redirect, Template

from federation.coordinator import Coordinator
from federation.models import CREATED, FEDERATION, READY, RUNNING
from kernel.errors import AgoraError
from node.auth import require_scope
from node.runtime import Runtime
from node.ui.charts import Axis, federation_series, finite, line_chart
from node.ui.routes import _names, _runtime, ui_guard

LIVE_STATES = frozenset({CREATED, RUNNING})
STARTABLE = frozenset({READY})
CANCELLABLE = frozenset({CREATED, READY, RUNNING})
X_AXIS = Axis("global model after round", lower=0, integer=True)


def _coordinator(runtime: Runtime) -> Coordinator:
    assert runtime.coordinator is not None
    return runtime.coordinator


@get("/federations", sync_to_thread=True, guards=[ui_guard])
def federations(state: State) -> Template:
    runtime = _runtime(state)
    rows = _coordinator(runtime).list_all()
    return Template("federations.html", context={"rows": rows, "names": _names(runtime)})


def _context(runtime: Runtime, federation_id: str) -> dict[str, Any]:
    """The federation, its rounds and charts, and what a person may do with it now."""
    coordinator = _coordinator(runtime)
    fed = coordinator.get(federation_id)
    rounds = coordinator.rounds(federation_id)
    names = _names(runtime)
    for member in fed.get("members", []):
        names.setdefault(member["provider"], member["name"] or member["provider"])
    own = fed["role"] == "coordinator"
    return {
        "fed": fed,
        "rounds": rounds,
        "names": names,
        "epsilons": latest_privacy(rounds),
        "live": fed["state"] in LIVE_STATES,
        "final": fed["state"] in FEDERATION.final,
        "can_start": own and fed["state"] in STARTABLE,
        "can_cancel": own and fed["state"] in CANCELLABLE,
        "charts": charts(rounds, names),
        "message": None,
    }


def charts(rounds: list[dict[str, Any]], names: dict[str, str]) -> dict[str, str]:
    """The accuracy and the loss chart of a federation's rounds, as SVG text."""
    return {
        "accuracy": line_chart(
            federation_series(rounds, "accuracy", names),
            chart_id="accuracy-chart",
            title="Accuracy on the providers' held-out rows",
            x=X_AXIS,
            y=Axis("accuracy", lower=0.0, upper=1.0),
        ),
        "loss": line_chart(
            federation_series(rounds, "loss", names),
            chart_id="loss-chart",
            title="Loss on the providers' held-out rows",
            x=X_AXIS,
            y=Axis("loss", lower=0.0),
        ),
    }


def latest_privacy(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each provider's latest (ε, δ) as its updates reported them: provider → {epsilon, delta}.
    Only finite numbers count; a figure of any other kind is not shown."""
    latest: dict[str, dict[str, float]] = {}
    for rnd in rounds:
        for part in rnd.get("contributions", []):
            privacy = part.get("privacy") or {}
            epsilon = finite(privacy.get("epsilon"))
            if epsilon is not None:
                figures = {"epsilon": epsilon}
                delta = finite(privacy.get("delta"))
                if delta is not None:
                    figures["delta"] = delta
                latest[part["provider"]] = figures
    return latest


@get("/federations/{federation_id:str}", sync_to_thread=True, guards=[ui_guard])
def federation_page(state: State, federation_id: FromPath[str]) -> Template:
    """State, timeline, members, rounds and charts, refreshed live while the federation moves."""
    return Template("federation.html", context=_context(_runtime(state), federation_id))


@get("/federations/{federation_id:str}/live", sync_to_thread=True, guards=[ui_guard])
def federation_live(state: State, federation_id: FromPath[str]) -> Template:
    """The live part of the page; without the polling attributes once it need not be asked again."""
    return Template("_federation_live.html", context=_context(_runtime(state), federation_id))


def _act(request: Request[Any, Any, Any], state: State, federation_id: str, action: str) -> Response[Any]:
    runtime = _runtime(state)
    coordinator = _coordinator(runtime)
    try:
        require_scope(request.user, "federations:write")
        if action == "start":
            coordinator.start(federation_id, request.user.subject)
        else:
            coordinator.cancel(federation_id, request.user.subject)
    except AgoraError as exc:
        context = _context(runtime, federation_id)
        context["message"] = f"Not {'started' if action == 'start' else 'cancelled'}: {exc.detail}"
        return Template("federation.html", context=context, status_code=exc.status)
    return Redirect(f"/ui/federations/{quote(federation_id, safe=':')}", status_code=303)


@post("/federations/{federation_id:str}/start", sync_to_thread=True, guards=[ui_guard], status_code=303)
def start_federation(
    request: Request[Any, Any, Any], state: State, federation_id: FromPath[str]
) -> Response[Any]:
    """Start a READY federation this node coordinates (``federations:write``)."""
    return _act(request, state, federation_id, "start")


@post("/federations/{federation_id:str}/cancel", sync_to_thread=True, guards=[ui_guard], status_code=303)
def cancel_federation(
    request: Request[Any, Any, Any], state: State, federation_id: FromPath[str]
) -> Response[Any]:
    """Cancel a federation this node coordinates that has not ended (``federations:write``)."""
    return _act(request, state, federation_id, "cancel")


federation_handlers = [federations, federation_page, federation_live, start_federation, cancel_federation]
