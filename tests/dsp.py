"""Validate documents against the Dataspace Protocol 2025-1 JSON schemas vendored in tests/dsp-2025-1.

The schemas' cross-file ``$ref``s use their ``$id`` URLs; a local ``referencing`` registry
maps them to the files, so nothing is fetched.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT201909

DSP = Path(__file__).resolve().parent / "dsp-2025-1"


def read(path: str) -> Any:
    return json.loads((DSP / path).read_text())


@cache
def registry() -> Registry[Any]:
    assert DSP.is_dir(), f"the DSP 2025-1 schemas are expected at {DSP}"
    resources = []
    for path in sorted(DSP.glob("*/*-schema.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema, default_specification=DRAFT201909)))
    return Registry().with_resources(resources)


def validator(schema_path: str) -> jsonschema.Draft201909Validator:
    return jsonschema.Draft201909Validator(read(schema_path), registry=registry())


def errors(schema_path: str, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator(schema_path).iter_errors(document)
    ]
