"""Request dependencies: one transaction per request, the caller's principal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.auth import Principal, authenticate
from core.db import read_scope
from core.errors import AuthenticationError
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


ReadSessionDep = Annotated[Session, Depends(get_read_session)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
