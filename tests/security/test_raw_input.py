"""Hostile bytes against every route of a real node: it answers 4xx, never 5xx, and lives.

One ``agora serve`` process; its routes are read from its OpenAPI document plus the web UI's
router and the schema pages. Every route gets every case below twice, without a token and
with an admin token (header and UI cookie): nesting 100,000 levels deep, a number of
100,000 digits and one of ``1e999999``, a string one KiB past the route's body limit,
invalid UTF-8, a lone surrogate and U+0000, wrong content types and methods, NUL in the
path or query, a body that stops half-way (the client hangs up), and a chunked body that
never ends.
Every refusal says why: a problem document, or on a DSP binding route (catalog, negotiations,
transfers) a DSP error message. Afterwards the same process still answers ``/health`` and its
log holds no traceback.
The figures (cases, status codes) land in ``test-artifacts/raw-input.json``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from marketplace.manifests.routes import MAX_REQUEST_BYTES
from node.ui.routes import COOKIE, ui_router
from tests import services
from tests.security.rawhttp import Answer, chunked, exchange, head
from training_jobs.routes import MAX_JOB_MESSAGE

pytestmark = pytest.mark.slow
MAX_JSON = 1024 * 1024  # AGORA_MAX_JSON_BYTES left at its default
MAX_UPLOAD = 2 * 1024 * 1024
UPLOAD_CAP = MAX_UPLOAD + 1024 * 1024  # what the node allows a multipart body on top
ENDLESS = 16 * 1024 * 1024  # more than any route takes: the node must stop it first
DEEP = 100_000
ARTIFACTS = services.REPO / "test-artifacts"
UPLOAD_ROUTES = {"/api/v1/offerings", "/api/v1/offerings/{offering_id}/versions", "/api/v1/manifests/apply"}
# the client may lose the answer to a body it is still sending when the node hangs up (TCP
# resets the unread rest): these cases may end with no answer, but must end
MAY_BE_CUT = {"long-string", "endless-chunked", "endless-upload", "truncated"}


@dataclass(frozen=True)
class Route:
    method: str
    template: str

    def path(self, value: str = "x") -> str:
        return re.sub(r"\{[^}]+\}", value, self.template)


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str | None
    body: Callable[[Route], Iterable[bytes]]
    headers: Callable[[Route], dict[str, str]] | None = None
    target: Callable[[Route], str] | None = None
    only: Callable[[Route], bool] = lambda route: True
    close_after_body: bool = False
    method: str | None = None  # another method than the route's


def body_cap(route: Route) -> int:
    if route.template in ("/api/v1/jobs", "/dsp/jobs") and route.method == "POST":
        return MAX_JOB_MESSAGE
    if route.template.startswith("/api/v1/manifests/"):
        return MAX_REQUEST_BYTES
    return MAX_JSON


def fixed(data: bytes) -> Callable[[Route], Iterable[bytes]]:
    return lambda route: [data]


def long_string(route: Route) -> Iterator[bytes]:
    size = body_cap(route) + 1024
    yield b'{"a":"'
    for _ in range(size // 65536 + 1):
        yield b"x" * 65536
    yield b'"}'


def long_string_length(route: Route) -> dict[str, str]:
    return {"Content-Length": str(8 + (body_cap(route) + 1024) // 65536 * 65536 + 65536)}


MULTIPART_DEEP = (
    b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n' + b"[" * DEEP + b"\r\n--b--\r\n"
)
UPLOAD_PREAMBLE = (
    b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n{"title": "endless"}\r\n'
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
)


def endless_upload(route: Route) -> Iterator[bytes]:
    yield f"{len(UPLOAD_PREAMBLE):x}\r\n".encode() + UPLOAD_PREAMBLE + b"\r\n"
    yield from chunked(b"u" * 16384, ENDLESS)


CASES = [
    Case("nested-arrays", "application/json", fixed(b"[" * DEEP + b"]" * DEEP)),
    Case("nested-objects", "application/json", fixed(b'{"a":' * DEEP + b"0" + b"}" * DEEP)),
    Case("huge-exponent", "application/json", fixed(b'{"a": 1e999999, "b": [-1e999999]}')),
    Case("long-integer", "application/json", fixed(b'{"a": ' + b"9" * DEEP + b"}")),
    Case("long-string", "application/json", long_string, headers=long_string_length),
    Case("invalid-utf8", "application/json", fixed(b'{"a": "\xff\xfe\xfd", "\xc3\x28": 1}')),
    Case("surrogate-and-nul", "application/json", fixed(b'{"a": "\\ud800", "b": "\\u0000"}')),
    Case("nan-infinity", "application/json", fixed(b'{"a": NaN, "b": [Infinity, -Infinity]}')),
    Case("xml", "application/xml", fixed(b"<?xml version='1.0'?><a>" * 1000)),
    Case("multipart-deep-metadata", "multipart/form-data; boundary=b", fixed(MULTIPART_DEEP)),
    Case("form-garbage", "application/x-www-form-urlencoded", fixed(b"token=%ff%fe&" + b"%5B" * 20_000)),
    Case("no-content-type", None, fixed(b'{"a": [1, 2, {"b": null}]}')),
    Case("binary", "application/octet-stream", fixed(bytes(range(256)) * 64)),
    Case("other-method", "application/json", fixed(b"{}"), method="PATCH"),
    Case("options", None, fixed(b""), method="OPTIONS"),
    Case("nul-query", None, fixed(b""), target=lambda route: route.path() + "?q=%00&limit=%00&cursor=%00"),
    Case(
        "nul-path", None, fixed(b""), target=lambda route: route.path("%00"), only=lambda r: "{" in r.template
    ),
    Case(
        "truncated",
        "application/json",
        fixed(b'{"a": [1, 2,'),
        headers=lambda route: {"Content-Length": "100000"},
        close_after_body=True,
    ),
    Case(
        "endless-chunked",
        "application/json",
        lambda route: chunked(b" " * 16384, ENDLESS),
        headers=lambda route: {"Transfer-Encoding": "chunked"},
    ),
    Case(
        "endless-upload",
        "multipart/form-data; boundary=b",
        endless_upload,
        headers=lambda route: {"Transfer-Encoding": "chunked"},
        only=lambda route: route.template in UPLOAD_ROUTES and route.method == "POST",
    ),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.LiveNode]:
    live = services.start_node(
        tmp_path_factory.mktemp("raw") / "node",
        AGORA_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        AGORA_REQUEST_TIMEOUT="3",
        AGORA_JOBS_WORKERS="0",
    )
    yield live
    live.stop()


def routes(node: services.LiveNode) -> list[Route]:
    """Every route the node serves: the OpenAPI document's, the UI's, the schema pages."""
    document = httpx.get(f"{node.url}/schema/openapi.json", timeout=30).json()
    found = {Route(m.upper(), p) for p, item in document["paths"].items() for m in item}
    for route in ui_router().routes:
        template = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        found |= {Route(m, template) for m in getattr(route, "methods", ()) if m in ("GET", "POST")}
    found |= {Route("GET", "/schema"), Route("GET", "/schema/openapi.json"), Route("POST", "/no/such/route")}
    return sorted(found, key=lambda r: (r.template, r.method))


def send(node: services.LiveNode, route: Route, case: Case, token: str | None) -> Answer:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    if token:
        headers |= {"Authorization": f"Bearer {token}", "Cookie": f"{COOKIE}={token}"}
    headers |= case.headers(route) if case.headers else {}
    body = (
        list(case.body(route))
        if case.name not in ("long-string", "endless-chunked", "endless-upload")
        else None
    )
    if body is not None and "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(sum(len(b) for b in body))
    target = case.target(route) if case.target else route.path()
    return exchange(
        node.port,
        head(case.method or route.method, target, headers),
        body if body is not None else case.body(route),
        timeout=20,
        close_after_body=case.close_after_body,
    )


BINDING = ("/dsp/catalog", "/dsp/negotiations", "/dsp/transfers")  # DSP error messages here


def _says_why(route: Route, answer: Answer) -> bool:
    """A refusal is a problem document, or on a DSP binding route a DSP error message
    (``…Error`` with its ``code`` and ``reason``)."""
    if answer.content_type.startswith("application/problem+json"):
        return True
    if not (route.template.startswith(BINDING) and answer.content_type.startswith("application/json")):
        return False
    try:
        error = json.loads(answer.body)
    except ValueError:
        return False
    return (
        isinstance(error, dict)
        and str(error.get("@type", "")).endswith("Error")
        and bool(error.get("code"))
        and isinstance(error.get("reason"), list)
    )


def test_every_route_survives_every_raw_input(node: services.LiveNode) -> None:
    token = node.token("admin")
    all_routes = routes(node)
    assert len(all_routes) > 50, all_routes
    histogram: Counter[str] = Counter()
    server_errors, not_problems, unanswered, slow = [], [], [], []
    cases = 0
    for route in all_routes:
        for case in CASES:
            if not case.only(route):
                continue
            for who, credential in (("anonymous", None), ("admin", token)):
                answer = send(node, route, case, credential)
                cases += 1
                label = f"{case.name} {route.method} {route.template} ({who})"
                histogram[str(answer.status) if answer.status else "no answer"] += 1
                if answer.seconds > 15:
                    slow.append((label, round(answer.seconds, 1)))
                if answer.status is None:
                    if case.name not in MAY_BE_CUT:
                        unanswered.append(label)
                elif answer.status >= 500:
                    server_errors.append((label, answer.status, answer.body[:300]))
                elif (
                    answer.status >= 400
                    and not route.template.startswith("/ui")
                    and not _says_why(route, answer)
                ):
                    not_problems.append((label, answer.status, answer.content_type))
    summary = {"routes": len(all_routes), "cases": cases, "status": dict(sorted(histogram.items()))}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "raw-input.json").write_text(json.dumps(summary, indent=2))
    print(f"\nraw input: {summary}")
    assert server_errors == [], server_errors[:10]
    assert not_problems == [], not_problems[:10]
    assert unanswered == [], unanswered[:10]
    assert slow == [], slow
    # the same process, still serving, with nothing unexpected in its log
    assert node.proc.poll() is None
    assert httpx.get(f"{node.url}/health", timeout=10).status_code == 200
    log = (node.home / "serve.log").read_text()
    for sign in ("Traceback", "Exception in ASGI application", "unexpected error"):
        assert sign not in log, log[log.find(sign) - 2000 : log.find(sign) + 2000]
