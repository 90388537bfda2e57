"""``agora credentials issue`` signs offline with the home's organisation key."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from connector.dcp.cli import app, parse_claims
from connector.dcp.credentials import parse_credential, verified_credential
from connector.dsp.identity import NodeIdentity, read_did_document
from node.identity import init_home, org_private_key, participant_address
from node.settings import Settings


def test_issue_offline_from_the_home(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path / "home", public_url="http://127.0.0.1:8123")
    init_home(settings, "Issuer Org", "http://127.0.0.1:8123")
    settings = Settings.load(home=tmp_path / "home")
    out = tmp_path / "membership.jwt"
    result = CliRunner().invoke(
        app,
        [
            "issue",
            "--subject",
            "did:web:holder.example",
            "--type",
            "MembershipCredential",
            "--claim",
            "membership=gold",
            "--claim",
            "seats=3",
            "--days",
            "30",
            "-o",
            str(out),
            "--home",
            str(settings.home),
        ],
    )
    assert result.exit_code == 0, result.output
    identity = NodeIdentity(
        did=settings.effective_did,
        address=participant_address(settings),
        private_key=lambda: org_private_key(settings),
        url=settings.public_url,
        name="Issuer Org",
    )
    document = read_did_document(identity.did, identity.document())
    credential = verified_credential(out.read_text(), document)
    assert credential.issuer == "did:web:127.0.0.1%3A8123"
    assert credential.claims == {"membership": "gold", "seats": 3}
    assert parse_credential(out.read_text()).type == "MembershipCredential"


def test_issue_refuses_a_home_without_identity(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["issue", "--subject", "did:web:x", "--type", "T", "--home", str(tmp_path / "none")]
    )
    assert result.exit_code == 1 and "agora init" in result.output


def test_claims_parse_json_values() -> None:
    assert parse_claims(["a=1", "b=gold", "c=[1,2]", "d=true"]) == {
        "a": 1,
        "b": "gold",
        "c": [1, 2],
        "d": True,
    }
