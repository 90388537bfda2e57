"""A provider that breaks the rules the TCK does not test: the node, as consumer, refuses
with a DSP error (4xx) and keeps its records as they were."""

from __future__ import annotations

from tests.conformance.conftest import Conformance
from tests.conformance.test_cn_consumer import Provider


def test_an_agreement_reusing_another_agreements_id_is_refused(tck: Conformance) -> None:
    """A second negotiation's agreement under the first one's @id is a 4xx, not a server
    error, and the second negotiation stays where it was."""
    first = Provider(tck, "01-04")
    first.initiate()
    first.expect("agreement/verification")
    first.agree(agreement_id="urn:uuid:agreement-used-once")
    first.arrives("agreement/verification", "ContractAgreementVerificationMessage")
    first.state("VERIFIED")

    second = Provider(tck, "01-04")
    second.initiate()
    second.agree(error=True, agreement_id="urn:uuid:agreement-used-once")
    second.state("REQUESTED")
    first.state("VERIFIED")
