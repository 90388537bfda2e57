"""Credential schemas: a credential's ``credentialSchema`` checked against the JSON Schema it names.

A credential may name schemas its content must satisfy: ``{"id": <URL>, "type": ...}``.
Two types are read: ``JsonSchemaValidator2018`` (VC 1.1; the schema describes the
``credentialSubject``, as the DCP conformance suite's membership schema does) and
``JsonSchema`` (VC 2.0; the schema describes the whole credential). Any other type is
refused: a constraint this node cannot check is not taken as met.

A schema is fetched through the node's outbound client (its address rules apply), capped at
:data:`MAX_SCHEMA_BYTES`, and kept :data:`SCHEMA_TTL` seconds. It is read only after the
credential's signature and its issuer's trust were checked, so only a trusted issuer's URL
is ever fetched. References inside a schema (``$ref``) resolve within it only: nothing
else is fetched. A schema that is not valid JSON Schema refuses the credential too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from connector.dcp.credentials import Credential, CredentialRefused
from kernel.errors import InvalidInput
from kernel.expiring import Expiring
from kernel.limits import loads
from kernel.outbound import OutboundClient

MAX_SCHEMA_BYTES = 256 * 1024
SCHEMA_TTL = 300.0
MAX_SCHEMAS_KEPT = 256
SUBJECT_SCHEMA = "JsonSchemaValidator2018"
CREDENTIAL_SCHEMA = "JsonSchema"


def schema_fetcher(outbound: OutboundClient) -> Callable[[str], bytes]:
    """Fetch a schema through the node's outbound client (capped, no redirects)."""

    def fetch(url: str) -> bytes:
        response = outbound.request("GET", url, max_bytes=MAX_SCHEMA_BYTES)
        if response.status_code != 200:
            raise CredentialRefused(
                f"the credential schema at {url[:200]} answered HTTP {response.status_code}"
            )
        return response.content

    return fetch


class Schemas:
    """Checks credentials against the schemas they name, keeping fetched schemas a while."""

    def __init__(self, fetch: Callable[[str], bytes], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.clock = clock
        self._kept = Expiring(SCHEMA_TTL, clock, MAX_SCHEMAS_KEPT)

    def check(self, credential: Credential) -> None:
        """Refuse ``credential`` unless it satisfies every schema it names."""
        name = f"{credential.type} {credential.id[:80]}"
        for reference in credential.schemas:
            kind, url = reference.get("type"), reference.get("id")
            if kind not in (SUBJECT_SCHEMA, CREDENTIAL_SCHEMA):
                raise CredentialRefused(
                    f"credential {name} names a credentialSchema of type {str(kind)[:60]}, "
                    f"which this node does not check ({SUBJECT_SCHEMA} and {CREDENTIAL_SCHEMA} are read)"
                )
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise CredentialRefused(f"credential {name}'s credentialSchema names no schema URL")
            document = credential.document
            if kind == SUBJECT_SCHEMA:
                subject = document.get("credentialSubject")
                instance: Any = subject
            else:
                instance = document
            problem = violation(self._schema(url), instance)
            if problem is not None:
                raise CredentialRefused(f"credential {name} violates its schema {url[:200]}: {problem}")

    def _schema(self, url: str) -> dict[str, Any]:
        kept = self._kept.get(url)
        if isinstance(kept, dict):
            return kept
        text = self.fetch(url)
        if len(text) > MAX_SCHEMA_BYTES:
            raise CredentialRefused(
                f"the credential schema at {url[:200]} is larger than {MAX_SCHEMA_BYTES} bytes"
            )
        try:
            schema = loads(text, what=f"the credential schema at {url[:200]}")
        except InvalidInput as exc:
            raise CredentialRefused(exc.detail) from None
        if not isinstance(schema, dict):
            raise CredentialRefused(f"the credential schema at {url[:200]} is not a JSON Schema object")
        self._kept.put(url, schema)
        return schema


def violation(schema: dict[str, Any], instance: Any) -> str | None:
    """Why ``instance`` does not satisfy ``schema`` (its ``$schema`` draft, 2020-12 by
    default), or None when it does. References resolve inside the schema only."""
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError, best_match
    from referencing import Registry
    from referencing.exceptions import Unresolvable

    try:
        cls = validators.validator_for(schema, default=validators.Draft202012Validator)
        cls.check_schema(schema)
        validator = cls(schema, registry=Registry())
        error = best_match(validator.iter_errors(instance))
    except SchemaError as exc:
        return f"the schema is not valid JSON Schema ({exc.message[:200]})"
    except Unresolvable as exc:
        return f"the schema refers to what it does not hold ({str(exc)[:200]})"
    except RecursionError:
        return "the schema nests too deep to check"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "the top level"
    return f"{error.message[:200]} (at {where[:120]})"
