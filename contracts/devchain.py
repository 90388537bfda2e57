"""``agora devchain``: one embedded chain served over JSON-RPC on loopback.

For several nodes on one machine (the demo, tests, a laptop): each node sets
``AGORA_CHAIN_URL`` and ``AGORA_CHAIN_REGISTRY`` to the printed values and they all
notarize in the same registry. Accounts are funded on request (``anvil_setBalance``), as
on anvil. It is a development chain: never expose it beyond loopback.
"""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from contracts import rpc
from contracts.chain import DEV_FAUCET_KEY, EmbeddedChain
from kernel.errors import InvalidInput
from kernel.limits import JSON, loads

MAX_BODY = 4 * 1024 * 1024


class DevChainServer:
    """The chain plus its HTTP server; ``start()`` serves in a thread, ``stop()`` ends it."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        from eth_account import Account

        self.chain = EmbeddedChain(data_dir, Account.from_key(DEV_FAUCET_KEY))
        chain = self.chain

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length > MAX_BODY:
                    self._reply(
                        413, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "too large"}}
                    )
                    return
                try:
                    body = loads(self.rfile.read(length), JSON.with_max_string(MAX_BODY))
                except InvalidInput:
                    self._reply(
                        400,
                        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}},
                    )
                    return
                self._reply(200, rpc.handle(chain, body, read_only=False))

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    @property
    def registry(self) -> str:
        assert self.chain.registry_address is not None
        return self.chain.registry_address

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="agora-devchain", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.chain.close()


def serve_devchain(data_dir: Path, port: int) -> None:
    server = DevChainServer(data_dir, port)
    print(f"AGORA_CHAIN_URL={server.url}")
    print(f"AGORA_CHAIN_REGISTRY={server.registry}")
    print(f"# chain id {server.chain.chain_id}; state in {data_dir}; Ctrl-C to stop", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops it like Ctrl-C
    try:
        server.server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server.server_close()
        server.chain.close()
