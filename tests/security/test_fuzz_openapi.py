"""Schemathesis over the node's own OpenAPI document, against a real ``agora serve``.

Every operation gets cases that fit its schema and cases that break it (hypothesis draws
them, deterministically), sent with an admin token, so they reach the handlers and the
services behind them; the operations on one offering run again with a real offering's id. At least 5,000 cases in all; none may answer 5xx, and every 4xx
must be ``application/problem+json`` — on the Dataspace Protocol's routes (``/dsp/catalog``,
``/dsp/negotiations``, ``/dsp/transfers``; Agora's own extensions under ``/dsp`` keep problem+json) a DSP
error message instead (``CatalogError``, ``ContractNegotiationError``, ``TransferError`` with
``code`` and ``reason``), as the binding says. Afterwards the same process still serves. The
figures land in ``test-artifacts/fuzz-openapi.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests import services

pytestmark = pytest.mark.slow
EXAMPLES_PER_MODE = 60  # per operation and mode; operations with few inputs run out sooner
MIN_CASES = 5000
ARTIFACTS = services.REPO / "test-artifacts"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.LiveNode]:
    live = services.start_node(tmp_path_factory.mktemp("fuzz") / "node", AGORA_JOBS_WORKERS="0")
    yield live
    live.stop()


DSP_ERRORS = {"CatalogError", "ContractNegotiationError", "TransferError"}
DSP_ROUTES = ("/dsp/catalog/", "/dsp/negotiations/", "/dsp/transfers/")


def well_formed_refusal(path: str, content_type: str, text: str) -> bool:
    """A 4xx as its route's family answers one: a DSP error message on the binding's routes,
    problem+json elsewhere."""
    if not path.startswith(DSP_ROUTES):
        return content_type.startswith("application/problem+json")
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return (
        content_type.startswith("application/json")
        and isinstance(body, dict)
        and body.get("@type") in DSP_ERRORS
        and isinstance(body.get("code"), str)
        and isinstance(body.get("reason"), list)
    )


def register(node: services.LiveNode, token: str) -> str:
    metadata = {"name": "seed", "title": "Seed", "media_type": "text/csv", "access_modes": ["download"]}
    answer = httpx.post(
        f"{node.url}/api/v1/offerings",
        headers={"Authorization": f"Bearer {token}"},
        data={"metadata": json.dumps(metadata)},
        files={"file": ("seed.csv", b"a,b,label\n1,2,0\n", "text/csv")},
        timeout=60,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_generated_requests_never_answer_5xx(node: services.LiveNode) -> None:
    token = node.token("admin")
    schema = schemathesis.openapi.from_url(f"{node.url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    statuses: Counter[int] = Counter()
    failures: list[dict[str, Any]] = []

    def check(case: Any) -> None:
        case.headers = {**(case.headers or {}), **headers}  # a valid token: the cases reach the handlers
        response = case.call(base_url=node.url, session=session, timeout=60)
        statuses[response.status_code] += 1
        kind = (response.headers.get("content-type") or [""])[0]
        if response.status_code >= 500 or (
            response.status_code >= 400 and not well_formed_refusal(case.path, kind, response.text)
        ):
            failures.append(
                {
                    "case": f"{case.method} {case.formatted_path}",
                    "status": response.status_code,
                    "content_type": kind,
                    "answer": response.text[:300],
                    "curl": case.as_curl_command(headers=headers),
                }
            )

    # one real offering: its operations also run with its id, to reach past the lookup
    offering = register(node, token)
    passes = [(operation, None) for operation in operations]
    passes += [(op, {"offering_id": offering}) for op in operations if "{offering_id}" in op.path]
    for operation, path_parameters in passes:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            run = settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=strategy)(check))
            try:
                run()
            except Unsatisfiable:  # nothing to break: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    cases = sum(statuses.values())
    summary = {"operations": len(operations), "cases": cases, "status": dict(sorted(statuses.items()))}
    summary["failures"] = len(failures)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz-openapi.json").write_text(json.dumps({**summary, "examples": failures[:50]}, indent=2))
    print(f"\nschemathesis: {summary}")
    assert failures == [], failures[:5]
    assert cases >= MIN_CASES, summary
    assert node.proc.poll() is None
    assert httpx.get(f"{node.url}/health", timeout=10).status_code == 200
