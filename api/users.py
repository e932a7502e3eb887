"""Dashboard users and their sign-in sessions.

A user belongs to one tenant and has one role (`api.models.ROLES`). Passwords are hashed with
argon2id (salted per hash). A session id is 256 random bits, sent to the browser once as an
HttpOnly cookie; the database keeps only its sha256, so deleting the row (sign-out, user
disabled) really ends the session. The CSRF token of a session is derived from its id with
HMAC, so it is never stored and changes with every sign-in.

Sign-ins, sign-outs and failed sign-ins are audit events; no password, session id or CSRF
token is ever logged or written to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.auth import Principal
from api.models import ROLES, DashboardSession, DashboardUser, Tenant
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

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}$")
_CSRF_CONTEXT = b"clearance dashboard csrf"


@cache
def _hasher() -> PasswordHasher:
    return PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile


@cache
def _decoy_hash() -> str:
    # Checked against when the user does not exist, so a failed sign-in takes as long either
    # way and its timing does not tell which emails have an account.
    return _hasher().hash(secrets.token_urlsafe(16))


def actor_of(user: DashboardUser) -> str:
    return f"user:{user.email}"


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise InvalidInputError(f"email {email!r} is not an email address", field="email")
    return email


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInputError(
            f"the password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters long",
            field="password",
        )


def create_user(
    *, session: Session, tenant: Tenant, email: str, role: str, password: str, actor: str
) -> DashboardUser:
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is not one of {choices(ROLES)}", field="role")
    email = normalise_email(email)
    _check_password(password)
    taken = session.scalar(
        select(DashboardUser.id).where(
            DashboardUser.tenant_id == tenant.id, DashboardUser.email == email
        )
    )
    if taken is not None:
        raise ConflictError(f"user {email!r} already exists in this tenant", field="email")
    user = DashboardUser(
        tenant_id=tenant.id,
        email=email,
        role=role,
        password_hash=_hasher().hash(password),
        created_by=actor,
    )
    session.add(user)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant.id,
        type="user.created",
        subject=f"user:{user.id}",
        payload={"email": email, "role": role},
    )
    return user


def list_users(
    *, session: Session, tenant_id: str, offset: int = 0, limit: int = 50
) -> tuple[list[DashboardUser], int]:
    """A page of the tenant's users, disabled ones included, by email; and how many in all."""
    query = select(DashboardUser).where(DashboardUser.tenant_id == tenant_id)
    return page(session, query, DashboardUser.email, offset=offset, limit=limit)


def disable_user(*, session: Session, tenant_id: str, user_id: str, actor: str) -> DashboardUser:
    """Disable a user of the tenant and end every session they have; idempotent."""
    user = session.get(DashboardUser, user_id, with_for_update=True)
    if user is None or user.tenant_id != tenant_id:
        raise NotFoundError(f"user {user_id!r} does not exist", field="user_id")
    session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    if not user.disabled:
        user.disabled = True
        audit.append(
            session=session,
            actor=actor,
            tenant_id=tenant_id,
            type="user.disabled",
            subject=f"user:{user.id}",
            payload={"email": user.email},
        )
    return user


def user_by_email(*, session: Session, tenant_id: str, email: str) -> DashboardUser:
    user = session.scalar(
        select(DashboardUser).where(
            DashboardUser.tenant_id == tenant_id,
            DashboardUser.email == normalise_email(email),
        )
    )
    if user is None:
        raise NotFoundError(f"user {email!r} does not exist in this tenant", field="email")
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The CSRF token of the session whose id is `token`."""
    return hmac.new(token.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def check_csrf(token: str, given: str | None) -> None:
    if not given or not hmac.compare_digest(csrf_token(token), given):
        raise PermissionDeniedError(
            "the form's CSRF token is missing or wrong; reload the page and try again",
            field="csrf_token",
        )


@dataclass(frozen=True)
class SignIn:
    """The result of a sign-in attempt. `token` is the new session id (None when refused),
    to be set as the cookie and then forgotten."""

    token: str | None
    user: DashboardUser | None


def sign_in(
    *,
    session: Session,
    tenant_name: str,
    email: str,
    password: str,
    lifetime: timedelta,
    client: str,
    max_failures: int,
    failure_window: timedelta,
) -> SignIn:
    """Check the credentials and open a session. A refusal is audited in `session` too and
    returns no token: the caller commits, then answers 401. The reason (unknown tenant or
    user, wrong password, disabled, locked) goes to the audit log only, never to the client.
    An account with `max_failures` failed sign-ins within `failure_window` (since its last
    sign-in) is locked: refused whatever the password, until the window has passed."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name.strip()))
    user = None
    if tenant is not None:
        user = session.scalar(
            select(DashboardUser).where(
                DashboardUser.tenant_id == tenant.id,
                DashboardUser.email == email.strip().lower(),
            )
        )
    # Checked before the lock, so a locked account takes as long to refuse as any other.
    refusal = _refusal(tenant, user, password)
    if user is not None and _locked(session, user, max_failures, failure_window):
        audit.append(
            session=session,
            actor="dashboard:anonymous",
            tenant_id=user.tenant_id,
            type="dashboard.login_locked",
            subject=f"user:{user.id}",
            payload={"client": client, "password_ok": refusal is None},
        )
        return SignIn(None, None)
    if refusal is not None or user is None:
        audit.append(
            session=session,
            # Whoever tried is unknown: the email is only what they typed.
            actor="dashboard:anonymous",
            tenant_id=tenant.id if tenant else None,
            type="dashboard.login_failed",
            subject=f"user:{user.id}" if user else "dashboard",
            payload={
                "tenant": tenant_name[:100],
                "email": email.strip().lower()[:254],
                "reason": refusal,
                "client": client,
            },
        )
        return SignIn(None, None)
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = _hasher().hash(password)
    now = utcnow()
    # Sessions that lapsed are of no use to anyone; drop this user's as they sign in again.
    session.execute(
        delete(DashboardSession).where(
            DashboardSession.user_id == user.id, DashboardSession.expires_at <= now
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            token_hash=_token_hash(token),
            user_id=user.id,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    audit.append(
        session=session,
        actor=actor_of(user),
        tenant_id=user.tenant_id,
        type="dashboard.login",
        subject=f"user:{user.id}",
        payload={"client": client, "expires_at": (now + lifetime).isoformat()},
    )
    return SignIn(token, user)


def _locked(session: Session, user: DashboardUser, max_failures: int, window: timedelta) -> bool:
    subject = f"user:{user.id}"
    since = utcnow() - window
    last = audit.last_at(session=session, type="dashboard.login", subject=subject)
    if last is not None and last > since:
        since = last  # a sign-in that succeeded forgives the failures before it
    failures = audit.count_since(
        session=session, type="dashboard.login_failed", subject=subject, since=since
    )
    return failures >= max_failures


def _refusal(tenant: Tenant | None, user: DashboardUser | None, password: str) -> str | None:
    """Why a sign-in is refused, or None. The password is checked even without a user."""
    password_ok: bool
    try:
        password_ok = _hasher().verify(user.password_hash if user else _decoy_hash(), password)
    except (VerificationError, InvalidHashError):
        password_ok = False
    if tenant is None:
        return "unknown tenant"
    if user is None:
        return "unknown user"
    if not password_ok:
        return "wrong password"
    if user.disabled:
        return "user disabled"
    return None


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a request, as the services see them (`principal`)."""

    principal: Principal
    user_id: str
    email: str
    tenant_name: str


def resolve(*, session: Session, token: str) -> Viewer:
    """The user of a live session; AuthenticationError when the session is unknown, expired,
    or its user disabled."""
    row = session.execute(
        select(DashboardSession, DashboardUser, Tenant.name)
        .join(DashboardUser, DashboardUser.id == DashboardSession.user_id)
        .join(Tenant, Tenant.id == DashboardUser.tenant_id)
        .where(DashboardSession.token_hash == _token_hash(token))
    ).one_or_none()
    if row is None:
        raise AuthenticationError("sign in to use the dashboard", field="session")
    found, user, tenant_name = row
    if found.expires_at <= utcnow() or user.disabled:
        raise AuthenticationError("the session has ended; sign in again", field="session")
    return Viewer(
        principal=Principal(
            tenant_id=user.tenant_id, role=user.role, key_id=user.id, actor=actor_of(user)
        ),
        user_id=user.id,
        email=user.email,
        tenant_name=tenant_name,
    )


def sign_out(*, session: Session, token: str, client: str) -> None:
    """End the session (delete its row); signing out of an ended session does nothing."""
    found = session.get(DashboardSession, _token_hash(token), with_for_update=True)
    if found is None:
        return
    user = session.get_one(DashboardUser, found.user_id)
    session.delete(found)
    audit.append(
        session=session,
        actor=actor_of(user),
        tenant_id=user.tenant_id,
        type="dashboard.logout",
        subject=f"user:{user.id}",
        payload={"client": client},
    )
