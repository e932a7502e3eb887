"""Base errors. Each feature's `errors.py` subclasses these; `api/errors.py` maps the kinds
below to HTTP status codes. Messages name the field and, where there are any, the valid
choices."""

from __future__ import annotations

from typing import Any


class ClearanceError(Exception):
    """Base of every error Clearance raises on purpose."""

    code = "error"

    def __init__(self, detail: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field:
            body["field"] = self.field
        body.update(self.extra)
        return body


class InvalidInputError(ClearanceError):
    code = "invalid_input"


class NotFoundError(ClearanceError):
    code = "not_found"


class ConflictError(ClearanceError):
    code = "conflict"


class AuthenticationError(ClearanceError):
    code = "unauthenticated"


class PermissionDeniedError(ClearanceError):
    code = "forbidden"


class QuotaExceededError(ClearanceError):
    """A budget or quota would be exceeded; nothing was done or charged."""

    code = "quota_exceeded"


class UnavailableError(ClearanceError):
    """Something the request needs (database, broker, a model) cannot be reached now."""

    code = "unavailable"


def choices(values: Any) -> str:
    """Valid choices for a message: `'a', 'b' or 'c'`."""
    quoted = [repr(str(v)) for v in values]
    if len(quoted) < 2:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
