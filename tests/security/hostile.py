"""A hostile organisation for the security tests: a real node behind a front that plays tricks.

The hostile node is a stock ``agora serve`` process whose public URL is the front's; the
front passes every request on to it, except where its current ``mode`` says otherwise. Replies
and the DID document are plain JSON, so the front alters them freely; a protocol message it
makes up itself carries a token it signs with the hostile organisation's key
(:mod:`tests.dsp_peer`): its lies are as valid as a peer that went rogue would send them. An
:class:`InternalService`
on loopback stands for what must stay out of reach (an admin port, a metadata service): it
counts every request that reaches it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx

from connector.dsp.binding import version_metadata
from connector.dsp.identity import NodeIdentity
from tests import dsp_peer, services

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class InternalService:
    """Stands for a service inside the network; counts the requests reaching it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def _count(self) -> None:
                hits.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PUT = do_DELETE = _count

        self.server = services.LoopbackHTTP(Handler)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


class DidHost:
    """A stranger's web host: its DID document (set by the test, as the DID names the port)
    at ``/.well-known/did.json`` and DSP version metadata naming ``/dsp``; nothing else."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {}
        self.hits: list[str] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                host.hits.append(self.path)
                if self.path == "/.well-known/did.json":
                    return _send(self, 200, json.dumps(host.document))
                if self.path == "/.well-known/dspace-version":
                    return _send(self, 200, json.dumps(version_metadata("/dsp")))
                return _send(self, 404, "{}")

            do_POST = do_GET

        self.server = services.LoopbackHTTP(Handler)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


class HostileFront:
    """The hostile node's public endpoint. Modes:

    ``pass``                 every request goes to the real node
    ``identity-elsewhere``   the DID document's AgoraNode service names ``target`` as the endpoint
    ``redirect``             catalog requests answer 302 to ``target``
    ``oversize``             catalog requests answer an endless body
    ``slow``                 catalog requests answer after ``slow_seconds``
    ``trickle``              catalog requests answer one byte every 0.3 s
    ``data-elsewhere``       the front answers a transfer request itself and sends the consumer a
                             start message (signed as the hostile organisation) whose data
                             address points to ``target``
    ``data-oversize``        a transfer's data comes with a mebibyte more than agreed
    ``chain-elsewhere``      a transfer's provenance names ``target`` as the chain to ask
    ``chain-redirect``       the provenance names the front's own ``/chain/rpc``, which answers
                             307 to ``target`` (a redirect keeps the POST)
    """

    def __init__(self, key: bytes, address: str, target: str) -> None:
        self.key, self.address, self.target = key, address, target
        self.mode = "pass"
        self.upstream = ""
        self.slow_seconds = 6.0
        self.requests: Counter[str] = Counter()  # "METHOD kind" of each request received
        self.oversize_sent = 0
        self.sent: list[httpx.Response] = []  # the answers to messages the front made up
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return

            def do_GET(self) -> None:
                front.handle(self, b"")

            def do_POST(self) -> None:
                front.handle(self, self.rfile.read(int(self.headers.get("content-length") or 0)))

        self.server = services.LoopbackHTTP(Handler)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    def handle(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        path = req.path.split("?", 1)[0]
        kind = _kind(path)
        self.requests[f"{req.command} {kind}"] += 1
        mode = self.mode
        if kind == "transfer-request" and mode == "data-elsewhere":
            return self._start_elsewhere(req, body)
        if kind == "catalog" and mode == "redirect":
            return _send(req, 302, "", {"Location": f"{self.target}/dsp/catalog/request"})
        if path == "/chain/rpc" and mode == "chain-redirect":
            return _send(req, 307, "", {"Location": f"{self.target}/rpc"})
        if kind == "catalog" and mode == "oversize":
            return self._endless(req)
        if kind == "catalog" and mode == "slow":
            time.sleep(self.slow_seconds)
        if kind == "catalog" and mode == "trickle":
            return self._trickle(req)
        response = self._forward(req, body)
        content = response.content
        if kind == "identity" and mode == "identity-elsewhere" and response.status_code == 200:
            content = self._endpoint_elsewhere(content)
        if kind == "data" and mode == "data-oversize":
            content += b"\0" * (1024 * 1024)
        if (
            kind == "provenance"
            and mode in ("chain-elsewhere", "chain-redirect")
            and response.status_code == 200
        ):
            doc = json.loads(content)
            rpc = f"{self.target}/rpc" if mode == "chain-elsewhere" else f"{self.url}/chain/rpc"
            doc["chain"] = {**doc.get("chain", {}), "rpc_url": rpc}
            content = json.dumps(doc).encode()
        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        _send(req, response.status_code, content, headers)

    def _forward(self, req: BaseHTTPRequestHandler, body: bytes) -> httpx.Response:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP_BY_HOP | {"host"}}
        return httpx.request(
            req.command, self.upstream + req.path, content=body or None, headers=headers, timeout=60
        )

    def _endpoint_elsewhere(self, content: bytes) -> bytes:
        document = json.loads(content)
        for service in document["service"]:
            if service["type"] == "AgoraNode":
                service["serviceEndpoint"] = self.target
        return json.dumps(document).encode()

    def _start_elsewhere(self, req: BaseHTTPRequestHandler, body: bytes) -> None:
        """Take the transfer request, then tell the consumer the data lies at ``target``: the
        start message goes to the consumer's callback before the answer, signed by the hostile
        organisation (the real node never sees the request, so no honest start races it)."""
        request = json.loads(body)
        consumer_pid, provider_pid = request["consumerPid"], f"urn:uuid:hostile-{time.monotonic_ns()}"
        start = {
            "@context": request["@context"],
            "@type": "TransferStartMessage",
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "dataAddress": {
                "@type": "DataAddress",
                "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
                "endpoint": f"{self.target}/steal",
                "endpointProperties": [
                    {"@type": "EndpointProperty", "name": "authorization", "value": "stolen"},
                    {"@type": "EndpointProperty", "name": "authType", "value": "bearer"},
                ],
            },
        }
        callback = str(request["callbackAddress"]).rstrip("/")
        base, dsp = callback.rsplit("/dsp", 1)
        self.sent.append(
            dsp_peer.post(self.identity, base, f"/dsp{dsp}/transfers/{consumer_pid}/start", start)
        )
        process = {
            "@context": request["@context"],
            "@type": "TransferProcess",
            "providerPid": provider_pid,
            "consumerPid": consumer_pid,
            "state": "REQUESTED",
        }
        _send(req, 201, json.dumps(process))

    @property
    def identity(self) -> NodeIdentity:
        """The hostile organisation as it signs: its key, at the front's URL (its DID)."""
        return dsp_peer.identity(self.url, self.key, "Hostile")

    def _endless(self, req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.end_headers()
        chunk = b" " * 65536
        try:
            for _ in range(4096):  # 256 MiB, unless the other side hangs up
                req.wfile.write(chunk)
                self.oversize_sent += len(chunk)
        except OSError:
            return

    def _trickle(self, req: BaseHTTPRequestHandler) -> None:
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", "1000")
        req.end_headers()
        try:
            for _ in range(1000):
                req.wfile.write(b" ")
                req.wfile.flush()
                time.sleep(0.3)
        except OSError:
            return


def _kind(path: str) -> str:
    if path in ("/.well-known/did.json", "/did.json"):
        return "identity"
    if path.startswith("/dsp/catalog"):
        return "catalog"
    if path == "/dsp/transfers/request":
        return "transfer-request"
    if path.startswith("/dsp/transfers/") and path.endswith("/data"):
        return "data"
    if path.startswith("/dsp/transfers/") and path.endswith("/provenance"):
        return "provenance"
    return path.split("/")[2] if path.startswith("/dsp/") else path


def _send(
    req: BaseHTTPRequestHandler, status: int, content: str | bytes, headers: dict[str, Any] | None = None
) -> None:
    data = content.encode() if isinstance(content, str) else content
    try:
        req.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            req.send_header(key, str(value))
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
    except OSError:
        return  # the victim hung up (it timed out, or refused the answer): that is the point
