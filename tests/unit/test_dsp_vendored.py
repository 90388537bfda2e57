"""The vendored Dataspace Protocol 2025-1 schemas resolve on their own, with nothing fetched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.dsp import DSP, registry, validator


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


SCHEMAS = sorted(p.relative_to(DSP).as_posix() for p in DSP.glob("*/*-schema.json"))


def test_the_schemas_and_their_licence_are_in_the_repository() -> None:
    assert (DSP / "LICENSE").read_text().startswith(" " * 33 + "Apache License")
    assert len(SCHEMAS) >= 20
    assert (DSP / "context" / "dspace.jsonld").is_file()


@pytest.mark.parametrize("path", SCHEMAS)
def test_every_local_ref_is_a_json_pointer(path: str) -> None:
    """The upstream transfer schemas wrote ``#definitions/…``; the vendored copies say ``#/definitions/…``."""
    local = [ref for ref in _refs(json.loads((DSP / path).read_text())) if "#" in ref]
    assert all(ref.split("#", 1)[1].startswith("/") for ref in local), local


@pytest.mark.parametrize("path", SCHEMAS)
def test_every_schema_resolves_from_the_local_registry(path: str) -> None:
    schema = json.loads((DSP / path).read_text())
    resolver = registry().resolver(base_uri=schema["$id"])
    for ref in _refs(schema):
        resolver.lookup(ref)  # raises when a reference points outside the vendored files
    validator(path).check_schema(schema)
