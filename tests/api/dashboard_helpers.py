"""Dashboard users and signed-in test clients, for the dashboard, security and browser tests."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from api import users
from api.models import Tenant
from core.db import session_scope
from tests.conftest import TenantKeys

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_user(
    tenant: TenantKeys, role: str, email: str | None = None, password: str = PASSWORD
) -> str:
    """A dashboard user of the tenant; returns the email."""
    email = email or f"{role}@{tenant.name}.test"
    with session_scope() as session:
        users.create_user(
            session=session,
            tenant=session.get_one(Tenant, tenant.id),
            email=email,
            role=role,
            password=password,
            actor="test",
        )
    return email


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def post_sign_in(client: Any, tenant: str, email: str, password: str = PASSWORD) -> Any:
    """Open the sign-in page and post its form, with its CSRF token, as a browser does."""
    form = client.get("/dashboard/login")
    assert form.status_code == 200, form.text
    return client.post(
        "/dashboard/login",
        data={
            "tenant": tenant,
            "email": email,
            "password": password,
            "csrf_token": csrf_of(form.text),
        },
        follow_redirects=False,
    )


class Session:
    """A browser-like client signed in as one dashboard user, with its CSRF token."""

    def __init__(self, app: ASGIApp, tenant: str, email: str, password: str = PASSWORD) -> None:
        self.client = TestClient(app, headers={"Accept": "text/html"})
        response = post_sign_in(self.client, tenant, email, password)
        assert response.status_code == 303, response.text
        self.token = self.client.cookies["clearance_session"]
        self.csrf = csrf_of(self.client.get("/dashboard/jobs").text)

    def post(self, path: str, data: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """A form post with the session's CSRF token, not following the redirect."""
        return self.client.post(
            path, data={"csrf_token": self.csrf, **(data or {})}, follow_redirects=False, **kwargs
        )
