"""The one place that turns errors into HTTP responses: `{"error": code, "detail": ...}`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from api.schemas import ErrorOut
from core.errors import (
    AuthenticationError,
    ClearanceError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    UnavailableError,
)

log = logging.getLogger(__name__)

# The error statuses every route documents in OpenAPI (the body is ErrorOut).
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (401, 402, 403, 404, 409, 422, 500, 503)
}

STATUS = (
    (InvalidInputError, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (QuotaExceededError, 402),
    (UnavailableError, 503),
)


def status_for(error: ClearanceError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 400)


def _field_of(location: Sequence[object]) -> str:
    # ("body", "width") -> "width"; the leading part only says where the field was sent.
    parts = [str(p) for p in location[1:]] if len(location) > 1 else [str(p) for p in location]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ClearanceError)
    async def _clearance(_: Request, error: ClearanceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, AuthenticationError) else None
        return JSONResponse(error.to_dict(), status_code=status_for(error), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        field = _field_of(first.get("loc", ()))
        detail = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return JSONResponse(
            {
                "error": "invalid_input",
                "detail": detail,
                "field": field,
                "problems": [
                    {"field": _field_of(p.get("loc", ())), "message": p.get("msg")}
                    for p in problems
                ],
            },
            status_code=422,
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, error: HTTPException) -> JSONResponse:
        if isinstance(error.__cause__, UnicodeDecodeError):
            # FastAPI answers a JSON body that is not UTF-8 with a bare 400; it is bad input
            # like any other, so it gets the 422 every other bad body gets.
            return JSONResponse(
                {
                    "error": "invalid_input",
                    "detail": "body: the request body is not valid UTF-8 JSON",
                    "field": "body",
                },
                status_code=422,
            )
        if error.status_code == 400:
            # FastAPI and Starlette raise a bare 400 only for a body they cannot parse
            # (broken multipart or form data): bad input too, so the same 422.
            return JSONResponse(
                {"error": "invalid_input", "detail": f"body: {error.detail}", "field": "body"},
                status_code=422,
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": code, "detail": str(error.detail)}, status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        # A bug, not a client's mistake: the body keeps the error format and names nothing
        # internal; the traceback goes to the server log (Starlette logs it after this).
        return JSONResponse(
            {"error": "internal_error", "detail": "an unexpected error occurred; it was logged"},
            status_code=500,
        )

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, error: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(error).__name__)
        return JSONResponse(
            {"error": "unavailable", "detail": "the database is unavailable; try again shortly"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
