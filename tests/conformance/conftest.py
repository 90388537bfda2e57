"""One node with the conformance profile for every case, and the TCK's peer it talks to.

The node runs as a real process on loopback with the settings a TCK run uses
(``AGORA_DSP_TEST_*`` naming the peer, ``AGORA_DSP_CONFORMANCE=true``, messages held
``AGORA_DSP_SEND_DELAY=0.5`` s); every case uses its own ids, as the TCK does, so the
cases share the node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import services
from tests.conformance.peer import PARTICIPANT, TOKEN, TckPeer


@dataclass
class Conformance:
    node: services.LiveNode
    peer: TckPeer

    @property
    def negotiation_initiation(self) -> str:
        return f"{self.node.url}/dsp/tck/negotiations"

    @property
    def transfer_initiation(self) -> str:
        return f"{self.node.url}/dsp/tck/transfers"

    @property
    def agent_id(self) -> str:
        """The node's participant id as the TCK names it (dataspacetck.dsp.connector.agent.id)."""
        return f"did:web:127.0.0.1%3A{self.node.port}"


@pytest.fixture(scope="session")
def tck(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Conformance]:
    peer = TckPeer()
    node = services.start_node(
        tmp_path_factory.mktemp("conformance"),
        "Conformance Org",
        AGORA_DSP_TEST_PARTICIPANT=PARTICIPANT,
        AGORA_DSP_TEST_TOKEN=TOKEN,
        AGORA_DSP_TEST_CALLBACK=peer.url,
        AGORA_DSP_CONFORMANCE="true",
        AGORA_DSP_SEND_DELAY="0.5",
    )
    peer.node_dsp = f"{node.url}/dsp"
    try:
        yield Conformance(node, peer)
    finally:
        node.stop()
        peer.stop()


@pytest.fixture
def peer(tck: Conformance) -> TckPeer:
    return tck.peer
