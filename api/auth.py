"""Tenants and API keys. A key is `clr_<prefix>_<secret>`: the prefix finds the row, the
sha256 of the whole key is compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import ROLES, ApiKey, Tenant
from audit import service as audit
from core.db import page, utcnow
from core.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    choices,
)

_KEY_FORMAT = re.compile(r"^clr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    role: str
    key_id: str
    actor: str

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise PermissionDeniedError(
                f"role {self.role!r} may not do this; it needs {choices(roles)}", field="role"
            )


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_tenant(
    *, session: Session, name: str, actor: str, require_human_approval: bool = False
) -> Tenant:
    if not _TENANT_NAME.match(name):
        raise InvalidInputError(
            f"tenant name {name!r} is not allowed: use 1-100 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit",
            field="name",
        )
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise ConflictError(f"tenant {name!r} already exists", field="name")
    tenant = Tenant(name=name, require_human_approval=require_human_approval)
    session.add(tenant)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant.id,
        type="tenant.created",
        subject=f"tenant:{tenant.id}",
        payload={"name": name, "require_human_approval": require_human_approval},
    )
    return tenant


def tenant_by_name(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        known = session.scalars(select(Tenant.name).order_by(Tenant.name)).all()
        raise NotFoundError(
            f"tenant {name!r} does not exist; existing tenants: {choices(known) or 'none'}",
            field="tenant",
        )
    return tenant


def issue_key(*, session: Session, tenant: Tenant, role: str, actor: str) -> tuple[ApiKey, str]:
    """Store a new key; returns its row and the key, the only time the key is ever visible."""
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is not one of {choices(ROLES)}", field="role")
    prefix = secrets.token_hex(6)
    key = f"clr_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant.id, role=role, prefix=prefix, key_hash=_hash(key))
    session.add(row)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant.id,
        type="api_key.created",
        subject=f"api_key:{prefix}",
        payload={"role": role},
    )
    return row, key


def create_key(*, session: Session, tenant: Tenant, role: str, actor: str) -> str:
    """Store a new key and return it: the only time it is ever visible."""
    return issue_key(session=session, tenant=tenant, role=role, actor=actor)[1]


class ApiKeyNotFoundError(NotFoundError):
    code = "api_key_not_found"


def list_keys(
    *, session: Session, tenant_id: str, offset: int = 0, limit: int = 50
) -> tuple[list[ApiKey], int]:
    """A tenant's keys, revoked ones included, oldest first."""
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    return page(session, query, ApiKey.created_at, ApiKey.id, offset=offset, limit=limit)


def revoke_key(*, session: Session, tenant_id: str, key_id: str, actor: str) -> ApiKey:
    """Revoke one of a tenant's keys (given by its id or its prefix): it authenticates no
    more. Revoking a revoked key changes nothing. The tenant's last active admin key is
    refused: without it no one of the tenant could manage keys again (an operator would
    have to); create another admin key first."""
    row = session.scalar(
        select(ApiKey).where(
            ApiKey.tenant_id == tenant_id, (ApiKey.id == key_id) | (ApiKey.prefix == key_id)
        )
    )
    if row is None:
        raise ApiKeyNotFoundError(f"API key {key_id!r} does not exist", field="key_id")
    if row.revoked_at is not None:
        return row
    if row.role == "admin":
        # Locked, so two revocations at once cannot each leave the other as the last one.
        admins = session.scalars(
            select(ApiKey.id)
            .where(
                ApiKey.tenant_id == tenant_id,
                ApiKey.role == "admin",
                ApiKey.revoked_at.is_(None),
            )
            .with_for_update()
        ).all()
        if set(admins) <= {row.id}:
            raise ConflictError(
                f"API key {row.prefix!r} is the tenant's last active admin key; create another "
                "admin key first, then revoke this one",
                field="key_id",
            )
    row.revoked_at = utcnow()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="api_key.revoked",
        subject=f"api_key:{row.prefix}",
        payload={"role": row.role},
    )
    return row


def authenticate(*, session: Session, key: str) -> Principal:
    match = _KEY_FORMAT.match(key)
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == match.group(1))) if match else None
    if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
        raise AuthenticationError("the API key is not valid", field="Authorization")
    if row.revoked_at is not None:
        raise AuthenticationError("the API key has been revoked", field="Authorization")
    return Principal(
        tenant_id=row.tenant_id, role=row.role, key_id=row.id, actor=f"api_key:{row.prefix}"
    )
