"""Dataspace Protocol 2025-1 messages as this node reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kernel.db import as_utc
from kernel.errors import FieldError, InvalidInput


def catalog_request_since(body: dict[str, Any]) -> datetime | None:
    """Check a ``CatalogRequestMessage``; the ``agora:modifiedSince`` filter, if any."""
    if body.get("@type") != "CatalogRequestMessage":
        raise InvalidInput(
            f"expected a CatalogRequestMessage, got {body.get('@type')!r}",
            errors=[FieldError("@type", "wrong type")],
        )
    filters = body.get("filter", [])
    if not isinstance(filters, list):
        raise InvalidInput("filter must be an array", errors=[FieldError("filter", "not an array")])
    for item in filters:
        if isinstance(item, dict) and "agora:modifiedSince" in item:
            try:
                return as_utc(datetime.fromisoformat(str(item["agora:modifiedSince"])))
            except ValueError:
                raise InvalidInput(
                    "agora:modifiedSince must be an ISO 8601 time", errors=[FieldError("filter", "bad time")]
                ) from None
    return None
