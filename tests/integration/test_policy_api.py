"""Usage policies from the outside: ``POST /api/v1/policies/evaluate`` through the node's
guard and problem handlers, and ``agora policy explain`` through its command line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.testing import TestClient
from typer.testing import CliRunner

import node.app
import node.problems
from marketplace.policy.cli import app as policy_cli
from marketplace.policy.routes import api_handlers, public_handlers

EVALUATE = "/api/v1/policies/evaluate"
PROBLEM_JSON = "application/problem+json"
A = "0x52908400098527886E0F7030069857D2E4169EE7"
B = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

POLICY: dict[str, Any] = {
    "permissions": [
        {
            "action": "use",
            "constraints": [
                {
                    "leftOperand": "purpose",
                    "operator": "isAnyOf",
                    "rightOperand": ["predictive-maintenance", "research"],
                },
                {"leftOperand": "participant", "operator": "eq", "rightOperand": A},
                {"leftOperand": "count", "operator": "lt", "rightOperand": 10},
            ],
            "duties": [{"action": "log"}],
        }
    ],
    "prohibitions": [{"action": "download"}],
}


@pytest.fixture
def api(runtime: Any) -> Iterator[TestClient[Litestar]]:
    app = Litestar(
        route_handlers=[Router(path="/api/v1", route_handlers=api_handlers, guards=[node.app.authenticate])],
        exception_handlers=node.problems.exception_handlers,
        state=State({"runtime": runtime}),
    )
    with TestClient(app=app) as client:
        yield client


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    return body


# HTTP ----------------------------------------------------------------------------------------


def test_an_allowed_request_comes_with_reasons_duties_and_sentences(api: Any, auth: Any) -> None:
    context = {"participant": A.lower(), "purpose": "research", "mode": "compute", "uses": 3}
    r = api.post(EVALUATE, json={"policy": POLICY, "context": context}, headers=auth("catalog:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allowed"] is True
    assert body["summary"] == "allowed: permissions[0] permits compute"
    assert [(x["path"], x["satisfied"]) for x in body["reasons"]] == [
        ("permissions[0].constraints[0]", True),
        ("permissions[0].constraints[1]", True),
        ("permissions[0].constraints[2]", True),
    ]
    assert body["reasons"][2]["explanation"] == "the use count (3) is less than 10"
    assert [d["text"] for d in body["duties"]] == ["Each computation is logged."]
    assert body["sentences"] == [
        f"Only {A} may use it for predictive-maintenance or research.",
        "It may be used at most 10 times.",
        "Each use is logged.",
        "Downloading it is prohibited.",
    ]
    assert body["policy"]["prohibitions"] == [{"action": "download"}]


def test_a_denied_request_says_which_constraint_failed(api: Any, auth: Any) -> None:
    context = {"participant": B, "purpose": "marketing", "mode": "download"}
    r = api.post(EVALUATE, json={"policy": POLICY, "context": context}, headers=auth("catalog:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allowed"] is False
    assert body["summary"] == "denied: prohibitions[0] prohibits download"
    failed = {x["path"]: x["explanation"] for x in body["reasons"] if not x["satisfied"]}
    assert failed == {
        "permissions[0].constraints[0]": "purpose 'marketing' is not one of predictive-maintenance, research",
        "permissions[0].constraints[1]": f"participant {B} is not {A}",
    }
    assert body["duties"] == []


def test_templates_are_evaluated_like_rules(api: Any, auth: Any) -> None:
    policy = {"template": "n-times-usage", "params": {"count": 2}}
    r = api.post(
        EVALUATE,
        json={"policy": policy, "context": {"mode": "download", "uses": 2}},
        headers=auth("catalog:read"),
    )
    body = r.json()
    assert (body["allowed"], body["reasons"][0]["explanation"]) == (
        False,
        "the use count (2) is not less than 2",
    )
    assert body["policy"] == {
        "permissions": [
            {"action": "use", "constraints": [{"leftOperand": "count", "operator": "lt", "rightOperand": 2}]}
        ]
    }


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        (
            {
                "policy": {
                    "permissions": [
                        {
                            "action": "use",
                            "constraints": [
                                {"leftOperand": "purpose", "operator": "lt", "rightOperand": "x"}
                            ],
                        }
                    ]
                },
                "context": {"mode": "compute"},
            },
            "policy.permissions.0.constraints.0.operator",
        ),
        ({"policy": {"template": "n-times-usage"}, "context": {"mode": "compute"}}, "policy.params.count"),
        ({"policy": POLICY, "context": {"mode": "compute", "participant": "0xnope"}}, "context.participant"),
        ({"policy": POLICY, "context": {"mode": "compute", "now": "2027-01-01T00:00:00"}}, "context.now"),
        ({"policy": POLICY}, "context"),
        ({"policy": POLICY, "context": {"mode": "compute"}, "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_a_400_with_field_paths(api: Any, auth: Any, payload: dict[str, Any], path: str) -> None:
    body = problem(api.post(EVALUATE, json=payload, headers=auth("catalog:read")), 400)
    assert body["type"] == "https://agora.dev/problems/invalid-input"
    assert path in [e["path"] for e in body["errors"]], body


DP_CAP: dict[str, Any] = {
    "permissions": [
        {
            "action": "federate",
            "constraints": [{"leftOperand": "dpEpsilon", "operator": "lteq", "rightOperand": 3}],
        }
    ]
}


def test_a_federation_states_its_privacy_budget_against_the_cap(api: Any, auth: Any) -> None:
    within = {"mode": "federate", "dp_epsilon": 2.0, "dp_delta": 1e-6}
    r = api.post(EVALUATE, json={"policy": DP_CAP, "context": within}, headers=auth("catalog:read"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allowed"] is True
    assert (
        "It may be used in federated learning only with differential privacy, ε ≤ 3 at δ ≤ 1e-5."
        in body["sentences"]
    )
    assert body["policy"]["permissions"][0]["constraints"][1] == {
        "leftOperand": "dpDelta",
        "operator": "lteq",
        "rightOperand": 1e-5,
    }
    over = api.post(
        EVALUATE,
        json={"policy": DP_CAP, "context": {**within, "dp_epsilon": 4}},
        headers=auth("catalog:read"),
    ).json()
    assert over["allowed"] is False
    assert [x["explanation"] for x in over["reasons"] if not x["satisfied"]] == [
        "the privacy budget ε (4) is more than 3"
    ]


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"policy": DP_CAP, "context": {"mode": "federate", "dp_epsilon": -1}}, "context.dp_epsilon"),
        ({"policy": DP_CAP, "context": {"mode": "federate", "dp_delta": 2}}, "context.dp_delta"),
        (
            {
                "policy": {"permissions": [{**DP_CAP["permissions"][0], "action": "use"}]},
                "context": {"mode": "federate"},
            },
            "policy.permissions.0.constraints.0.leftOperand",
        ),
    ],
)
def test_a_bad_privacy_budget_is_a_400_with_the_path(
    api: Any, auth: Any, payload: dict[str, Any], path: str
) -> None:
    body = problem(api.post(EVALUATE, json=payload, headers=auth("catalog:read")), 400)
    assert [e["path"] for e in body["errors"]] == [path]


def test_a_body_that_is_not_an_object_is_a_400(api: Any, auth: Any) -> None:
    problem(api.post(EVALUATE, json=[POLICY], headers=auth("catalog:read")), 400)
    problem(api.post(EVALUATE, content=b"{not json", headers=auth("catalog:read")), 400)


def test_the_route_needs_a_token_with_catalog_read(api: Any, auth: Any) -> None:
    payload = {"policy": POLICY, "context": {"mode": "compute"}}
    problem(api.post(EVALUATE, json=payload), 401)
    problem(api.post(EVALUATE, json=payload, headers=auth("offerings:write")), 403)
    assert api.post(EVALUATE, json=payload, headers=auth("admin")).status_code == 200


def test_the_openapi_document_describes_the_body_and_the_answer(api: Any) -> None:
    schema = api.app.openapi_schema.to_schema()
    operation = schema["paths"][EVALUATE]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EvaluateRequest"
    }
    assert {"EvaluateRequest", "Evaluation", "Reason", "DutyNote"} <= set(schema["components"]["schemas"])


def test_the_module_exports_its_handlers_for_the_node() -> None:
    assert public_handlers == []
    assert [h.path for h in api_handlers] == ["/policies"]


# the command line ----------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        """
permissions:
  - action: use
    constraints:
      - {leftOperand: purpose, operator: isAnyOf, rightOperand: [predictive-maintenance, research]}
      - {leftOperand: participant, operator: eq, rightOperand: "ADDRESS"}
      - or:
          - {leftOperand: region, operator: eq, rightOperand: EU}
          - {leftOperand: participantGroup, operator: isAnyOf, rightOperand: [partners]}
    duties:
      - {action: log}
prohibitions:
  - action: download
""".replace("ADDRESS", A)
    )
    return path


def explain(*args: str) -> Any:
    return runner.invoke(policy_cli, ["explain", *args])


def test_explain_allows_with_reasons_duties_and_sentences(policy_file: Path) -> None:
    result = explain(
        "-f",
        str(policy_file),
        "--participant",
        A.lower(),
        "--purpose",
        "research",
        "--mode",
        "compute",
        "--group",
        "partners",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("ALLOW  allowed: permissions[0] permits compute")
    assert (
        "✓ permissions[0].constraints[0]: purpose 'research' is one of predictive-maintenance, research"
        in out
    )
    assert "✗ permissions[0].constraints[2].or[0]: no region was given" in out
    assert "    ✓ permissions[0].constraints[2].or[1]: groups (partners) include one of partners" in out
    assert "• Each computation is logged." in out
    assert f"Only {A} may use it for predictive-maintenance or research." in out
    assert "Downloading it is prohibited." in out


def test_explain_takes_the_stated_privacy_budget(tmp_path: Path) -> None:
    path = tmp_path / "dp.yaml"
    path.write_text(
        "permissions:\n  - action: federate\n    constraints:\n"
        "      - {leftOperand: dpEpsilon, operator: lteq, rightOperand: 3}\n"
    )
    args = ["-f", str(path), "--participant", A, "--purpose", "research", "--mode", "federate"]
    granted = explain(*args, "--dp-epsilon", "2.5", "--dp-delta", "1e-6")
    assert granted.exit_code == 0, granted.output
    assert "✓ permissions[0].constraints[0]: the privacy budget ε (2.5) is at most 3" in granted.stdout
    assert "✓ permissions[0].constraints[1]: the privacy budget δ (1e-6) is at most 1e-5" in granted.stdout
    assert "only with differential privacy, ε ≤ 3 at δ ≤ 1e-5." in granted.stdout
    unstated = explain(*args)
    assert unstated.exit_code == 1
    assert "no privacy budget ε was stated" in unstated.stdout
    assert explain(*args, "--dp-epsilon", "-2").exit_code == 2


def test_explain_denies_with_exit_code_1(policy_file: Path) -> None:
    result = explain("-f", str(policy_file), "--participant", B, "--purpose", "marketing", "--region", "EU")
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("DENY  denied: prohibitions[0] prohibits download")
    assert "✗ permissions[0].constraints[0]: purpose 'marketing' is not one of" in result.stdout


def test_explain_takes_uses_agreement_and_time(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"template": "duration-usage", "params": {"duration": "P30D"}}))
    base = ["-f", str(path), "--participant", A, "--purpose", "x", "--agreed-at", "2026-01-01T00:00:00Z"]
    assert explain(*base, "--now", "2026-01-20T00:00:00Z").exit_code == 0
    late = explain(*base, "--now", "2026-03-01T00:00:00Z")
    assert late.exit_code == 1
    assert "the time since the agreement (59 days) is more than 30 days" in late.stdout


def test_explain_json(policy_file: Path) -> None:
    result = explain(
        "-f",
        str(policy_file),
        "--participant",
        A,
        "--purpose",
        "research",
        "--region",
        "EU",
        "--mode",
        "federate",
        "--uses",
        "4",
        "--json",
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["allowed"] is True
    assert len(body["reasons"]) == 5
    assert body["duties"][0]["text"] == "Each federated-learning use is logged."
    assert body["sentences"][0] == f"Only {A} may use it for predictive-maintenance or research."


def test_explain_refuses_an_invalid_policy_with_exit_code_2_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "permissions:\n  - action: use\n    constraints:\n"
        "      - {leftOperand: purpose, operator: lt, rightOperand: x}\n"
    )
    result = explain("-f", str(path), "--participant", A, "--purpose", "research")
    assert result.exit_code == 2
    assert "permissions.0.constraints.0.operator" in result.stderr
    assert "lt does not fit purpose" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["--participant", "0x12", "--purpose", "r"], "participant"),
        (["--participant", A, "--purpose", "r", "--now", "tomorrow"], "now"),
        (["--participant", A, "--purpose", "r", "--mode", "stream"], "mode"),
    ],
)
def test_explain_refuses_a_bad_request_with_exit_code_2(
    policy_file: Path, args: list[str], path: str
) -> None:
    result = explain("-f", str(policy_file), *args)
    assert result.exit_code == 2
    assert f"{path}:" in result.stderr


def test_explain_refuses_unreadable_yaml_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("permissions: [\n")
    result = explain("-f", str(path), "--participant", A, "--purpose", "r")
    assert result.exit_code == 2
    assert "not valid YAML" in result.stderr


def test_explain_works_as_a_subcommand_of_agora(policy_file: Path) -> None:
    import typer

    agora = typer.Typer()
    agora.add_typer(policy_cli, name="policy")
    args = ["policy", "explain", "-f", str(policy_file), "--participant", A, "--purpose", "research"]
    result = runner.invoke(agora, [*args, "--region", "EU", "--mode", "compute"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ALLOW")


def test_the_command_group_imports_no_heavy_library() -> None:
    code = (
        "import sys, marketplace.policy.cli; "
        "print(sorted(m for m in ('pydantic', 'yaml', 'litestar') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
