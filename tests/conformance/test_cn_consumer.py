"""DSP TCK cases CN_C:01-01 … 03-06: the node as consumer of a contract negotiation, the TCK
as provider (``ContractNegotiationConsumer0{1,2,3}Test``). Each case starts by the TCK's
initiation call naming its dataset ``ACNC0xyy`` and offer ``offerACNC0xyy``; the node then
sends its request to the TCK, and what it does next follows from the dataset
(connector/dsp/conformance.py). States are read at ``GET {callbackAddress}/negotiations/{consumerPid}``."""

from __future__ import annotations

from typing import Any

from tests.conformance.conftest import Conformance
from tests.conformance.peer import CONTEXT, PARTICIPANT, Case, new_id

NEGOTIATIONS = "negotiations"


class Provider:
    """The TCK's provider side of one negotiation the node starts."""

    def __init__(self, tck: Conformance, case_id: str) -> None:
        self.tck = tck
        self.peer = tck.peer
        self.dataset = "ACNC" + case_id.replace("-", "")
        self.offer_id = "offer" + self.dataset
        self.provider_pid = new_id()
        self.consumer_pid = ""
        self.case = Case(self.peer)

    def ids(self) -> dict[str, Any]:
        return {"providerPid": self.provider_pid, "consumerPid": self.consumer_pid}

    def negotiation(self, body: dict[str, Any]) -> dict[str, Any]:
        """The TCK's answer to the node's requests: its ContractNegotiation in REQUESTED."""
        return {
            "@context": CONTEXT,
            "@type": "ContractNegotiation",
            "providerPid": self.provider_pid,
            "consumerPid": body.get("consumerPid"),
            "state": "REQUESTED",
        }

    def initiate(self) -> None:
        self.case.expect("/negotiations/request", self.negotiation)
        self.peer.initiate(
            self.tck.negotiation_initiation,
            {
                "providerId": PARTICIPANT,
                "offerId": self.offer_id,
                "datasetId": self.dataset,
                "connectorAddress": self.peer.url,
            },
        )
        request = self.case.wait("/negotiations/request")
        assert request["@type"] == "ContractRequestMessage" and "providerPid" not in request
        assert request["offer"]["@id"] == self.offer_id and request["offer"]["target"] == self.dataset
        assert request["callbackAddress"] == self.peer.node_dsp
        self.consumer_pid = request["consumerPid"]
        self.state("REQUESTED")

    def send(self, suffix: str, type_: str, *, error: bool = False, **fields: Any) -> None:
        body = {"@context": CONTEXT, "@id": new_id(), "@type": type_, **self.ids(), **fields}
        self.peer.post(f"/negotiations/{self.consumer_pid}/{suffix}", body, error=error)

    def offer(self, *, error: bool = False) -> None:
        offer = {
            "@type": "Offer",
            "@id": self.offer_id,
            "permission": [{"action": "use"}],
            "target": self.dataset,
            "assignee": self.tck.agent_id,
            "assigner": PARTICIPANT,
        }
        self.send("offers", "ContractOfferMessage", error=error, offer=offer)

    def agree(self, *, error: bool = False, agreement_id: str | None = None) -> None:
        agreement = {
            "@type": "Agreement",
            "@id": agreement_id or new_id(),
            "target": self.dataset,
            "permission": [{"action": "use"}],
            "timestamp": "2025-01-01T00:00:00Z",
            "assignee": self.tck.agent_id,
            "assigner": PARTICIPANT,
        }
        self.send("agreement", "ContractAgreementMessage", error=error, agreement=agreement)

    def finalize(self, *, error: bool = False) -> None:
        self.send("events", "ContractNegotiationEventMessage", error=error, eventType="FINALIZED")

    def terminate(self) -> None:
        self.send("termination", "ContractNegotiationTerminationMessage", code="1")

    def expect(self, suffix: str) -> None:
        reply = self.negotiation if suffix == "request" else None
        self.case.expect(f"/negotiations/{self.provider_pid}/{suffix}", reply)

    def arrives(self, suffix: str, type_: str) -> dict[str, Any]:
        message = self.case.wait(f"/negotiations/{self.provider_pid}/{suffix}")
        assert message["@type"] == type_
        assert message["providerPid"] == self.provider_pid and message["consumerPid"] == self.consumer_pid
        return message

    def accepted(self) -> None:
        self.expect("events")
        self.offer()
        event = self.arrives("events", "ContractNegotiationEventMessage")
        assert event["eventType"] == "ACCEPTED"
        self.state("ACCEPTED")

    def verified(self) -> None:
        self.expect("agreement/verification")
        self.agree()
        self.arrives("agreement/verification", "ContractAgreementVerificationMessage")
        self.state("VERIFIED")

    def terminated_by_consumer(self) -> None:
        self.arrives("termination", "ContractNegotiationTerminationMessage")
        self.state("TERMINATED")

    def state(self, expected: str) -> None:
        assert self.peer.state(NEGOTIATIONS, self.consumer_pid) == expected


def test_CN_C_01_01_accept_verify_finalized(tck: Conformance) -> None:
    """CN_C:01-01: offer → the node accepts → agreement → it verifies → FINALIZED."""
    tp = Provider(tck, "01-01")
    tp.initiate()
    tp.accepted()
    tp.verified()
    tp.finalize()
    tp.state("FINALIZED")
    tp.case.done()


def test_CN_C_01_02_counter_request_then_provider_terminates(tck: Conformance) -> None:
    """CN_C:01-02: offer → the node asks again (a counter-request) → the TCK terminates."""
    tp = Provider(tck, "01-02")
    tp.initiate()
    tp.expect("request")
    tp.offer()
    counter = tp.arrives("request", "ContractRequestMessage")
    assert "callbackAddress" not in counter and counter["offer"]["@id"] == tp.offer_id
    tp.state("REQUESTED")
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_CN_C_01_03_consumer_terminates_offer(tck: Conformance) -> None:
    """CN_C:01-03: offer → the node terminates → TERMINATED."""
    tp = Provider(tck, "01-03")
    tp.initiate()
    tp.expect("termination")
    tp.offer()
    tp.terminated_by_consumer()
    tp.case.done()


def test_CN_C_01_04_agreement_verified_finalized(tck: Conformance) -> None:
    """CN_C:01-04: agreement → the node verifies → FINALIZED."""
    tp = Provider(tck, "01-04")
    tp.initiate()
    tp.verified()
    tp.finalize()
    tp.state("FINALIZED")
    tp.case.done()


def test_CN_C_02_01_provider_terminates_request(tck: Conformance) -> None:
    """CN_C:02-01: the TCK terminates the request → TERMINATED."""
    tp = Provider(tck, "02-01")
    tp.initiate()
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_CN_C_02_02_consumer_terminates_request(tck: Conformance) -> None:
    """CN_C:02-02: right after its request was answered, the node terminates → TERMINATED."""
    tp = Provider(tck, "02-02")
    tp.initiate()
    tp.expect("termination")
    tp.terminated_by_consumer()
    tp.case.done()


def test_CN_C_02_03_consumer_terminates_agreement(tck: Conformance) -> None:
    """CN_C:02-03: agreement → the node terminates → TERMINATED."""
    tp = Provider(tck, "02-03")
    tp.initiate()
    tp.expect("termination")
    tp.agree()
    tp.terminated_by_consumer()
    tp.case.done()


def test_CN_C_02_04_provider_terminates_offer(tck: Conformance) -> None:
    """CN_C:02-04: offer (the node waits) → OFFERED → the TCK terminates → TERMINATED."""
    tp = Provider(tck, "02-04")
    tp.initiate()
    tp.offer()
    tp.state("OFFERED")
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_CN_C_02_05_provider_terminates_accepted(tck: Conformance) -> None:
    """CN_C:02-05: offer → the node accepts → the TCK terminates → TERMINATED."""
    tp = Provider(tck, "02-05")
    tp.initiate()
    tp.accepted()
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_CN_C_02_06_provider_terminates_verified(tck: Conformance) -> None:
    """CN_C:02-06: agreement → the node verifies → the TCK terminates → TERMINATED."""
    tp = Provider(tck, "02-06")
    tp.initiate()
    tp.verified()
    tp.terminate()
    tp.state("TERMINATED")
    tp.case.done()


def test_CN_C_03_01_finalized_while_requested_refused(tck: Conformance) -> None:
    """CN_C:03-01: a FINALIZED event in REQUESTED is refused (4xx); still REQUESTED."""
    tp = Provider(tck, "03-01")
    tp.initiate()
    tp.finalize(error=True)
    tp.state("REQUESTED")
    tp.case.done()


def test_CN_C_03_02_agreement_while_offered_refused(tck: Conformance) -> None:
    """CN_C:03-02: offer → OFFERED → an agreement is refused (4xx); still OFFERED."""
    tp = Provider(tck, "03-02")
    tp.initiate()
    tp.offer()
    tp.state("OFFERED")
    tp.agree(error=True)
    tp.state("OFFERED")
    tp.case.done()


def test_CN_C_03_03_finalized_while_offered_refused(tck: Conformance) -> None:
    """CN_C:03-03: offer → OFFERED → a FINALIZED event is refused (4xx); still OFFERED."""
    tp = Provider(tck, "03-03")
    tp.initiate()
    tp.offer()
    tp.state("OFFERED")
    tp.finalize(error=True)
    tp.state("OFFERED")
    tp.case.done()


def test_CN_C_03_04_finalized_while_accepted_refused(tck: Conformance) -> None:
    """CN_C:03-04: offer → the node accepts → a FINALIZED event is refused; still ACCEPTED."""
    tp = Provider(tck, "03-04")
    tp.initiate()
    tp.accepted()
    tp.finalize(error=True)
    tp.state("ACCEPTED")
    tp.case.done()


def test_CN_C_03_05_offer_while_accepted_refused(tck: Conformance) -> None:
    """CN_C:03-05: offer → the node accepts → a second offer is refused; still ACCEPTED."""
    tp = Provider(tck, "03-05")
    tp.initiate()
    tp.accepted()
    tp.offer(error=True)
    tp.state("ACCEPTED")
    tp.case.done()


def test_CN_C_03_06_finalized_while_agreed_refused(tck: Conformance) -> None:
    """CN_C:03-06: offer → accepted → agreement (the node holds it) → FINALIZED refused; AGREED."""
    tp = Provider(tck, "03-06")
    tp.initiate()
    tp.accepted()
    tp.agree()
    tp.state("AGREED")
    tp.finalize(error=True)
    tp.state("AGREED")
    tp.case.done()
