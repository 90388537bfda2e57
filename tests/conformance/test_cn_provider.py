"""DSP TCK cases CN:01-01 … 03-04: the node as provider of a contract negotiation, the TCK as
its consumer (``ContractNegotiationProvider0{1,2,3}Test``). Each case names its dataset
``ACN0xyy`` and offer ``CD123:ACN0xyy:456``; what the node does on its own follows from that
id (connector/dsp/conformance.py). States are read with ``GET /negotiations/{providerPid}``
right after each step the TCK takes (the TCK reads them once, 100 ms later)."""

from __future__ import annotations

from typing import Any

from tests.conformance.conftest import Conformance
from tests.conformance.peer import CONTEXT, PARTICIPANT, Case, TckPeer, new_id

NEGOTIATIONS = "negotiations"


class Consumer:
    """The TCK's consumer side of one negotiation."""

    def __init__(self, peer: TckPeer, case_id: str) -> None:
        self.peer = peer
        self.dataset = "ACN" + case_id.replace("-", "")
        self.offer_id = f"CD123:{self.dataset}:456"
        self.consumer_pid = new_id()
        self.provider_pid = ""
        self.case = Case(peer)

    def ids(self) -> dict[str, Any]:
        return {"providerPid": self.provider_pid, "consumerPid": self.consumer_pid}

    def request(self) -> None:
        offer = {
            "@id": self.offer_id,
            "target": self.dataset,
            "@type": "Offer",
            "permission": [{"action": "use"}],
        }
        reply = self.peer.post(
            "/negotiations/request",
            {
                "@context": CONTEXT,
                "@id": new_id(),
                "@type": "ContractRequestMessage",
                "consumerPid": self.consumer_pid,
                "offer": offer,
                "callbackAddress": self.peer.url,
            },
        ).json()
        assert reply["@type"] == "ContractNegotiation" and reply["consumerPid"] == self.consumer_pid
        self.provider_pid = reply["providerPid"]

    def counter(self, agent: str, *, error: bool = False) -> None:
        offer = {
            "@type": "Offer",
            "@id": self.offer_id,
            "permission": [{"action": "use"}],
            "target": self.dataset,
            "assignee": PARTICIPANT,
            "assigner": agent,
        }
        body = {
            "@context": CONTEXT,
            "@id": new_id(),
            "@type": "ContractRequestMessage",
            **self.ids(),
            "offer": offer,
        }
        self.peer.post(f"/negotiations/{self.provider_pid}/request", body, error=error)

    def accept(self) -> None:
        body = {"@type": "ContractNegotiationEventMessage", **self.ids(), "eventType": "ACCEPTED"}
        self.peer.post(
            f"/negotiations/{self.provider_pid}/events", {"@context": CONTEXT, "@id": new_id(), **body}
        )

    def verify(self, *, error: bool = False) -> None:
        body = {
            "@context": CONTEXT,
            "@id": new_id(),
            "@type": "ContractAgreementVerificationMessage",
            **self.ids(),
        }
        self.peer.post(f"/negotiations/{self.provider_pid}/agreement/verification", body, error=error)

    def terminate(self, *, error: bool = False) -> None:
        body = {
            "@context": CONTEXT,
            "@id": new_id(),
            "@type": "ContractNegotiationTerminationMessage",
            **self.ids(),
            "code": "1",
        }
        self.peer.post(f"/negotiations/{self.provider_pid}/termination", body, error=error)

    def expect(self, suffix: str) -> None:
        self.case.expect(f"/negotiations/{self.consumer_pid}/{suffix}")

    def arrives(self, suffix: str) -> dict[str, Any]:
        message = self.case.wait(f"/negotiations/{self.consumer_pid}/{suffix}")
        assert message["providerPid"] == self.provider_pid and message["consumerPid"] == self.consumer_pid
        return message

    def offered(self) -> None:
        self.expect("offers")
        self.request()
        offer = self.arrives("offers")
        assert offer["@type"] == "ContractOfferMessage" and "callbackAddress" not in offer
        assert offer["offer"]["target"] == self.dataset
        self.state("OFFERED")

    def agreed(self) -> dict[str, Any]:
        message = self.arrives("agreement")
        assert message["@type"] == "ContractAgreementMessage"
        assert message["agreement"]["target"] == self.dataset
        assert message["agreement"]["assignee"] == PARTICIPANT
        self.state("AGREED")
        return message

    def terminated_by_provider(self) -> None:
        message = self.arrives("termination")
        assert message["@type"] == "ContractNegotiationTerminationMessage"
        self.state("TERMINATED")

    def finalized(self) -> None:
        message = self.arrives("events")
        assert message["@type"] == "ContractNegotiationEventMessage" and message["eventType"] == "FINALIZED"
        self.state("FINALIZED")

    def state(self, expected: str) -> None:
        assert self.peer.state(NEGOTIATIONS, self.provider_pid) == expected


def test_CN_01_01_offer_then_consumer_terminates(peer: TckPeer) -> None:
    """CN:01-01: request → the provider offers → OFFERED → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "01-01")
    tck.offered()
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_CN_01_02_counter_request_then_provider_terminates(tck: Conformance) -> None:
    """CN:01-02: request → offer → OFFERED → the TCK's counter-request → the provider terminates."""
    side = Consumer(tck.peer, "01-02")
    side.offered()
    side.expect("termination")
    side.counter(tck.agent_id)
    side.terminated_by_provider()
    side.case.done()


def test_CN_01_03_offer_accepted_agreed_verified_finalized(peer: TckPeer) -> None:
    """CN:01-03: request → offer → ACCEPTED → agreement → verification → FINALIZED."""
    tck = Consumer(peer, "01-03")
    tck.offered()
    tck.expect("agreement")
    tck.accept()
    tck.agreed()
    tck.expect("events")
    tck.verify()
    tck.finalized()
    tck.case.done()


def test_CN_01_04_agreed_verified_finalized(peer: TckPeer) -> None:
    """CN:01-04: request → agreement → AGREED → verification → FINALIZED."""
    tck = Consumer(peer, "01-04")
    tck.expect("agreement")
    tck.request()
    tck.agreed()
    tck.expect("events")
    tck.verify()
    tck.finalized()
    tck.case.done()


def test_CN_02_01_provider_terminates_request(peer: TckPeer) -> None:
    """CN:02-01: request → the provider terminates → TERMINATED."""
    tck = Consumer(peer, "02-01")
    tck.expect("termination")
    tck.request()
    tck.terminated_by_provider()
    tck.case.done()


def test_CN_02_02_consumer_terminates_request(peer: TckPeer) -> None:
    """CN:02-02: request (the provider waits) → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "02-02")
    tck.request()
    tck.state("REQUESTED")
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_CN_02_03_consumer_terminates_agreement(peer: TckPeer) -> None:
    """CN:02-03: request → agreement → AGREED → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "02-03")
    tck.expect("agreement")
    tck.request()
    tck.agreed()
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_CN_02_04_consumer_terminates_offer(peer: TckPeer) -> None:
    """CN:02-04: request → offer → OFFERED → the TCK terminates → TERMINATED."""
    tck = Consumer(peer, "02-04")
    tck.offered()
    tck.terminate()
    tck.state("TERMINATED")
    tck.case.done()


def test_CN_02_05_provider_terminates_offer(peer: TckPeer) -> None:
    """CN:02-05: request → offer → OFFERED → the provider terminates → TERMINATED."""
    tck = Consumer(peer, "02-05")
    tck.offered()
    tck.expect("termination")
    tck.terminated_by_provider()
    tck.case.done()


def test_CN_02_06_provider_terminates_accepted(peer: TckPeer) -> None:
    """CN:02-06: request → offer → ACCEPTED → the provider terminates → TERMINATED."""
    tck = Consumer(peer, "02-06")
    tck.offered()
    tck.expect("termination")
    tck.accept()
    tck.terminated_by_provider()
    tck.case.done()


def test_CN_02_07_provider_terminates_verified(peer: TckPeer) -> None:
    """CN:02-07: request → agreement → verification → the provider terminates → TERMINATED."""
    tck = Consumer(peer, "02-07")
    tck.expect("agreement")
    tck.request()
    tck.agreed()
    tck.expect("termination")
    tck.verify()
    tck.terminated_by_provider()
    tck.case.done()


def test_CN_03_01_termination_of_finalized_refused(peer: TckPeer) -> None:
    """CN:03-01: … FINALIZED → the TCK's termination is refused (4xx); still FINALIZED."""
    tck = Consumer(peer, "03-01")
    tck.expect("agreement")
    tck.request()
    tck.agreed()
    tck.expect("events")
    tck.verify()
    tck.finalized()
    tck.terminate(error=True)
    tck.state("FINALIZED")
    tck.case.done()


def test_CN_03_02_verification_of_offer_refused(peer: TckPeer) -> None:
    """CN:03-02: request → offer → OFFERED → a verification is refused (4xx); still OFFERED."""
    tck = Consumer(peer, "03-02")
    tck.offered()
    tck.verify(error=True)
    tck.state("OFFERED")
    tck.case.done()


def test_CN_03_03_verification_of_accepted_refused(peer: TckPeer) -> None:
    """CN:03-03: request → offer → ACCEPTED (the provider waits) → a verification is refused."""
    tck = Consumer(peer, "03-03")
    tck.offered()
    tck.accept()
    tck.state("ACCEPTED")
    tck.verify(error=True)
    tck.state("ACCEPTED")
    tck.case.done()


def test_CN_03_04_second_counter_request_refused(tck: Conformance) -> None:
    """CN:03-04: request → offer → a counter-request (REQUESTED) → the same again is refused."""
    side = Consumer(tck.peer, "03-04")
    side.offered()
    side.counter(tck.agent_id)
    side.state("REQUESTED")
    side.counter(tck.agent_id, error=True)
    side.state("REQUESTED")
    side.case.done()
