"""DSP TCK cases TP_C:01-01 … 03-06 (02-04 is disabled in the TCK): the node as consumer of a
transfer, the TCK as provider (``TransferProcessConsumer0{1,2,3}Test``). Each case starts by
the TCK's initiation call naming an agreement ``ATPC0xyy`` the node holds (seeded: the TCK
never negotiates it) and the format; the node sends its TransferRequestMessage to the TCK,
and what it does next follows from the agreement. States are polled at
``GET {callbackAddress}/transfers/{consumerPid}``."""

from __future__ import annotations

from typing import Any

from tests.conformance.conftest import Conformance
from tests.conformance.peer import CONTEXT, PARTICIPANT, Case, new_id

TRANSFERS = "transfers"
FORMAT = "HttpData-PULL"
DATA_ADDRESS = {
    "@type": "DataAddress",
    "endpoint": "http://example.com",
    "endpointType": "https://w3id.org/idsa/v4.1/HTTP",
}


class Provider:
    """The TCK's provider side of one transfer the node asks for."""

    def __init__(self, tck: Conformance, agreement: str) -> None:
        self.tck = tck
        self.peer = tck.peer
        self.agreement = agreement
        self.provider_pid = new_id()
        self.consumer_pid = ""
        self.case = Case(self.peer)

    def process(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "@context": CONTEXT,
            "@type": "TransferProcess",
            "providerPid": self.provider_pid,
            "consumerPid": body.get("consumerPid"),
            "state": "REQUESTED",
        }

    def initiate(self) -> None:
        self.case.expect("/transfers/request", self.process)
        self.peer.initiate(
            self.tck.transfer_initiation,
            {
                "providerId": PARTICIPANT,
                "agreementId": self.agreement,
                "format": FORMAT,
                "connectorAddress": self.peer.url,
            },
        )
        request = self.case.wait("/transfers/request")
        assert request["@type"] == "TransferRequestMessage"
        assert request["agreementId"] == self.agreement and request["format"] == FORMAT
        assert request["callbackAddress"] == self.peer.node_dsp
        self.consumer_pid = request["consumerPid"]
        self.state("REQUESTED")

    def send(self, kind: str, type_: str, *, error: bool = False, **fields: Any) -> None:
        ids = {"providerPid": self.provider_pid, "consumerPid": self.consumer_pid}
        body = {"@context": CONTEXT, "@id": new_id(), "@type": type_, **ids, **fields}
        self.peer.post(f"/transfers/{self.consumer_pid}/{kind}", body, error=error)

    def start(self, *, error: bool = False) -> None:
        fields = {} if error else {"dataAddress": DATA_ADDRESS}  # the error case's start has none
        self.send("start", "TransferStartMessage", error=error, **fields)

    def complete(self, *, error: bool = False) -> None:
        self.send("completion", "TransferCompletionMessage", error=error)

    def suspend(self, *, error: bool = False) -> None:
        self.send("suspension", "TransferSuspensionMessage", error=error, code="1")

    def terminate(self) -> None:
        self.send("termination", "TransferTerminationMessage", code="1")

    def expect(self, kind: str) -> None:
        self.case.expect(f"/transfers/{self.provider_pid}/{kind}", self.process)

    def arrives(self, kind: str, type_: str, state: str) -> None:
        message = self.case.wait(f"/transfers/{self.provider_pid}/{kind}")
        assert message["@type"] == type_
        assert message["providerPid"] == self.provider_pid and message["consumerPid"] == self.consumer_pid
        self.state(state)

    def state(self, expected: str) -> None:
        self.peer.wait_state(TRANSFERS, self.consumer_pid, expected)


def _started(tck: Conformance, agreement: str) -> Provider:
    tp = Provider(tck, agreement)
    tp.initiate()
    tp.start()
    tp.state("STARTED")
    return tp


def test_TP_C_01_01_provider_terminates_started(tck: Conformance) -> None:
    """TP_C:01-01: start → STARTED → the TCK terminates → TERMINATED."""
    tp = _started(tck, "ATPC0101")
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_TP_C_01_02_provider_completes_started(tck: Conformance) -> None:
    """TP_C:01-02: start → STARTED → the TCK completes → COMPLETED."""
    tp = _started(tck, "ATPC0102")
    tp.complete()
    tp.state("COMPLETED")
    tp.case.done()


def test_TP_C_01_03_provider_suspends_then_terminates(tck: Conformance) -> None:
    """TP_C:01-03: start → the TCK suspends → SUSPENDED → it terminates → TERMINATED."""
    tp = _started(tck, "ATPC0103")
    tp.suspend()
    tp.state("SUSPENDED")
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_TP_C_01_04_provider_suspends_restarts_completes(tck: Conformance) -> None:
    """TP_C:01-04: start → suspension → start again (a new data address) → completion."""
    tp = _started(tck, "ATPC0104")
    tp.suspend()
    tp.state("SUSPENDED")
    tp.start()
    tp.state("STARTED")
    tp.complete()
    tp.state("COMPLETED")
    tp.case.done()


def test_TP_C_01_05_provider_terminates_request(tck: Conformance) -> None:
    """TP_C:01-05: the TCK terminates the request → TERMINATED (the sample names ATPC0104 again)."""
    tp = Provider(tck, "ATPC0104")
    tp.initiate()
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_TP_C_02_01_consumer_terminates_started(tck: Conformance) -> None:
    """TP_C:02-01: start → the node terminates → TERMINATED."""
    tp = Provider(tck, "ATPC0201")
    tp.initiate()
    tp.expect("termination")
    tp.start()
    tp.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tp.case.done()


def test_TP_C_02_02_consumer_completes_started(tck: Conformance) -> None:
    """TP_C:02-02: start → the node completes → COMPLETED."""
    tp = Provider(tck, "ATPC0202")
    tp.initiate()
    tp.expect("completion")
    tp.start()
    tp.arrives("completion", "TransferCompletionMessage", "COMPLETED")
    tp.case.done()


def test_TP_C_02_03_consumer_suspends_then_terminates(tck: Conformance) -> None:
    """TP_C:02-03: start → the node suspends → SUSPENDED → it terminates → TERMINATED."""
    tp = Provider(tck, "ATPC0203")
    tp.initiate()
    tp.expect("suspension")
    tp.start()
    tp.arrives("suspension", "TransferSuspensionMessage", "SUSPENDED")
    tp.expect("termination")
    tp.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tp.case.done()


def test_TP_C_02_05_consumer_terminates_request(tck: Conformance) -> None:
    """TP_C:02-05: right after its request was answered, the node terminates → TERMINATED."""
    tp = Provider(tck, "ATPC0205")
    tp.initiate()
    tp.expect("termination")
    tp.arrives("termination", "TransferTerminationMessage", "TERMINATED")
    tp.case.done()


def test_TP_C_03_01_completion_of_requested_refused(tck: Conformance) -> None:
    """TP_C:03-01: a completion in REQUESTED is refused (4xx); still REQUESTED."""
    tp = Provider(tck, "ATPC0301")
    tp.initiate()
    tp.complete(error=True)
    tp.state("REQUESTED")
    tp.case.done()


def test_TP_C_03_02_suspension_of_requested_refused(tck: Conformance) -> None:
    """TP_C:03-02: a suspension in REQUESTED is refused (4xx); still REQUESTED."""
    tp = Provider(tck, "ATPC0302")
    tp.initiate()
    tp.suspend(error=True)
    tp.state("REQUESTED")
    tp.case.done()


def test_TP_C_03_03_completion_of_suspended_refused(tck: Conformance) -> None:
    """TP_C:03-03: start → suspension → a completion is refused (4xx); still SUSPENDED."""
    tp = _started(tck, "ATPC0303")
    tp.suspend()
    tp.state("SUSPENDED")
    tp.complete(error=True)
    tp.state("SUSPENDED")
    tp.case.done()


def _terminated(tck: Conformance, agreement: str) -> Provider:
    tp = _started(tck, agreement)
    tp.terminate()
    tp.state("TERMINATED")
    return tp


def test_TP_C_03_04_start_of_terminated_refused(tck: Conformance) -> None:
    """TP_C:03-04: start → the TCK terminates → TERMINATED → its start is refused (4xx)."""
    tp = _terminated(tck, "ATPC0304")
    tp.start(error=True)
    tp.state("TERMINATED")
    tp.case.done()


def test_TP_C_03_05_suspension_of_terminated_refused(tck: Conformance) -> None:
    """TP_C:03-05: … TERMINATED → a suspension is refused (4xx)."""
    tp = _terminated(tck, "ATPC0305")
    tp.suspend(error=True)
    tp.state("TERMINATED")
    tp.case.done()


def test_TP_C_03_06_completion_of_terminated_refused(tck: Conformance) -> None:
    """TP_C:03-06: … TERMINATED → a completion is refused (4xx)."""
    tp = _terminated(tck, "ATPC0306")
    tp.complete(error=True)
    tp.state("TERMINATED")
    tp.case.done()
