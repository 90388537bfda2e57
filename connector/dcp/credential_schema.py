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

The schema's regular expressions (``pattern``, ``patternProperties`` and what
``additionalProperties`` leaves to them) are matched with a time limit: each match at most
:data:`PATTERN_SECONDS`, all of one check at most :data:`CHECK_SECONDS`; a schema whose
patterns take longer refuses the credential, so a hostile pattern cannot hold the verifier.
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

PATTERN_SECONDS = 0.1  # one regular expression match
CHECK_SECONDS = 1.0  # every match of one credential's check
SLOW = f"takes too long to match (over {PATTERN_SECONDS} s once or {CHECK_SECONDS} s in all): not checked"
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
        validator = _timed(cls, _Clock(time.monotonic() + CHECK_SECONDS))(schema, registry=Registry())
        error = best_match(validator.iter_errors(instance))
    except _PatternRefused as exc:
        return f"the schema's pattern {exc.pattern[:80]!r} {exc.why}"
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


class _PatternRefused(Exception):
    def __init__(self, pattern: str, why: str) -> None:
        self.pattern, self.why = pattern, why


class _Clock:
    """The deadline of one check: every match gets what is left, at most PATTERN_SECONDS."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def search(self, pattern: str, text: str) -> bool:
        import regex

        left = min(PATTERN_SECONDS, self.deadline - time.monotonic())
        if left <= 0:
            raise _PatternRefused(pattern, SLOW)
        try:
            return regex.search(pattern, text, timeout=left) is not None
        except TimeoutError:
            raise _PatternRefused(pattern, SLOW) from None
        except regex.error:
            raise _PatternRefused(pattern, "is not a regular expression") from None


def _timed(cls: Any, clock: _Clock) -> Any:
    """``cls`` with its regular-expression keywords matched by ``clock``."""
    from jsonschema import validators
    from jsonschema.exceptions import ValidationError

    def pattern(validator: Any, value: str, instance: Any, schema: Any) -> Any:
        if validator.is_type(instance, "string") and not clock.search(value, instance):
            yield ValidationError(f"{instance[:80]!r} does not match {value[:80]!r}")

    def pattern_properties(validator: Any, value: dict[str, Any], instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        for expression, subschema in value.items():
            for key, item in instance.items():
                if clock.search(expression, key):
                    yield from validator.descend(item, subschema, path=key, schema_path=expression)

    def additional_properties(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        if not validator.is_type(instance, "object"):
            return
        named, expressions = schema.get("properties", {}), list(schema.get("patternProperties", {}))
        extras = [
            key for key in instance if key not in named and not any(clock.search(e, key) for e in expressions)
        ]
        if validator.is_type(value, "object"):
            for key in extras:
                yield from validator.descend(instance[key], value, path=key)
        elif value is False and extras:
            listed = ", ".join(repr(k)[:80] for k in sorted(extras)[:10])
            yield ValidationError(f"additional properties are not allowed ({listed})")

    return validators.extend(
        cls,
        {
            "pattern": pattern,
            "patternProperties": pattern_properties,
            "additionalProperties": additional_properties,
        },
    )
