"""One place that turns errors into ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from kernel.errors import PROBLEM_BASE, AgoraError

log = logging.getLogger("agora.http")
PROBLEM_JSON = "application/problem+json"

_HTTP_SLUGS = {
    400: "invalid-input",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    429: "too-many-requests",
}


def _response(
    body: dict[str, Any],
    status: int,
    headers: dict[str, str] | None = None,
    request: Request[Any, Any, Any] | None = None,
) -> Response[Any]:
    """A problem document; on a route of the DSP binding, the DSP error message it stands for
    (``code`` the problem type's slug, ``reason`` its detail, the message's pids)."""
    if request is not None:
        from connector.dsp.binding import PIDS, error_message

        pids = request.state.get(PIDS) or {}
        slug = str(body.get("type", "")).removeprefix(PROBLEM_BASE)
        dsp = error_message(request.url.path, pids, slug, str(body.get("detail", "")))
        if dsp is not None:
            return Response(content=dsp, status_code=status, media_type="application/json", headers=headers)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def agora_error(request: Request[Any, Any, Any], exc: AgoraError) -> Response[Any]:
    headers = {"WWW-Authenticate": 'Bearer realm="agora"'} if exc.status == 401 else None
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
    return _response(exc.problem(instance=request.url.path), exc.status, headers, request)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + _HTTP_SLUGS.get(status, "http-error"),
        "title": exc.__class__.__name__ if status >= 500 else _title(status),
        "status": status,
        "detail": exc.detail,
        "instance": request.url.path,
    }
    if isinstance(exc, ValidationException) and isinstance(exc.extra, list):
        body["errors"] = [
            {"path": str(e.get("key") or e.get("source") or ""), "message": str(e.get("message", ""))}
            for e in exc.extra
            if isinstance(e, dict)
        ]
    return _response(body, status, exc.headers, request)


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _response(
        {
            "type": PROBLEM_BASE + "internal",
            "title": "Internal error",
            "status": 500,
            "detail": "the node hit an unexpected error; the operator's log has the details",
            "instance": request.url.path,
        },
        500,
        request=request,
    )


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


exception_handlers: dict[int | type[Exception], Any] = {
    AgoraError: agora_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
