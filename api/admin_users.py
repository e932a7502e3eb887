"""HTTP routes for a tenant's admin to manage its dashboard users: list, create, disable.
An admin key reaches only its own tenant's users."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api import users
from api.deps import Offset, PrincipalDep, ReadSessionDep
from api.errors import ERRORS
from api.models import ROLES, DashboardUser, Tenant
from api.schemas import Page
from core.db import session_scope

router = APIRouter()

Role = Literal[tuple(ROLES)]  # type: ignore[valid-type]


class UserCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=254)
    role: Role  # type: ignore[valid-type]
    # Stored only as an argon2id hash; never echoed, logged or audited.
    password: str = Field(min_length=users.MIN_PASSWORD, max_length=users.MAX_PASSWORD)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: str
    role: str
    disabled: bool
    created_by: str
    created_at: datetime


def _out(user: DashboardUser) -> UserOut:
    return UserOut.model_validate(user)


@router.get("/v1/admin/users", response_model=Page[UserOut], responses=ERRORS)
def list_users(
    principal: PrincipalDep,
    session: ReadSessionDep,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[UserOut]:
    """The tenant's dashboard users, disabled ones included, by email. Role admin."""
    principal.require("admin")
    rows, total = users.list_users(
        session=session, tenant_id=principal.tenant_id, offset=offset, limit=limit
    )
    return Page[UserOut](items=[_out(u) for u in rows], total=total, offset=offset, limit=limit)


@router.post("/v1/admin/users", status_code=201, response_model=UserOut, responses=ERRORS)
def create_user(body: UserCreateIn, principal: PrincipalDep) -> UserOut:
    """A dashboard user of the caller's tenant; 409 when the email is taken. Role admin."""
    principal.require("admin")
    with session_scope() as session:
        user = users.create_user(
            session=session,
            tenant=session.get_one(Tenant, principal.tenant_id),
            email=body.email,
            role=body.role,
            password=body.password,
            actor=principal.actor,
        )
        return _out(user)


@router.post("/v1/admin/users/{user_id}/disable", response_model=UserOut, responses=ERRORS)
def disable_user(user_id: str, principal: PrincipalDep) -> UserOut:
    """The user can no longer sign in, and every session they have ends now. Role admin."""
    principal.require("admin")
    with session_scope() as session:
        user = users.disable_user(
            session=session, tenant_id=principal.tenant_id, user_id=user_id, actor=principal.actor
        )
        return _out(user)
