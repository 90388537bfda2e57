"""Turn pydantic validation failures into :class:`InvalidInput` with field paths."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kernel.errors import FieldError, InvalidInput

M = TypeVar("M", bound=BaseModel)


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        errors.append(FieldError(path or "(root)", err["msg"]))
    return errors


def validate(model: type[M], data: Any, *, prefix: str = "", what: str = "input") -> M:
    """Validate ``data`` (a dict or JSON text/bytes) into ``model`` or raise with paths."""
    try:
        if isinstance(data, str | bytes):
            return model.model_validate_json(data)
        return model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc, prefix)
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:5])
        raise InvalidInput(f"invalid {what}: {summary}", errors=errors) from None
