"""The server's own limits on a real node: heads, bodies, slow and silent clients.

One ``agora serve`` with ``AGORA_REQUEST_TIMEOUT=2`` and ``AGORA_MAX_JSON_BYTES`` lowered to
128 KiB, so every limit is reached in seconds. Slow clients hold connections while
``/health`` is timed from another one: they must not make it wait, and each must be cut off
within the timeout.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from contracts.routes import MAX_RPC_BYTES
from node.request_limits import MIN_RATE
from tests import services
from tests.security.rawhttp import Answer, chunked, exchange, head, trickle

pytestmark = pytest.mark.slow
TIMEOUT = 2.0
MAX_JSON = 128 * 1024
ENDLESS = 64 * 1024 * 1024  # more than a node reads: it must answer long before the end


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.LiveNode]:
    live = services.start_node(
        tmp_path_factory.mktemp("limits") / "node",
        AGORA_REQUEST_TIMEOUT=str(TIMEOUT),
        AGORA_MAX_JSON_BYTES=str(MAX_JSON),
        AGORA_MAX_HEADER_BYTES="16384",
        AGORA_JOBS_WORKERS="0",
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def token(node: services.LiveNode) -> str:
    return node.token("admin")


def problem(answer: Answer, status: int) -> dict[str, object]:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.content_type.startswith("application/problem+json"), answer.headers
    document: dict[str, object] = json.loads(answer.body)
    return document


def health_latencies(node: services.LiveNode, count: int) -> list[float]:
    latencies = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            started = time.monotonic()
            assert client.get(f"{node.url}/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    return latencies


def test_the_json_limit_is_the_operators_and_applies_before_reading(
    node: services.LiveNode, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    declared = exchange(node.port, head("POST", "/api/v1/negotiations", {**auth, "Content-Length": "200000"}))
    assert declared.sent == 0
    assert problem(declared, 413)["limit"] == MAX_JSON
    body = chunked(b" " * 4096, ENDLESS)  # no length declared: counted as it arrives
    streamed = exchange(
        node.port, head("POST", "/api/v1/negotiations", {**auth, "Transfer-Encoding": "chunked"}), body
    )
    assert problem(streamed, 413)["limit"] == MAX_JSON
    assert streamed.sent < ENDLESS // 4  # what the sockets buffered, not what the node read


def test_a_client_without_a_token_is_refused_before_its_body_is_read(node: services.LiveNode) -> None:
    answer = exchange(
        node.port,
        head("POST", "/api/v1/jobs", {"Content-Type": "application/json", "Content-Length": "12000000"}),
        chunked(b"x" * 65536, ENDLESS),  # written only until the node answers
    )
    problem(answer, 401)
    assert answer.sent < ENDLESS // 4


def test_headers_over_the_limits_are_refused(node: services.LiveNode) -> None:
    big = exchange(node.port, head("GET", "/health", {"X-Big": "a" * 20000}))
    assert "16384" in str(problem(big, 431)["detail"])
    # refused by the server before the app: still the node's security headers
    assert "frame-ancestors 'none'" in big.headers.get("content-security-policy", "")
    assert big.headers.get("x-frame-options") == "DENY"
    many = exchange(node.port, head("GET", "/health", {f"X-{i}": "1" for i in range(150)}))
    assert "header fields" in str(problem(many, 431)["detail"])
    garbage = exchange(node.port, b"\x16\x03\x01\x00\xff" + bytes(200))
    problem(garbage, 400)


def test_a_body_nobody_reads_closes_the_connection_after_the_answer(node: services.LiveNode) -> None:
    answer = exchange(
        node.port,
        head("GET", "/health", {"Transfer-Encoding": "chunked"}),
        chunked(b"z" * 16384, ENDLESS),
    )
    assert answer.status == 200
    assert answer.sent < ENDLESS // 4 and answer.seconds < 10


def test_slow_clients_do_not_hold_the_node(node: services.LiveNode) -> None:
    """40 clients trickle request heads, 10 trickle JSON bodies, 10 pause in their bodies and
    20 send nothing; /health answers promptly all the while, and every slow client is cut
    off: a head or a pause after the timeout, a trickled body once it falls behind 64 KiB/s
    after the timeout."""
    answers: list[tuple[str, Answer]] = []
    lock = threading.Lock()
    rpc_head = head("POST", "/chain/rpc", {"Content-Type": "application/json", "Content-Length": "300"})
    body = b'{"jsonrpc": "2.0", "id": 1' + b" " * 300

    def slow(kind: str) -> None:
        if kind == "head":
            answer = exchange(
                node.port, b"", trickle(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200, 0.2)
            )
        elif kind == "trickle":
            answer = exchange(node.port, rpc_head, trickle(body, 0.2))
        else:
            answer = exchange(node.port, rpc_head, trickle(body[:3], TIMEOUT + 1))
        with lock:
            answers.append((kind, answer))

    silent = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(20)]
    kinds = ["head"] * 40 + ["trickle"] * 10 + ["pause"] * 10
    threads = [threading.Thread(target=slow, args=(kind,)) for kind in kinds]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    latencies = health_latencies(node, 20)
    for thread in threads:
        thread.join(60)
    # blocked by the slow clients, /health would wait until they are cut off (TIMEOUT)
    assert max(latencies) < TIMEOUT, latencies
    assert len(answers) == len(kinds)
    cut_after = {"head": TIMEOUT, "pause": TIMEOUT, "trickle": TIMEOUT + MAX_RPC_BYTES / MIN_RATE}
    for kind, answer in answers:
        assert answer.seconds < cut_after[kind] + 3, (kind, answer.seconds)
        assert answer.status == 408, (kind, answer.status, answer.body[:200])
        assert answer.content_type.startswith("application/problem+json")
    for sock in silent:  # each was closed by the node, without an answer
        sock.settimeout(max(0.1, started + TIMEOUT + 3 - time.monotonic()))
        assert sock.recv(100) == b""
        sock.close()
    assert node.proc.poll() is None


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def test_documents_inside_requests_are_bounded_with_the_reason(node: services.LiveNode, token: str) -> None:
    """YAML manifests (aliases, depth, numbers), JSON policies and multipart metadata parts."""
    with httpx.Client(base_url=f"{node.url}/api/v1", headers={"Authorization": f"Bearer {token}"}) as api:
        started = time.monotonic()
        laughs = api.post("/manifests/plan", json={"manifest": LAUGHS, "source_name": "laughs.yaml"})
        assert laughs.status_code == 400 and "expands to more than" in laughs.json()["detail"], laughs.text
        assert time.monotonic() - started < 5
        deep = api.post("/manifests/plan", json={"manifest": "offerings: " + "[" * 50_000})
        assert deep.status_code == 400 and "nests deeper" in deep.json()["detail"], deep.text
        number = api.post("/manifests/plan", json={"manifest": "apiVersion: agora/v1\nx: " + "9" * 5000})
        assert number.status_code == 400 and "manifest:2" in number.json()["detail"], number.text
        policy = {"permissions": [{"action": "use", "constraints": [{"and": []}]}]}
        for _ in range(100):
            policy = {"permissions": [{"action": "use", "constraints": [{"and": [policy]}]}]}
        evaluated = api.post("/policies/evaluate", json={"policy": policy, "context": {}})
        assert evaluated.status_code == 400 and "nests deeper" in evaluated.json()["detail"], evaluated.text
        metadata = "[" * 10_000 + "]" * 10_000
        upload = api.post("/offerings", data={"metadata": metadata}, files={"file": ("f.csv", b"a,b\n1,2\n")})
        assert upload.status_code == 400, upload.text
        assert upload.json()["errors"][0]["path"] == "metadata" and "nests deeper" in upload.text
        assert api.get("/offerings").json()["items"] == []  # nothing was registered


MALFORMED = {
    "length and chunked": b"POST /chain/rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two lengths": b"POST /chain/rpc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n{}",
    "negative length": b"POST /chain/rpc HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "bad chunk size": b"POST /chain/rpc HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "space in header name": b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    "NUL in header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_http_is_refused_as_a_problem(node: services.LiveNode, name: str) -> None:
    answer = exchange(node.port, MALFORMED[name])
    assert answer.status == 400, (answer.status, answer.body[:200])
    assert answer.content_type.startswith("application/problem+json")
    assert node.proc.poll() is None
