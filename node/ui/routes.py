"""The web UI: server-rendered pages (Jinja templates) with htmx for live search.

No JavaScript build step: htmx is one vendored file. A person signs in by pasting a bearer
token (``agora token create --scope catalog:read``), kept in an HttpOnly, SameSite=Strict
cookie; every page checks it like the API checks its header. Every state-changing request
(sign-in, sign-out, approve, reject) passes the cross-site checks of :mod:`node.ui.csrf`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, State
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body, FromPath, FromQuery
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from kernel.errors import AgoraError, NotFound, Unauthorized
from marketplace.catalog import CatalogFilters
from marketplace.schemas import ACCESS_MODES, Kind
from node.auth import require_scope
from node.runtime import Runtime
from node.ui import csrf
from training_jobs.joblog import log_is_whole
from training_jobs.models import FINAL_STATES

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
COOKIE = csrf.SESSION_COOKIE
KINDS = get_args(Kind)


class LoginRequired(HTTPException):
    status_code = 303


def _runtime(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


async def ui_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A valid token with catalog:read in the UI cookie, else off to the sign-in page."""
    token = connection.cookies.get(COOKIE)
    if not token:
        raise LoginRequired()
    runtime = _runtime(connection.app.state)
    try:
        connection.scope["user"] = await runtime.verifier.authorize(token, "catalog:read")
    except AgoraError:
        raise LoginRequired() from None


def _to_login(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    return Redirect("/ui/login", status_code=303)


def _secure(state: State) -> bool:
    """Cookies are marked Secure when the node is reached over HTTPS."""
    return _runtime(state).settings.public_url.startswith("https://")


@get("/login", sync_to_thread=False)
def login_page(
    request: Request[Any, Any, Any], state: State, error: FromQuery[str | None] = None
) -> Template:
    presession = csrf.start_presession(request, secure=_secure(state))
    return Template("login.html", context={"error": error}, cookies=[presession] if presession else [])


@post("/login", sync_to_thread=True, status_code=303)
def login(
    state: State, data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
) -> Response[Any]:
    token = (data.get("token") or "").strip()
    runtime = _runtime(state)
    try:
        require_scope(runtime.verifier.verify(token), "catalog:read")
    except (Unauthorized, AgoraError) as exc:
        return Redirect(f"/ui/login?error={exc.detail}", status_code=303)
    return Redirect(
        "/ui/",
        status_code=303,
        cookies=[
            Cookie(
                key=COOKIE,
                value=token,
                httponly=True,
                samesite="strict",
                path="/ui",
                max_age=8 * 3600,
                secure=_secure(state),
            )
        ],
    )


@post("/logout", sync_to_thread=False, status_code=303)
def logout() -> Response[Any]:
    """Sign out: a POST from the page's own form, so a link or image elsewhere cannot do it."""
    return Redirect(
        "/ui/login", status_code=303, cookies=[Cookie(key=COOKIE, value="", path="/ui", max_age=0)]
    )


@get("/", sync_to_thread=True, guards=[ui_guard])
def dashboard(state: State) -> Template:
    runtime = _runtime(state)
    context = {
        "node": {
            "name": runtime.settings.name,
            "address": runtime.address,
            "url": runtime.settings.public_url,
            "chain": runtime.settings.chain_url,
            "database": runtime.database_kind,
            "storage": runtime.store.kind,
        },
        "counts": {**runtime.catalog.counts(runtime.address), "backlog": runtime.notary.pending_count()},
        "peers": _peers(runtime),
        "notary_error": runtime.notary.last_error,
    }
    return Template("dashboard.html", context=context)


def _peers(runtime: Runtime) -> list[dict[str, Any]]:
    freshness = {f["provider"]: f for f in runtime.catalog.freshness()}
    names = runtime.participants.labels()
    rows = []
    for peer in runtime.participants.peers():
        fresh = freshness.get(peer.address, {})
        rows.append(
            {
                "name": names.get(peer.address, peer.name),
                "address": peer.address,
                "did": peer.did,
                "kind": peer.kind,
                "dsp_url": peer.dsp_url,
                "endpoint": peer.endpoint,
                "entries": fresh.get("entries", 0),
                "age": _age(fresh.get("age_seconds")),
                "error": fresh.get("last_error"),
            }
        )
    return rows


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "never crawled"
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


@get("/catalog", sync_to_thread=True, guards=[ui_guard])
def catalog(
    request: Request[Any, Any, Any],
    state: State,
    q: FromQuery[str | None] = None,
    kind: FromQuery[str | None] = None,
    provider: FromQuery[str | None] = None,
    keyword: FromQuery[str | None] = None,
    access_mode: FromQuery[str | None] = None,
    license: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
) -> Template:
    runtime = _runtime(state)
    filters = CatalogFilters(
        q=q or None,
        kind=kind or None,
        provider=provider or None,
        keyword=keyword or None,
        access_mode=access_mode or None,
        license=license or None,
    )
    error = None
    try:
        page = runtime.catalog.search(filters, cursor=cursor or None, limit=25)
    except AgoraError as exc:
        page, error = {"items": [], "next_cursor": None}, exc.detail
    names = _names(runtime)
    for item in page["items"]:
        item["provider_name"] = names.get(item["provider"], item["provider"])
        item["age"] = _age(item.get("age_seconds")) if not item["local"] else ""
    context = {
        "page": page,
        "filters": filters,
        "error": error,
        "kinds": KINDS,
        "modes": ACCESS_MODES,
        "providers": sorted(((a, names[a]) for a in _providers(runtime) if a in names), key=lambda kv: kv[1]),
        "query": str(request.url.query) if request.url.query else "",
    }
    partial = request.headers.get("hx-request") == "true"
    return Template("_results.html" if partial else "catalog.html", context=context)


@get("/offerings/{provider:str}/{offering_id:str}", sync_to_thread=True, guards=[ui_guard])
def offering_page(state: State, provider: FromPath[str], offering_id: FromPath[str]) -> Template:
    from marketplace.policy import describe, parse_policy

    runtime = _runtime(state)
    entry = runtime.catalog.entry(provider, offering_id)
    if entry is None:
        raise NotFound(f"no offering {offering_id} from {provider} in the catalog")
    detail = runtime.offerings.get(offering_id) if entry["local"] else None
    policy = entry.get("policy")
    sentences = (
        describe(parse_policy(policy)) if policy else ["Not offered to other organisations (no policy)."]
    )
    provenance = None
    if detail is not None and detail.anchor.asset_id and detail.anchor.status == "ANCHORED":
        provenance = runtime.provenance.document(detail.anchor.asset_id)
    names = _names(runtime)
    context = {
        "entry": entry,
        "detail": detail,
        "evidence": entry.get("evidence") or {},
        "history": _history(detail),
        "sentences": sentences,
        "provenance": provenance,
        "provider_name": names.get(provider, provider),
    }
    return Template("offering.html", context=context)


def _history(detail: Any) -> list[dict[str, Any]]:
    """An own offering's versions, newest first, each with its validation summary normalized."""
    from quality.dqv import validation_summary

    if detail is None:
        return []
    return [{"version": v, "validation": validation_summary(v.quality)} for v in reversed(detail.versions)]


@get("/context.jsonld", sync_to_thread=False, media_type="application/ld+json", cache=3600)
def jsonld_context() -> dict[str, Any]:
    """The JSON-LD context the DSP catalog names beside the protocol's own: the ``dqv``,
    ``csvw``, ``oa`` and ``agora`` prefixes of its quality evidence. Public, like the catalog's
    vocabulary: it holds no data."""
    from quality.dqv import CONTEXT_DOCUMENT

    return CONTEXT_DOCUMENT


def _providers(runtime: Runtime) -> set[str]:
    """Whose offerings the catalog can hold: this node's and its peers'."""
    return {runtime.address, *(p.address for p in runtime.participants.peers())}


def _names(runtime: Runtime) -> dict[str, str]:
    """How pages name participants: with the address when a name is shared, and marked
    when one is not a peer (see ``connector.services.labels``)."""
    names = runtime.participants.labels()
    names.setdefault(runtime.address, runtime.settings.name)
    return names


@get("/negotiations", sync_to_thread=True, guards=[ui_guard])
def negotiations(state: State) -> Template:
    runtime = _runtime(state)
    assert runtime.negotiations is not None
    return Template(
        "negotiations.html", context={"rows": runtime.negotiations.list_all(), "names": _names(runtime)}
    )


@get("/negotiations/{negotiation_id:str}", sync_to_thread=True, guards=[ui_guard])
def negotiation(
    state: State, negotiation_id: FromPath[str], message: FromQuery[str | None] = None
) -> Template:
    runtime = _runtime(state)
    assert runtime.negotiations is not None
    context = {"n": runtime.negotiations.get(negotiation_id), "names": _names(runtime), "message": message}
    return Template("negotiation.html", context=context)


@post(
    "/negotiations/{negotiation_id:str}/{decision:str}",
    sync_to_thread=True,
    guards=[ui_guard],
    status_code=303,
)
def decide(
    request: Request[Any, Any, Any],
    state: State,
    negotiation_id: FromPath[str],
    decision: FromPath[str],
    data: Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    """Approve or reject from the page: the signed-in token must hold negotiations:write."""
    runtime = _runtime(state)
    assert runtime.negotiations is not None
    back = f"/ui/negotiations/{negotiation_id}"
    try:
        require_scope(request.user, "negotiations:write")
        if decision == "approve":
            runtime.negotiations.approve(negotiation_id, request.user.subject)
        elif decision == "reject":
            runtime.negotiations.terminate(
                negotiation_id, data.get("reason") or "rejected", request.user.subject
            )
        else:
            raise NotFound(f"no decision {decision!r}")
    except AgoraError as exc:
        return Redirect(f"{back}?message={exc.detail}", status_code=303)
    return Redirect(back, status_code=303)


@get("/agreements", sync_to_thread=True, guards=[ui_guard])
def agreements(state: State) -> Template:
    from datetime import UTC, datetime

    runtime = _runtime(state)
    assert runtime.agreements is not None
    rows = runtime.agreements.list_all()
    for row in rows:
        ends = row["valid_until"]
        row["valid_until_text"] = (
            datetime.fromtimestamp(ends, UTC).strftime("%Y-%m-%d %H:%M UTC") if ends else "no end"
        )
    return Template("agreements.html", context={"rows": rows, "names": _names(runtime)})


@get("/jobs", sync_to_thread=True, guards=[ui_guard])
def jobs(state: State) -> Template:
    runtime = _runtime(state)
    assert runtime.jobs is not None
    return Template("jobs.html", context={"rows": runtime.jobs.list_all(), "names": _names(runtime)})


def _job_context(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """The job (refreshed from its provider) for the status part of its page."""
    assert runtime.jobs is not None
    job = runtime.jobs.get(job_id)
    return {"job": job, "names": _names(runtime), "final": job["state"] in FINAL_STATES}


def _job_log_or_reason(runtime: Runtime, job_id: str) -> dict[str, Any]:
    """The job's log; when the provider cannot be asked, the reason in its place."""
    assert runtime.jobs is not None
    try:
        return runtime.jobs.logs(job_id, limit=5000)
    except AgoraError as exc:
        return {"lines": [{"stage": "node", "line": f"the log is not available now: {exc.detail}"}]}


@get("/jobs/{job_id:str}", sync_to_thread=True, guards=[ui_guard])
def job_page(state: State, job_id: FromPath[str]) -> Template:
    """State, progress and log, refreshed live until the job ends."""
    runtime = _runtime(state)
    context = {**_job_context(runtime, job_id), "log": _job_log_or_reason(runtime, job_id)}
    context["log_done"] = _log_done(context["job"], context["log"])
    return Template("job.html", context=context)


@get("/jobs/{job_id:str}/status", sync_to_thread=True, guards=[ui_guard])
def job_status(state: State, job_id: FromPath[str]) -> Template:
    context = _job_context(_runtime(state), job_id)
    poll = (
        ""
        if context["final"]
        else f' hx-get="/ui/jobs/{job_id}/status" hx-trigger="every 2s" hx-swap="outerHTML"'
    )
    return Template(
        template_str='<div id="job-status"' + poll + '>{% include "_job_status.html" %}</div>',
        context=context,
    )


@get("/jobs/{job_id:str}/log", sync_to_thread=True, guards=[ui_guard])
def job_log(state: State, job_id: FromPath[str]) -> Template:
    """The log; once the job has ended, status 286 tells htmx to stop polling."""
    runtime = _runtime(state)
    assert runtime.jobs is not None
    job = runtime.jobs.get(job_id, refresh=False)
    log = _job_log_or_reason(runtime, job_id)
    return Template("_job_log.html", context={"log": log}, status_code=286 if _log_done(job, log) else 200)


def _log_done(job: dict[str, Any], log: dict[str, Any]) -> bool:
    """An ended job's log may still grow by its last lines (the tail its terms release)."""
    return log_is_whole(job["state"], job["updated_at"], log, final_states=FINAL_STATES)


def ui_router() -> Router:
    from node.ui.federations import federation_handlers  # it imports this module's guard

    static = create_static_files_router(path="/static", directories=[HERE / "static"], name="ui-static")
    return Router(
        path="/ui",
        route_handlers=[
            login_page,
            login,
            logout,
            dashboard,
            catalog,
            offering_page,
            jsonld_context,
            negotiations,
            negotiation,
            decide,
            agreements,
            jobs,
            job_page,
            job_status,
            job_log,
            *federation_handlers,
            static,
        ],
        guards=[csrf.same_origin_guard],
        exception_handlers={LoginRequired: _to_login},
        include_in_schema=False,
    )
