"""Read a manifest from YAML or JSON text, keeping the line of every field for error messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from kernel.errors import FieldError, InvalidInput
from kernel.validation import field_errors
from marketplace.manifests.schema import Manifest


@dataclass
class LoadedManifest:
    manifest: Manifest
    source_name: str
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        """The line of a dotted field path, or of its nearest parent that has one."""
        parts = path.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None


def _to_python(node: yaml.Node, path: str, lines: dict[str, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            child = f"{path}.{key}" if path else key
            lines[child] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, child, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, f"{path}.{i}" if path else str(i), lines) for i, item in enumerate(node.value)
        ]
    return yaml.safe_load(yaml.serialize(node))


def load_manifest(text: str, source_name: str = "manifest") -> LoadedManifest:
    """Parse and validate; errors name the file, the line and the field."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source_name}:{mark.line + 1}" if mark is not None else source_name
        raise InvalidInput(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if node is None:
        raise InvalidInput(f"{source_name}: the manifest is empty")
    data = _to_python(node, "", lines)
    loaded_lines = LoadedManifest(Manifest.model_construct(), source_name, lines)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise _located(field_errors(exc), loaded_lines) from None
    return LoadedManifest(manifest, source_name, lines)


def _located(errors: list[FieldError], loaded: LoadedManifest) -> InvalidInput:
    located = []
    for error in errors:
        line = loaded.line_of(error.path)
        where = f"{loaded.source_name}:{line}" if line else loaded.source_name
        located.append(FieldError(error.path, f"{where}: {error.message}"))
    summary = "; ".join(
        f"{e.message.split(': ', 1)[0]} {e.path}: {e.message.split(': ', 1)[-1]}" for e in located[:5]
    )
    return InvalidInput(f"invalid manifest: {summary}", errors=located)


def locate(error: InvalidInput, loaded: LoadedManifest, prefix: str) -> InvalidInput:
    """Re-anchor an error raised for one part of the manifest (e.g. a policy) at its lines."""
    errors = [FieldError(f"{prefix}.{e.path}" if e.path else prefix, e.message) for e in error.errors] or [
        FieldError(prefix, error.detail)
    ]
    return _located(errors, loaded)
