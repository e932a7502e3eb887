"""The OpenAPI schema documents every route of the app, and every error, documented or not,
answers in one format: `{"error": code, "detail": ...}`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from core.settings import Settings
from tests.conftest import TenantKeys

# FastAPI's own pages; everything else must be in the schema.
DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
ERROR_REF = "#/components/schemas/ErrorOut"
# A health probe answers 503 with its own body (what is down), not as an error.
HEALTH_BODIES = {("/healthz", "get", "503")}


def routes_of(app: FastAPI) -> Iterator[tuple[str, set[str], bool]]:
    """(path, methods, include_in_schema) of every route, routers included: this FastAPI keeps
    an included router as one entry of `app.routes` that holds its routes."""
    for route in app.routes:
        contexts = getattr(route, "effective_route_contexts", None)
        found = list(contexts()) if contexts is not None else [route]
        for r in found:
            path, shown = getattr(r, "path", ""), getattr(r, "include_in_schema", True)
            yield path, set(getattr(r, "methods", None) or ()), shown


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return create_app()


@pytest.fixture(scope="module")
def schema(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def test_the_schema_documents_every_route(app: FastAPI, schema: dict[str, Any]) -> None:
    routes = {
        (path, method.lower())
        for path, methods, _ in routes_of(app)
        if path not in DOCS_ROUTES
        for method in methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert len(routes) > 30
    assert routes - documented == set(), "routes missing from the OpenAPI schema"
    assert documented - routes == set(), "documented operations without a route"
    hidden = sorted(p for p, _, shown in routes_of(app) if not shown and p not in DOCS_ROUTES)
    assert hidden == []


def test_every_operation_documents_its_errors_with_the_error_model(
    schema: dict[str, Any],
) -> None:
    error = schema["components"]["schemas"]["ErrorOut"]
    assert set(error["required"]) == {"error", "detail"}
    problems = []
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
            for status, response in errors.items():
                if (path, method, status) in HEALTH_BODIES:
                    continue
                ref = response.get("content", {}).get("application/json", {}).get("schema", {})
                if ref.get("$ref") != ERROR_REF:
                    problems.append(f"{method.upper()} {path} {status}: {ref or response}")
            needed = {"500"}
            if op.get("parameters") or op.get("requestBody"):
                needed.add("422")  # FastAPI's own default would be a different body
            if path.startswith("/v1/"):
                needed |= {"401", "403"}
            if path == "/healthz":
                needed = {"503"}
            missing = needed - set(errors)
            if missing:
                problems.append(f"{method.upper()} {path} does not document {sorted(missing)}")
    assert problems == []


def error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["error"], str)
    assert isinstance(body["detail"], str)
    assert body["error"]
    assert body["detail"]
    return body


def test_errors_are_always_in_the_error_format(client: TestClient, tenant: TenantKeys) -> None:
    assert error_body(client.get("/v1/nothing-here"), 404)["error"] == "not_found"
    assert error_body(client.delete("/v1/jobs"), 405)["error"] == "method_not_allowed"
    assert error_body(client.get("/v1/jobs"), 401)["error"] == "unauthenticated"
    bad = error_body(client.post("/v1/jobs", json={"n_images": 0}, headers=tenant.headers()), 422)
    assert bad["error"] == "invalid_input"
    assert (
        error_body(client.post("/v1/jobs", content=b"{not json", headers=tenant.headers()), 422)[
            "error"
        ]
        == "invalid_input"
    )
    asset = {"id": "acme-logo", "name": "Acme logo", "kind": "logo"}
    forbidden = client.post("/v1/assets", json=asset, headers=tenant.headers("requester"))
    assert error_body(forbidden, 403)["error"] == "forbidden"
    missing = client.get("/v1/jobs/nope", headers=tenant.headers())
    assert error_body(missing, 404)["error"] == "job_not_found"


def test_an_unexpected_failure_is_a_500_in_the_error_format(settings: Settings) -> None:
    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        body = error_body(client.get("/boom"), 500)
    assert body["error"] == "internal_error"
    assert "secret" not in body["detail"]
