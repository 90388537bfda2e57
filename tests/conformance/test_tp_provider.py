"""DSP TCK cases TP:01-01 … 03-06 (02-04 is disabled in the TCK): the node as provider of a
transfer, the TCK as its consumer (``TransferProcessProvider0{1,2,3}Test``). Each case names
its agreement ``ATP0xyy`` (seeded by the conformance profile; the TCK never negotiates it)
and the format ``HttpData-PULL``; what the node does on its own follows from the agreement.
States are polled at ``GET /transfers/{providerPid}``, as the TCK does."""

from __future__ import annotations

from typing import Any

from tests.conformance.peer import CONTEXT, Case, TckPeer, new_id

TRANSFERS = "transfers"


class Consumer:
    """The TCK's consumer side of one transfer."""

    def __init__(self, peer: TckPeer, case_id: str) -> None:
        self.peer = peer
        self.agreement = "ATP" + case_id.replace("-", "")
        self.consumer_pid = new_id()
        self.provider_pid = ""
        self.case = Case(peer)

    def request(self) -> None:
        body = {
            "@context": CONTEXT,
            "@id": new_id(),
            "@type": "TransferRequestMessage",
            "consumerPid": self.consumer_pid,
            "agreementId": self.agreement,
            "format": "HttpData-PULL",
            "callbackAddress": self.peer.url,
        }
        reply = self.peer.post("/transfers/request", body).json()
        assert reply["@type"] == "TransferProcess" and reply["consumerPid"] == self.consumer_pid
        self.provider_pid = reply["providerPid"]

    def send(self, kind: str, type_: str, *, error: bool = False, **fields: Any) -> None:
        ids = {"providerPid": self.provider_pid, "consumerPid": self.consumer_pid}
        body = {"@context": CONTEXT, "@id": new_id(), "@type": type_, **ids, **fields}
        self.peer.post(f"/transfers/{self.provider_pid}/{kind}", body, error=error)

    def terminate(self, *, error: bool = False) -> None:
        self.send("termination", "TransferTerminationMessage", error=error, code="1")

    def complete(self, *, error: bool = False) -> None:
        self.send("completion", "TransferCompletionMessage", error=error)

    def suspend(self, *, error: bool = False) -> None:
        self.send("suspension", "TransferSuspensionMessage", error=error, code="1")

    def start(self, *, error: bool = False) -> None:
        self.send("start", "TransferStartMessage", error=error)  # the error case's start has no dataAddress

    def expect(self, kind: str) -> None:
        self.case.expect(f"/transfers/{self.consumer_pid}/{kind}")

    def arrives(self, kind: str, type_: str, state: str) -> dict[str, Any]:
        message = self.case.wait(f"/transfers/{self.consumer_pid}/{kind}")
        assert message["@type"] == type_
        assert message["providerPid"] == self.provider_pid and message["consumerPid"] == self.consumer_pid
        self.state(state)
        return message

    def started(self) -> None:
        self.expect("start")
        self.request()
        start = self.arrives("start", "TransferStartMessage", "STARTED")
        address = start["dataAddress"]
        assert address["@type"] == "DataAddress" and address["endpointType"]

    def state(self, expected: str) -> None:
        self.peer.wait_state(TRANSFERS, self.provider_pid, expected)


def test_TP_01_01_start_then_provider_terminates(peer: TckPeer) -> None:
    """TP:01-01: request → the provider starts → STARTED → it terminates → TERMINATED."""
    tck = Consumer(peer, "01-01")
    tck.started()
    tck.expect("termination")
    tck.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tck.case.done()


def test_TP_01_02_start_then_provider_completes(peer: TckPeer) -> None:
    """TP:01-02: request → start → the provider completes → COMPLETED."""
    tck = Consumer(peer, "01-02")
    tck.started()
    tck.expect("completion")
    tck.arrives("completion", "TransferCompletionMessage", "COMPLETED")
    tck.case.done()


def test_TP_01_03_start_suspend_then_provider_terminates(peer: TckPeer) -> None:
    """TP:01-03: request → start → the provider suspends → SUSPENDED → it terminates."""
    tck = Consumer(peer, "01-03")
    tck.started()
    tck.expect("suspension")
    tck.arrives("suspension", "TransferSuspensionMessage", "SUSPENDED")
    tck.expect("termination")
    tck.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tck.case.done()


def test_TP_01_04_start_suspend_restart_complete(peer: TckPeer) -> None:
    """TP:01-04: request → start → the provider suspends, starts again, completes → COMPLETED."""
    tck = Consumer(peer, "01-04")
    tck.started()
    tck.expect("suspension")
    tck.arrives("suspension", "TransferSuspensionMessage", "SUSPENDED")
    tck.expect("start")
    tck.arrives("start", "TransferStartMessage", "STARTED")
    tck.expect("completion")
    tck.arrives("completion", "TransferCompletionMessage", "COMPLETED")
    tck.case.done()


def test_TP_01_05_provider_terminates_request(peer: TckPeer) -> None:
    """TP:01-05: request → the provider terminates → TERMINATED."""
    tck = Consumer(peer, "01-05")
    tck.expect("termination")
    tck.request()
    tck.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tck.case.done()


def test_TP_02_01_consumer_terminates_started(peer: TckPeer) -> None:
    """TP:02-01: request → start → STARTED → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "02-01")
    tck.started()
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_TP_02_02_consumer_completes_started(peer: TckPeer) -> None:
    """TP:02-02: request → start → STARTED → the TCK completes → COMPLETED."""
    tck = Consumer(peer, "02-02")
    tck.started()
    tck.complete()
    tck.state("COMPLETED")
    tck.case.done()


def test_TP_02_03_consumer_suspends_then_terminates(peer: TckPeer) -> None:
    """TP:02-03: request → start → the TCK suspends → SUSPENDED → the TCK terminates."""
    tck = Consumer(peer, "02-03")
    tck.started()
    tck.suspend()
    tck.state("SUSPENDED")
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_TP_02_05_consumer_terminates_request(peer: TckPeer) -> None:
    """TP:02-05: request (the provider waits) → REQUESTED → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "02-05")
    tck.request()
    tck.state("REQUESTED")
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_TP_03_01_completion_of_requested_refused(peer: TckPeer) -> None:
    """TP:03-01: request → REQUESTED → a completion is refused (4xx); still REQUESTED."""
    tck = Consumer(peer, "03-01")
    tck.request()
    tck.state("REQUESTED")
    tck.complete(error=True)
    tck.state("REQUESTED")
    tck.case.done()


def test_TP_03_02_suspension_of_requested_refused(peer: TckPeer) -> None:
    """TP:03-02: request → REQUESTED → a suspension is refused (4xx); still REQUESTED."""
    tck = Consumer(peer, "03-02")
    tck.request()
    tck.state("REQUESTED")
    tck.suspend(error=True)
    tck.state("REQUESTED")
    tck.case.done()


def test_TP_03_03_completion_of_suspended_refused(peer: TckPeer) -> None:
    """TP:03-03: request → start → the TCK suspends → a completion is refused; still SUSPENDED."""
    tck = Consumer(peer, "03-03")
    tck.started()
    tck.suspend()
    tck.state("SUSPENDED")
    tck.complete(error=True)
    tck.state("SUSPENDED")
    tck.case.done()


def _terminated(peer: TckPeer, case_id: str) -> Consumer:
    tck = Consumer(peer, case_id)
    tck.started()
    tck.terminate()
    tck.state("TERMINATED")
    return tck


def test_TP_03_04_start_of_terminated_refused(peer: TckPeer) -> None:
    """TP:03-04: … the TCK terminates → TERMINATED → its start is refused (4xx)."""
    tck = _terminated(peer, "03-04")
    tck.start(error=True)
    tck.state("TERMINATED")
    tck.case.done()


def test_TP_03_05_suspension_of_terminated_refused(peer: TckPeer) -> None:
    """TP:03-05: … TERMINATED → a suspension is refused (4xx)."""
    tck = _terminated(peer, "03-05")
    tck.suspend(error=True)
    tck.state("TERMINATED")
    tck.case.done()


def test_TP_03_06_completion_of_terminated_refused(peer: TckPeer) -> None:
    """TP:03-06: … TERMINATED → a completion is refused (4xx)."""
    tck = _terminated(peer, "03-06")
    tck.complete(error=True)
    tck.state("TERMINATED")
    tck.case.done()
