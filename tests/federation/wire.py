"""A recording TCP proxy on loopback, and a reader of the HTTP/1.1 it recorded.

Put in front of a node (its ``AGORA_PUBLIC_URL`` pointing at the proxy), it forwards every
connection to the node's real port and keeps every byte each way, per connection, so a test
can count exactly what a node sent. :meth:`RecordingProxy.hold` stops forwarding what is sent to
the node (it waits in the proxy) until :meth:`RecordingProxy.release`: a node that is slow to
answer, at a moment the test chooses.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

import h11


@dataclass
class Connection:
    to_server: bytearray = field(default_factory=bytearray)  # what the connecting side sent
    to_client: bytearray = field(default_factory=bytearray)  # what the node behind answered


class RecordingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections: list[Connection] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._open = threading.Event()
        self._open.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            record = Connection()
            self.connections.append(record)
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(
                target=self._pump, args=(client, server, record.to_server, self._open), daemon=True
            ).start()
            threading.Thread(target=self._pump, args=(server, client, record.to_client), daemon=True).start()

    def hold(self) -> None:
        """From now on, bytes for the node wait here (on open connections and new ones)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    @staticmethod
    def _pump(
        source: socket.socket, sink: socket.socket, log: bytearray, gate: threading.Event | None = None
    ) -> None:
        try:
            while chunk := source.recv(65536):
                log.extend(chunk)
                if gate is not None:
                    gate.wait()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        self._open.set()
        self._listener.close()


@dataclass
class Message:
    start: str  # "POST /dsp/…" for a request, "200" for a response
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str:
        return next((v.decode() for k, v in self.headers if k.decode().lower() == name), "")


def _read(conn: h11.Connection) -> Message | None:
    message: Message | None = None
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            message = Message(f"{event.method.decode()} {event.target.decode()}", list(event.headers), b"")
        elif isinstance(event, h11.Response):
            message = Message(str(event.status_code), list(event.headers), b"")
        elif isinstance(event, h11.Data) and message is not None:
            message.body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return message
        else:  # NEED_DATA, PAUSED, ConnectionClosed: no (more) whole message
            return None


def exchanges(record: Connection) -> list[tuple[Message, Message | None]]:
    """The requests on one recorded connection, each with the response it got."""
    server, client = h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT)
    server.receive_data(bytes(record.to_server))
    client.receive_data(bytes(record.to_client))
    out: list[tuple[Message, Message | None]] = []
    while True:
        request = _read(server)
        if request is None:
            return out
        method, target = request.start.split(" ", 1)
        headers = [(k, v) for k, v in request.headers]
        client.send(h11.Request(method=method, target=target, headers=headers))
        if request.body:
            client.send(h11.Data(data=request.body))
        client.send(h11.EndOfMessage())
        response = _read(client)
        out.append((request, response))
        if response is None:
            return out
        server.send(
            h11.Response(
                status_code=int(response.start), headers=[("Content-Length", str(len(response.body)))]
            )
        )
        server.send(h11.Data(data=response.body)) if response.body else None
        server.send(h11.EndOfMessage())
        try:
            server.start_next_cycle()
            client.start_next_cycle()
        except h11.LocalProtocolError:
            return out
