"""The dashboard's plumbing: templates, the signed-in viewer, CSRF checks, and errors shown
as pages.

Errors: a dashboard route raises the same errors as the API. A browser gets them as a page
(an htmx request as a fragment for the page's message area) with the same status; any other
client gets the usual JSON `{"error", "detail"}`. A browser that is not signed in is sent to
the sign-in page instead of a 401.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api import users
from api.errors import status_for
from core.db import read_scope
from core.errors import AuthenticationError, ClearanceError, InvalidInputError

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")

SESSION_COOKIE = "clearance_session"
# Sign-in has no session yet; its form is protected by a double-submit cookie instead.
LOGIN_CSRF_COOKIE = "clearance_login_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
LOGIN_PATH = "/dashboard/login"

# Scripts and styles come from this server only; nothing inline, no CDN, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# What each error status documents: the JSON error body for API clients, a page for browsers.
DASHBOARD_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "description": "The error: JSON for API clients, a page for a browser.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}},
            "text/html": {},
        },
    }
    for status in (401, 403, 404, 409, 422, 500, 503)
}
DASHBOARD_ERRORS[303] = {
    "description": "A browser that is not signed in goes to the sign-in page; a form that did "
    "its work goes on to the next page."
}


def _static_version() -> str:
    # Part of every static URL, so a browser never runs an old script against a new page.
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def countdown(due: datetime, now: datetime) -> str:
    """An SLA countdown, as the page's script also writes it every second."""
    seconds = int((due - now).total_seconds())
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
    return f"{text} left" if seconds >= 0 else f"overdue by {text}"


TEMPLATES.env.globals["static_version"] = _static_version()
TEMPLATES.env.globals["countdown"] = countdown


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def wants_html(request: Request) -> bool:
    return is_htmx(request) or "text/html" in request.headers.get("Accept", "")


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this site, never another site."""
    if target and target.startswith("/dashboard") and "//" not in target and "\\" not in target:
        return target
    return "/dashboard"


def _error_response(request: Request, error: ClearanceError) -> Response:
    status = status_for(error)
    if status == 401:
        target = f"{LOGIN_PATH}?next={quote(request.url.path)}"
        if is_htmx(request):
            return Response(status_code=401, headers={"HX-Redirect": target})
        if request.method == "GET":
            return RedirectResponse(target, status_code=303)
    name = "_message.html" if is_htmx(request) else "error.html"
    return TEMPLATES.TemplateResponse(
        request,
        name,
        {"status": status, "error": error.code, "detail": error.detail, "kind": "error"},
        status_code=status,
    )


class DashboardRoute(APIRoute):
    """A dashboard route: errors as pages for browsers (see the module's docstring), and the
    security headers on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except ClearanceError as error:
                if not wants_html(request):
                    raise
                response = _error_response(request, error)
            except RequestValidationError as error:
                if not wants_html(request):
                    raise
                first = error.errors()[0] if error.errors() else {}
                field = str((first.get("loc") or ("", ""))[-1])
                detail = f"{field}: {first.get('msg', 'invalid value')}"
                response = _error_response(request, InvalidInputError(detail, field=field))
            response.headers.update(SECURITY_HEADERS)
            return response

        return handle


def get_viewer(request: Request) -> users.Viewer:
    """The signed-in user of this request, from the session cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise AuthenticationError("sign in to use the dashboard", field="session")
    with read_scope() as session:
        viewer = users.resolve(session=session, token=token)
    request.state.csrf = users.csrf_token(token)
    return viewer


ViewerDep = Annotated[users.Viewer, Depends(get_viewer)]


async def check_csrf(request: Request, viewer: ViewerDep) -> users.Viewer:
    """A signed-in user whose request carries the session's CSRF token (the X-CSRF-Token
    header htmx sends, or the form's csrf_token field); 403 without it."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("Content-Type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    users.check_csrf(request.cookies[SESSION_COOKIE], given)
    return viewer


PostingViewerDep = Annotated[users.Viewer, Depends(check_csrf)]


def render(
    request: Request,
    name: str,
    viewer: users.Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(
        request,
        name,
        {"viewer": viewer, "csrf": getattr(request.state, "csrf", None), **context},
        status_code=status_code,
    )
    # Pages show a tenant's data: no shared cache may keep them.
    response.headers["Cache-Control"] = "no-store"
    return response


def see_other(request: Request, target: str) -> Response:
    """After a form post: htmx follows HX-Redirect, a plain form a 303."""
    if is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)
