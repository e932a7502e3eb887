"""Signing in and out, the home page, and the dashboard's static files."""

from __future__ import annotations

import hmac
import mimetypes
import secrets
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import FileResponse, HTMLResponse

from api import users
from api.dashboard import web
from api.deps import SettingsDep
from core.db import session_scope
from core.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from review import queue

router = APIRouter(route_class=web.DashboardRoute)

# The files the static route serves: exactly what ships in the folder, nothing else.
STATIC_FILES = {p.name: p for p in web.STATIC_DIR.iterdir() if p.is_file()}


@router.get(
    "/dashboard/static/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"text/javascript": {}, "text/css": {}}}, **web.DASHBOARD_ERRORS},
)
def static_file(name: str) -> FileResponse:
    """htmx, the dashboard's script (keyboard shortcuts, live updates) and its stylesheet."""
    path = STATIC_FILES.get(name)
    if path is None:
        raise NotFoundError(f"static file {name!r} does not exist", field="name")
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )


def _login_page(
    request: Request, next_path: str, message: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = request.cookies.get(web.LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = web.render(
        request,
        "login.html",
        None,
        status_code=status_code,
        login_csrf=token,
        next_path=web.safe_next(next_path),
        message=message,
    )
    response.set_cookie(
        web.LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.dashboard.secure_cookie,
        path=web.LOGIN_PATH,
    )
    return response


@router.get(web.LOGIN_PATH, response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def login_page(request: Request, next: str = "/dashboard") -> HTMLResponse:
    """The sign-in form: tenant, email and password."""
    return _login_page(request, next)


@router.post(web.LOGIN_PATH, response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def login(
    request: Request,
    settings: SettingsDep,
    tenant: Annotated[str, Form(max_length=100)],
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=users.MAX_PASSWORD)],
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/dashboard",
) -> Response:
    """Sign in: sets the session cookie (HttpOnly, SameSite=Lax) and goes to `next`. A wrong
    tenant, email or password, a disabled user, or an account locked after too many failed
    sign-ins, all get the same 401."""
    expected = request.cookies.get(web.LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, csrf_token):
        raise PermissionDeniedError(
            "the sign-in form's CSRF token is missing or wrong; reload the page",
            field="csrf_token",
        )
    lifetime = timedelta(hours=settings.dashboard.session_hours)
    with session_scope() as session:
        signed = users.sign_in(
            session=session,
            tenant_name=tenant,
            email=email,
            password=password,
            lifetime=lifetime,
            client=web.client_of(request),
            max_failures=settings.dashboard.max_failed_sign_ins,
            failure_window=timedelta(minutes=settings.dashboard.failed_sign_in_minutes),
        )
    if signed.token is None:
        # One answer for every refusal: it must not tell which accounts exist or are locked.
        refused = (
            "the tenant, email or password is wrong, the user is disabled, or there were "
            f"too many failed sign-ins (wait {settings.dashboard.failed_sign_in_minutes:g} "
            "minutes)"
        )
        if not web.wants_html(request):
            raise AuthenticationError(refused, field="password")
        return _login_page(request, next, message=refused, status_code=401)
    response = web.see_other(request, web.safe_next(next))
    response.set_cookie(
        web.SESSION_COOKIE,
        signed.token,
        max_age=int(lifetime.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=settings.dashboard.secure_cookie,
        path="/dashboard",
    )
    response.delete_cookie(web.LOGIN_CSRF_COOKIE, path=web.LOGIN_PATH)
    return response


@router.post("/dashboard/logout", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def logout(request: Request, viewer: web.PostingViewerDep) -> Response:
    """Sign out: the session is deleted on the server, so its cookie opens nothing again."""
    with session_scope() as session:
        users.sign_out(
            session=session,
            token=request.cookies[web.SESSION_COOKIE],
            client=web.client_of(request),
        )
    response = web.see_other(request, web.LOGIN_PATH)
    response.delete_cookie(web.SESSION_COOKIE, path="/dashboard")
    return response


@router.get("/dashboard", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def home(request: Request, viewer: web.ViewerDep) -> Response:
    """Reviewers start at the queue, everyone else at the tenant's jobs."""
    start = (
        "/dashboard/queue" if viewer.principal.role in queue.REVIEWER_ROLES else "/dashboard/jobs"
    )
    return web.see_other(request, start)
