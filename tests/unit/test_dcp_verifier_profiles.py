"""What the verifier reads beyond VC 1.1 basics: ``credentialSchema`` (fetched only for a
trusted issuer, kept, never following a reference out of the schema), VC 2.0 credentials
(``validFrom``/``validUntil``, the JWT's claims as the credential, enveloped in a
presentation), the expanded CatalogRequestMessage the DCP suite triggers with, and the
``AGORA_DCP_SCOPES`` setting."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from connector.dcp.credential_schema import MAX_SCHEMA_BYTES, Schemas
from connector.dcp.credentials import CredentialRefused, iso
from connector.dcp.tokens import type_scope
from connector.dsp.binding import catalog_request_since
from kernel.errors import InvalidInput
from node.settings import Settings
from tests.unit.test_dcp_flow import MEMBERSHIP, World, build_world, party

SCHEMA_URL = "https://issuer.example/schemas/membership.json"
SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {"id": {"type": "string"}, "foo": {"type": "string"}},
    "required": ["id", "foo"],
}
SCOPES = [type_scope(MEMBERSHIP)]


class Fetches:
    def __init__(self, served: dict[str, bytes]) -> None:
        self.served, self.calls = served, []  # type: ignore[var-annotated]

    def __call__(self, url: str) -> bytes:
        self.calls.append(url)
        if url not in self.served:
            raise CredentialRefused(f"nothing at {url}")
        return self.served[url]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


def with_schemas(world: World, served: dict[str, Any]) -> Fetches:
    fetches = Fetches({u: v if isinstance(v, bytes) else json.dumps(v).encode() for u, v in served.items()})
    world.checker.schemas = Schemas(fetches)
    return fetches


def credential(world: World, *, v2: bool = False, by: Any = None, **over: Any) -> str:
    """A MembershipCredential about the holder, VC 1.1 (``vc`` claim) or VC 2.0 (the claims)."""
    signer = (by or world.issuer).signer
    now = int(time.time())
    vc: dict[str, Any] = {
        "@context": [
            "https://www.w3.org/ns/credentials/v2" if v2 else "https://www.w3.org/2018/credentials/v1"
        ],
        "id": f"urn:uuid:{uuid.uuid4()}",
        "type": ["VerifiableCredential", MEMBERSHIP],
        "issuer": signer.did,
        ("validFrom" if v2 else "issuanceDate"): iso(now),
        "credentialSubject": {"id": world.holder.did, "foo": "bar"},
    }
    vc.update(over)
    if v2:
        return signer.sign({**vc, "iss": signer.did, "sub": world.holder.did})
    return signer.sign({"iss": signer.did, "sub": world.holder.did, "iat": now, "vc": vc})


def enveloped(world: World, *jwts: str) -> dict[str, Any]:
    """A VC 2.0 presentation: the claims are the presentation, credentials enveloped."""
    now = int(time.time())
    vp = world.holder.signer.sign(
        {
            "@context": ["https://www.w3.org/ns/credentials/v2"],
            "type": ["VerifiablePresentation"],
            "iss": world.holder.did,
            "aud": world.verifier.did,
            "iat": now,
            "exp": now + 300,
            "verifiableCredential": [
                {"type": "EnvelopedVerifiableCredential", "id": f"data:application/vc+jwt,{jwt}"}
                for jwt in jwts
            ],
        }
    )
    return {"type": "PresentationResponseMessage", "presentation": [vp]}


def check(world: World, answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return world.checker.check(answer, world.holder_document(), SCOPES)


def test_a_credential_satisfying_its_schema_is_verified_and_the_schema_kept(world: World) -> None:
    fetches = with_schemas(world, {SCHEMA_URL: SCHEMA})
    schema = {"id": SCHEMA_URL, "type": "JsonSchemaValidator2018"}
    for _ in range(2):
        answer = world.answer_with(credential(world, credentialSchema=schema))
        assert check(world, answer) == {MEMBERSHIP: {"foo": "bar"}}
    assert fetches.calls == [SCHEMA_URL]


def test_a_credential_violating_its_schema_is_refused(world: World) -> None:
    with_schemas(world, {SCHEMA_URL: SCHEMA})
    schema = {"id": SCHEMA_URL, "type": "JsonSchemaValidator2018"}
    subject = {"id": world.holder.did, "baz": "quazz"}
    answer = world.answer_with(credential(world, credentialSchema=schema, credentialSubject=subject))
    with pytest.raises(CredentialRefused, match=r"violates its schema .*'foo' is a required property"):
        check(world, answer)


def test_a_vc2_json_schema_describes_the_whole_credential(world: World) -> None:
    whole = {"type": "object", "required": ["validUntil"]}
    with_schemas(world, {SCHEMA_URL: whole})
    schema = {"id": SCHEMA_URL, "type": "JsonSchema"}
    with pytest.raises(CredentialRefused, match="'validUntil' is a required property"):
        check(world, world.answer_with(credential(world, v2=True, credentialSchema=schema)))
    later = iso(time.time() + 3600)
    assert check(
        world, world.answer_with(credential(world, v2=True, credentialSchema=schema, validUntil=later))
    )


def test_an_untrusted_issuers_schema_is_never_fetched(world: World) -> None:
    fetches = with_schemas(world, {SCHEMA_URL: SCHEMA})
    stranger = party("https://stranger.example", "stranger")
    world.documents[stranger.did] = stranger.identity.document()
    schema = {"id": SCHEMA_URL, "type": "JsonSchemaValidator2018"}
    answer = world.answer_with(credential(world, by=stranger, credentialSchema=schema))
    with pytest.raises(CredentialRefused, match="not an issuer this node trusts"):
        check(world, answer)
    assert fetches.calls == []


@pytest.mark.parametrize(
    ("schema", "served", "reason"),
    [
        ({"id": SCHEMA_URL, "type": "ShaclValidator2017"}, SCHEMA, "does not check"),
        ({"id": "ftp://issuer.example/s.json", "type": "JsonSchema"}, SCHEMA, "names no schema URL"),
        ({"id": SCHEMA_URL, "type": "JsonSchema"}, {"$ref": "http://127.0.0.1:9/evil.json"}, "refers to"),
        ({"id": SCHEMA_URL, "type": "JsonSchema"}, {"type": 12}, "not valid JSON Schema"),
        ({"id": SCHEMA_URL, "type": "JsonSchema"}, [1, 2], "not a JSON Schema object"),
        ({"id": SCHEMA_URL, "type": "JsonSchema"}, b"{" + b" " * MAX_SCHEMA_BYTES + b"}", "larger than"),
    ],
)
def test_schemas_that_cannot_be_checked_refuse(world: World, schema: Any, served: Any, reason: str) -> None:
    fetches = with_schemas(world, {SCHEMA_URL: served})
    with pytest.raises(CredentialRefused, match=reason):
        check(world, world.answer_with(credential(world, credentialSchema=schema)))
    assert all(url == SCHEMA_URL for url in fetches.calls)  # a $ref is never followed out


def test_vc2_dates_are_checked(world: World) -> None:
    with pytest.raises(CredentialRefused, match="expired"):
        check(world, world.answer_with(credential(world, v2=True, validUntil=iso(time.time() - 60))))
    with pytest.raises(CredentialRefused, match="not valid yet"):
        check(world, world.answer_with(credential(world, v2=True, validFrom=iso(time.time() + 3600))))
    with pytest.raises(CredentialRefused, match="expired"):  # a VC 1.1 credential with a VC 2.0 date
        check(world, world.answer_with(credential(world, validUntil=iso(time.time() - 60))))


def test_an_enveloped_vc2_credential_is_verified(world: World) -> None:
    assert check(world, enveloped(world, credential(world, v2=True))) == {MEMBERSHIP: {"foo": "bar"}}
    forged = credential(world, v2=True, by=party("https://forger.example", "forger"))
    with pytest.raises(CredentialRefused):
        check(world, enveloped(world, forged))


def test_the_expanded_catalog_request_is_read() -> None:
    dspace = "https://w3id.org/dspace/2025/1/"
    assert catalog_request_since({"@type": dspace + "CatalogRequestMessage", dspace + "filter": {}}) is None
    since = {"@type": "CatalogRequestMessage", "filter": {"agora:modifiedSince": "2026-01-01T00:00:00+00:00"}}
    assert catalog_request_since(since) is not None
    with pytest.raises(InvalidInput, match="expected a CatalogRequestMessage"):
        catalog_request_since({"@type": dspace + "ContractRequestMessage"})
    with pytest.raises(InvalidInput, match="filter must be an array"):
        catalog_request_since({"@type": "CatalogRequestMessage", "filter": "x"})


def test_membership_scopes_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scope = type_scope(MEMBERSHIP)
    monkeypatch.setenv("AGORA_DCP_SCOPES", f" {scope} , {type_scope('DataExchangeGovernanceCredential')}")
    assert Settings(home=tmp_path).dcp_scopes == [scope, type_scope("DataExchangeGovernanceCredential")]
    monkeypatch.setenv("AGORA_DCP_SCOPES", "")
    assert Settings(home=tmp_path).dcp_scopes == []
    for bad in ("MembershipCredential", "org.eclipse.dspace.dcp.vc.type:X:write", "a b:c"):
        monkeypatch.setenv("AGORA_DCP_SCOPES", bad)
        with pytest.raises(ValueError, match="not a DCP read scope"):
            Settings(home=tmp_path)
