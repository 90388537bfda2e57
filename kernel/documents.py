"""YAML / JSON documents users write by hand (manifests, job specs), read so that every
error names the file, the line and the field."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError, SafeConstructor

from kernel.errors import FieldError, InvalidInput
from kernel.limits import check_yaml
from kernel.validation import field_errors

M = TypeVar("M", bound=BaseModel)


@dataclass
class Located:
    """A parsed document and the line of every field path in it."""

    data: Any
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

    def error(self, errors: list[FieldError], what: str) -> InvalidInput:
        """``errors`` (dotted paths) as one :class:`InvalidInput` whose messages start ``file:line``."""
        located, parts = [], []
        for error in errors:
            line = self.line_of(error.path)
            where = f"{self.source_name}:{line}" if line else self.source_name
            located.append(FieldError(error.path, f"{where}: {error.message}"))
            parts.append(f"{where} {error.path}: {error.message}")
        summary = "; ".join(parts[:5])
        return InvalidInput(f"invalid {what}: {summary}", errors=located)

    def validate(self, model: type[M], what: str) -> M:
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise self.error(field_errors(exc), what) from None


def _scalar(node: yaml.Node, source_name: str) -> Any:
    """A scalar as YAML's safe loader types it; a value Python or JSON cannot hold (an
    integer of thousands of digits, ``.inf``, ``.nan``, a non-date) is refused with its line."""
    where = f"{source_name}:{node.start_mark.line + 1}"
    try:
        value = SafeConstructor().construct_object(node, deep=True)
    except (ValueError, ConstructorError) as exc:
        raise InvalidInput(f"{where}: {exc}", errors=[FieldError("(root)", str(exc))]) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{where}: {node.value} is not a finite number")
    return value


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], source_name: str) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(_scalar(key_node, source_name))
            child = f"{path}.{key}" if path else key
            lines[child] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, child, lines, source_name)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, f"{path}.{i}" if path else str(i), lines, source_name)
            for i, item in enumerate(node.value)
        ]
    return _scalar(node, source_name)


def parse_located(text: str, source_name: str, what: str) -> Located:
    """Parse YAML (JSON is YAML) keeping lines; refuses invalid YAML, empty documents and
    documents over :class:`kernel.limits.YamlLimits` (checked before anything recursive)."""
    lines: dict[str, int] = {}
    check_yaml(text, what=source_name)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source_name}:{mark.line + 1}" if mark is not None else source_name
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        message = f"not valid YAML{at}: {getattr(exc, 'problem', None) or exc}"
        raise InvalidInput(f"{where}: {message}", errors=[FieldError("(root)", message)]) from None
    if node is None:
        raise InvalidInput(f"{source_name}: the {what} is empty")
    return Located(_to_python(node, "", lines, source_name), source_name, lines)
