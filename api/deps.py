"""Request dependencies: one transaction per request, the caller's principal."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from api.auth import Principal, authenticate
from core.db import read_scope
from core.errors import AuthenticationError, InvalidInputError
from core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_read_session() -> Iterator[Session]:
    """For handlers that only read. Handlers that write open their own `session_scope()`,
    so they control when it commits (before a task is queued, say)."""
    with read_scope() as session:
        yield session


def get_principal(request: Request) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError(
            "send the API key as 'Authorization: Bearer <key>'", field="Authorization"
        )
    with read_scope() as session:
        return authenticate(session=session, key=key.strip())


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _nul_in(value: object, path: str) -> str | None:
    """The path of the first string holding NUL in parsed JSON (`loras.0.name`), or None."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        items: Iterable[tuple[object, object]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{path}.{key}" if path else str(key)
        found = inner if "\x00" in str(key) else _nul_in(item, inner)
        if found is not None:
            return found
    return None


async def refuse_nul(request: Request) -> None:
    """Refuse any text holding a NUL character (U+0000) before a handler runs, wherever it
    was sent. PostgreSQL cannot store or even compare such text, so it failed there with a
    500 while SQLite took it: now it is bad input on both."""
    fields: list[tuple[str, object]] = [
        *request.path_params.items(),
        *request.query_params.multi_items(),
    ]
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        # Not JSON at all: the handler's own validation says so.
        with contextlib.suppress(ValueError):
            fields.append(("", json.loads(await request.body())))
    elif content_type.startswith(FORM_TYPES):
        fields.extend((name, value) for name, value in (await request.form()).multi_items())
    for name, value in fields:
        field = _nul_in(value, name)
        if field is not None:
            raise InvalidInputError(
                f"{field or 'body'}: text must not contain a NUL character (U+0000)",
                field=field or "body",
            )


def _utc_datetime(value: object) -> datetime:
    # Only ISO 8601 text: pydantic alone would also take a bare number as a Unix time, which
    # the schema (format date-time) does not allow. Converted to UTC here, so a time that
    # has no UTC equivalent (year 1 at +01:00) is bad input, not an error in the database.
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 datetime string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is not an ISO 8601 datetime, e.g. 2026-11-01T00:00:00Z"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value!r} is out of range: in UTC it falls outside years 1-9999"
        ) from None


# A date-time in a query: ISO 8601, read as UTC when it has no zone.
UtcDatetime = Annotated[datetime, BeforeValidator(_utc_datetime)]
# Rows a listing skips. Bounded so that every database takes it as an integer: a larger one
# failed inside the driver (a 500) instead of answering 422.
MAX_OFFSET = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]

ReadSessionDep = Annotated[Session, Depends(get_read_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
