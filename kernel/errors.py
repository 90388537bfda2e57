"""The one error tree of Agora.

Every error a user can see derives from :class:`AgoraError`. Each class knows its
problem ``type`` (a stable URI fragment), its HTTP status and a title; an instance
carries the human ``detail`` and, for validation, the offending field paths. The HTTP
layer renders any of them as ``application/problem+json`` (RFC 9457) in one place and
the command line prints the same detail and exits non-zero.

::

    AgoraError
    ├── InvalidInput            400  bad request body, parameter, manifest or file
    │   └── UnsupportedMediaType 415
    ├── Unauthorized            401  missing, malformed, badly signed or expired token
    ├── Forbidden               403  valid token without the needed scope
    ├── NotFound                404
    ├── Conflict                409  the change collides with existing state
    ├── RequestTimeout          408  the client took too long to send its request
    ├── PayloadTooLarge         413  a body over the route's or the node's maximum
    ├── HeadersTooLarge         431  a request line and headers over the node's maximum
    ├── ClientGone              499  the client hung up half-way (nothing was written)
    ├── PeerError               502  a peer answered with an error of no type this node knows
    ├── ServiceUnavailable      503  a part the node depends on is down
    └── ConfigurationError      500  the node itself is set up wrongly
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

PROBLEM_BASE = "https://agora.dev/problems/"


@dataclass(frozen=True)
class FieldError:
    """One invalid field: a dotted path into the input and what is wrong with it."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


_BY_SLUG: dict[str, type[AgoraError]] = {}  # problem type -> class, for :func:`from_problem`


class AgoraError(Exception):
    """Root of every error Agora reports to a user."""

    type_slug: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every error with its own problem type, wherever it is defined (``UseDenied`` in
        the connector, say), is known to :func:`from_problem`: a peer's refusal keeps its
        status instead of arriving as a 500."""
        super().__init_subclass__(**kwargs)
        if "type_slug" in cls.__dict__:
            _BY_SLUG.setdefault(cls.type_slug, cls)

    def __init__(self, detail: str, *, errors: Sequence[FieldError] = (), **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.extra = extra

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.type_slug

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 problem document for this error."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        body.update(self.extra)
        return body


class InvalidInput(AgoraError):
    type_slug = "invalid-input"
    status = 400
    title = "Invalid input"

    def under(self, prefix: str) -> InvalidInput:
        """The same refusal for a part of a larger document: field paths moved under ``prefix``."""
        errors = [FieldError(f"{prefix}.{e.path}" if e.path else prefix, e.message) for e in self.errors]
        return InvalidInput(
            f"invalid {prefix}: {self.detail}", errors=errors or [FieldError(prefix, self.detail)]
        )


class UnsupportedMediaType(InvalidInput):
    type_slug = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class Unauthorized(AgoraError):
    type_slug = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(AgoraError):
    type_slug = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(AgoraError):
    type_slug = "not-found"
    status = 404
    title = "Not found"


class Conflict(AgoraError):
    type_slug = "conflict"
    status = 409
    title = "Conflict"


class RequestTimeout(AgoraError):
    type_slug = "request-timeout"
    status = 408
    title = "Request timeout"


class PayloadTooLarge(AgoraError):
    type_slug = "payload-too-large"
    status = 413
    title = "Payload too large"


class HeadersTooLarge(AgoraError):
    type_slug = "headers-too-large"
    status = 431
    title = "Request header fields too large"


class ClientGone(AgoraError):
    type_slug = "client-gone"
    status = 499
    title = "Client closed the request"


class PeerError(AgoraError):
    """Another node's refusal this node cannot classify: its fault or its words, never ours (5xx)."""

    type_slug = "peer-error"
    status = 502
    title = "The peer answered with an error"


class ServiceUnavailable(AgoraError):
    type_slug = "service-unavailable"
    status = 503
    title = "Service unavailable"


class ConfigurationError(AgoraError):
    type_slug = "configuration"
    status = 500
    title = "Node configuration error"


_BY_SLUG[AgoraError.type_slug] = AgoraError


def from_problem(body: dict[str, Any], status: int) -> AgoraError:
    """Rebuild an error from a problem document a node sent back (used by clients)."""
    slug = str(body.get("type", "")).removeprefix(PROBLEM_BASE)
    cls = _BY_SLUG.get(slug, AgoraError)
    errors = [
        FieldError(str(e.get("path", "")), str(e.get("message", "")))
        for e in body.get("errors", [])
        if isinstance(e, dict)
    ]
    err = cls(str(body.get("detail") or body.get("title") or f"HTTP {status}"), errors=errors)
    return err
