"""The node's end of one warm sandboxed process: its channel, its deadlines, its caps.

A :class:`WarmProcess` runs one sandbox run with a :class:`~training_jobs.sandbox.Channel`
in a background thread for as long as the process lives, and exchanges frames with it
(:mod:`federation.trainer.frames`: 4-byte big-endian header length, UTF-8 JSON header,
8-byte big-endian payload length, payload). The process runs code the node does not trust,
so every reply is read as hostile:

* a header length over :data:`~federation.trainer.frames.HEADER_MAX_BYTES` and a payload
  length over the caller's cap are refused before a byte of what they announce is read;
* every call has a deadline, for the request's write as for the reply's read; a process
  that misses it is killed with its whole sandbox, and the call fails saying so;
* a reply names the call it answers; garbage, a frame for another call, or bytes sent when
  nothing was asked break the protocol: the process is killed;
* a process that dies fails the call with how it ended, from the sandbox's outcome.

Every failure is :class:`TrainerFailed`, whose ``detail`` the node wrote (it quotes nothing
the process sent: that text comes from code beside the provider's rows); what the process
said — its error, its last log lines — is in ``private``, for the provider's log only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from federation.trainer import frames
from kernel.errors import AgoraError
from training_jobs.failures import ended
from training_jobs.sandbox import Channel, Sandbox, SandboxOutcome, SandboxRun
from training_jobs.sandbox.base import fmt_bytes

TAIL_LINES = 20
GIST_LINES = 5
GIST_MAX = 1000
PRIVATE_MAX = 4000
READ_CHUNK = 1 << 20
STOP_SECONDS = 5.0
KILL_WAIT_SECONDS = 15.0
END_WAIT_SECONDS = 3.0  # from a closed channel to the sandbox's end


class TrainerFailed(AgoraError):
    """A call to a warm process failed. ``detail`` is the node's own sentence; ``private``
    holds what the process said (its error, its last log lines), for the provider's log."""

    type_slug = "trainer-failed"
    status = 422
    title = "Local training failed"

    def __init__(self, detail: str, *, private: str = "") -> None:
        super().__init__(detail)
        self.private = private[:PRIVATE_MAX]


class _Timeout(Exception):
    pass


class _Ended(Exception):
    pass


@dataclass(frozen=True)
class Reply:
    header: dict[str, Any]
    payload: bytes


class WarmProcess:
    """One long-lived sandboxed process; calls are serialized, one reply per request.

    ``role`` names it in sentences ("trainer", "evaluator"); ``on_log`` receives each line
    of its log; ``max_payload`` caps a reply's payload.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        run: SandboxRun,
        *,
        role: str,
        on_log: Callable[[str], None],
        max_payload: int,
    ) -> None:
        self.role = role
        self.max_payload = max_payload
        self.limits = run.limits
        self._sandbox = sandbox
        self._channel = Channel.open()
        self._run = dataclasses.replace(run, channel=self._channel)
        self._on_log = on_log
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._calls = itertools.count(1)
        self._outcome: SandboxOutcome | None = None
        self._error: BaseException | None = None
        self._stopped: str | None = None  # why the node stopped it
        self._thread = threading.Thread(target=self._serve, name=f"warm-{role}", daemon=True)

    # -- life -----------------------------------------------------------------------------

    def start(self) -> None:
        os.set_blocking(self._channel.requests, False)
        os.set_blocking(self._channel.replies, False)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._outcome = self._sandbox.run(self._run, on_output=self._line, cancel=self._cancel)
        except BaseException as exc:  # the node's own problem (no sandbox, a bad mount): for the caller
            self._error = exc
        finally:
            self._channel.close_job_ends()

    def _line(self, line: str) -> None:
        self._tail.append(line)
        with contextlib.suppress(Exception):
            self._on_log(line)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._stopped is None and not self._cancel.is_set()

    @property
    def outcome(self) -> SandboxOutcome | None:
        return self._outcome

    def gist(self) -> str:
        """The last lines of the process's log, for the provider's log."""
        return " | ".join(list(self._tail)[-GIST_LINES:])[:GIST_MAX]

    def kill(self, why: str) -> None:
        """Stop the process and its sandbox now (idempotent)."""
        if self._stopped is None:
            self._stopped = why
        self._cancel.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(KILL_WAIT_SECONDS)

    def close(self) -> None:
        """Ask the process to stop (kill it if it does not, or if a call is under way) and
        release the channel."""
        idle = self._lock.acquire(blocking=False)
        if idle:
            self._lock.release()
        if self.alive and idle:
            with contextlib.suppress(TrainerFailed):
                self.call({"op": "stop"}, timeout=STOP_SECONDS, what="stop")
            self._thread.join(STOP_SECONDS)
        if self._thread.is_alive():
            self.kill("closed by the node")
        self._stopped = self._stopped or "closed by the node"
        self._channel.close()

    # -- calls ------------------------------------------------------------------------------

    def call(self, header: dict[str, Any], payload: bytes = b"", *, timeout: float, what: str) -> Reply:
        """Send one request and return its reply; :class:`TrainerFailed` for anything else."""
        with self._lock:
            self._require_running(what)
            number = next(self._calls)
            deadline = time.monotonic() + timeout
            try:
                self._quiet()
                self._send(frames.pack({**header, "call": number}, payload), deadline)
                reply = self._receive(deadline)
            except _Timeout:
                self.kill(f"it did not answer {what} within {timeout:g} s")
                raise TrainerFailed(
                    f"the {self.role} did not answer {what} within {timeout:g} s and was stopped",
                    private=self.gist(),
                ) from None
            except _Ended:
                raise self._died(what) from None
            except frames.BadFrame as exc:
                self.kill(f"it broke the channel's protocol during {what}")
                raise TrainerFailed(
                    f"the {self.role} broke the channel's protocol during {what} ({exc}) and was stopped",
                    private=self.gist(),
                ) from None
            if reply.header.get("call") != number:
                self.kill(f"it answered another call than {what}")
                raise TrainerFailed(
                    f"the {self.role} answered another call than {what} and was stopped", private=self.gist()
                )
            if reply.header.get("ok") is not True:
                error = reply.header.get("error")
                raise TrainerFailed(
                    f"the bundle's code failed during {what} in the {self.role}",
                    private=(error if isinstance(error, str) else "") + "\n" + self.gist(),
                )
            return reply

    def _require_running(self, what: str) -> None:
        if self._error is not None:
            raise self._error
        if self._stopped is not None:
            raise TrainerFailed(f"the {self.role} is not running ({self._stopped}), so it cannot {what}")
        if not self._thread.is_alive():
            raise self._died(what)

    def _died(self, what: str) -> BaseException:
        """The failure of a call whose process ended by itself (or never started), or closed
        its end of the channel (then it is stopped)."""
        self._thread.join(END_WAIT_SECONDS)
        if self._error is not None:
            return self._error
        if self._thread.is_alive():
            self.kill(f"it closed its channel during {what}")
            return TrainerFailed(
                f"the {self.role} closed its channel during {what} and was stopped", private=self.gist()
            )
        outcome = self._outcome
        how = ended(outcome, self.limits) if outcome is not None else "ended"
        self._stopped = self._stopped or f"it {how}"
        return TrainerFailed(f"the {self.role} process {how} during {what}", private=self.gist())

    def _quiet(self) -> None:
        """Nothing may arrive unasked: bytes waiting before a request break the protocol."""
        ready = select.poll()
        ready.register(self._channel.replies, select.POLLIN)
        if not ready.poll(0):
            return
        try:
            chunk = os.read(self._channel.replies, 1)
        except BlockingIOError:
            return
        if not chunk:
            raise _Ended()
        raise frames.BadFrame("it sent bytes nobody asked for")

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        ready = select.poll()
        ready.register(self._channel.requests, select.POLLOUT)
        while view:
            if not ready.poll(_remaining_ms(deadline)):
                raise _Timeout()
            try:
                view = view[os.write(self._channel.requests, view[:READ_CHUNK]) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _Ended() from None

    def _read(self, size: int, deadline: float) -> bytes:
        buffer = bytearray()
        ready = select.poll()
        ready.register(self._channel.replies, select.POLLIN)
        while len(buffer) < size:
            if not ready.poll(_remaining_ms(deadline)):
                raise _Timeout()
            try:
                chunk = os.read(self._channel.replies, min(size - len(buffer), READ_CHUNK))
            except BlockingIOError:
                continue
            if not chunk:
                raise _Ended()
            buffer += chunk
        return bytes(buffer)

    def _receive(self, deadline: float) -> Reply:
        (header_size,) = frames.HEADER_LENGTH.unpack(self._read(frames.HEADER_LENGTH.size, deadline))
        if header_size > frames.HEADER_MAX_BYTES:
            raise frames.BadFrame(f"it announced a header over {fmt_bytes(frames.HEADER_MAX_BYTES)}")
        header = frames.parse_header(self._read(header_size, deadline))
        (payload_size,) = frames.PAYLOAD_LENGTH.unpack(self._read(frames.PAYLOAD_LENGTH.size, deadline))
        if payload_size > self.max_payload:
            raise frames.BadFrame(f"it announced a payload over the cap of {fmt_bytes(self.max_payload)}")
        return Reply(header, self._read(payload_size, deadline))


def _remaining_ms(deadline: float) -> int:
    """What is left of a deadline, for ``poll`` (at least 0: a missed deadline polls once)."""
    return max(0, int((deadline - time.monotonic()) * 1000))
