"""The node under test as the holder, for the Credential Service cases: one node per test
module (as the suite runs one class against one system), the suite's parties afresh per case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conformance.dcp.suite import CredentialServiceUnderTest, credential_service


@pytest.fixture(scope="module")
def holder_node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CredentialServiceUnderTest]:
    with credential_service(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])) as node:
        yield node


@pytest.fixture
def cs(holder_node: CredentialServiceUnderTest) -> CredentialServiceUnderTest:
    holder_node.suite.reset()
    return holder_node
