"""Turn pydantic validation failures into :class:`InvalidInput` with field paths."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kernel.errors import FieldError, InvalidInput
from kernel.limits import JSON, JsonLimits, check_json

M = TypeVar("M", bound=BaseModel)


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        errors.append(FieldError(path or "(root)", err["msg"]))
    return errors


def validate(
    model: type[M], data: Any, *, prefix: str = "", what: str = "input", limits: JsonLimits = JSON
) -> M:
    """Validate ``data`` (a dict or JSON text/bytes) into ``model`` or raise with paths;
    JSON text is held to ``limits`` first (depth, number and string sizes)."""
    try:
        if isinstance(data, str | bytes):
            _check(data, limits, prefix, what)
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, prefix)
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:5])
        raise InvalidInput(f"invalid {what}: {summary}", errors=errors) from None


def _check(data: str | bytes, limits: JsonLimits, prefix: str, what: str) -> None:
    try:
        check_json(data, limits, what=f"the {what}")
    except InvalidInput as exc:
        if not prefix:
            raise
        raise InvalidInput(exc.detail, errors=[FieldError(prefix, exc.detail)]) from None
