"""The HTTP API in-process (real app, real database on SQLite and PostgreSQL, real
embedded broker file); stages run in-process where a test needs a finished job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from core.db import read_scope
from core.settings import Settings
from pipeline.models import Job
from tests.conftest import TenantKeys, make_tenant, queued_messages
from tests.pipeline.conftest import run_all_stages

SMALL = {"width": 256, "height": 256, "seed": 1}


def job_count() -> int:
    with read_scope() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_health(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer clr_000000000000_" + "x" * 43]
)
def test_requests_without_a_valid_key_are_refused(
    client: TestClient, tenant: TenantKeys, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/v1/jobs", json={"prompt": "a cat"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert job_count() == 0


def test_a_reviewer_cannot_submit_jobs(client: TestClient, tenant: TenantKeys) -> None:
    response = client.post("/v1/jobs", json={"prompt": "a cat"}, headers=tenant.headers("reviewer"))
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "'requester'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "a cat", "variant": "turbo"}, "variant", "'schnell'"),
        ({"prompt": "a cat", "use": "personal"}, "use", "'commercial'"),
        ({"prompt": "a cat", "n_images": 9}, "n_images", "less than or equal to 8"),
        ({"prompt": "a cat", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "a cat", "width": 1000}, "width", "multiple of 16"),
        ({"prompt": "a cat", "height": 2048}, "height", "from 256 to 1024"),
        ({"prompt": "a cat", "colour": "red"}, "colour", "Extra inputs"),
        ({"variant": "schnell"}, "prompt", "Field required"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    client: TestClient,
    tenant: TenantKeys,
    broker_file: Path,
    body: dict[str, Any],
    field: str,
    says: str,
) -> None:
    response = client.post("/v1/jobs", json=body, headers=tenant.headers())
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] in {"invalid_input", "invalid_generation_request"}
    assert error["field"] == field
    assert says in error["detail"]
    assert job_count() == 0
    assert queued_messages(broker_file) == 0


def test_an_api_only_variant_without_a_configured_api_is_refused(
    client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    response = client.post(
        "/v1/jobs", json={"prompt": "a cat", "variant": "pro", **SMALL}, headers=tenant.headers()
    )
    assert response.status_code == 503
    assert response.json()["error"] == "model_unavailable"
    assert "Black Forest Labs API" in response.json()["detail"]
    assert job_count() == 0


def test_a_job_is_stored_and_queued(
    client: TestClient, tenant: TenantKeys, broker_file: Path
) -> None:
    response = client.post(
        "/v1/jobs", json={"prompt": "a lighthouse", **SMALL}, headers=tenant.headers()
    )
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["state"] == "queued"
    assert (job["variant"], job["use"], job["seed"], job["n_images"]) == (
        "schnell",
        "commercial",
        1,
        1,
    )
    assert queued_messages(broker_file) == 1
    fetched = client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers("reviewer"))
    assert fetched.status_code == 200
    assert fetched.json()["id"] == job["id"]


def test_a_seed_is_chosen_and_recorded_when_none_is_given(
    client: TestClient, tenant: TenantKeys
) -> None:
    response = client.post("/v1/jobs", json={"prompt": "a lighthouse"}, headers=tenant.headers())
    assert response.status_code == 201
    assert isinstance(response.json()["seed"], int)


def test_images_are_served_only_once_released_and_only_to_their_tenant(
    client: TestClient, tenant: TenantKeys
) -> None:
    created = client.post(
        "/v1/jobs", json={"prompt": "a lighthouse", **SMALL}, headers=tenant.headers()
    ).json()
    from pipeline import stages

    for stage in stages.STAGES[:3]:
        stages.STAGE_FUNCTIONS[stage](created["id"], stages.default_context())
    job = client.get(f"/v1/jobs/{created['id']}", headers=tenant.headers()).json()
    assert job["state"] == "checking_images"
    image = job["images"][0]
    assert image["url"] is None
    refused = client.get(f"/v1/images/{image['id']}", headers=tenant.headers())
    assert refused.status_code == 409
    assert refused.json()["error"] == "image_not_released"

    run_all_stages(created["id"])
    job = client.get(f"/v1/jobs/{created['id']}", headers=tenant.headers()).json()
    assert job["state"] == "released"
    assert "offline fallback" in job["model"]
    assert [s["stage"] for s in job["stages"]] == [
        "prompt_check",
        "generate",
        "image_check",
        "route",
        "release",
    ]
    assert all(s["seconds"] is not None for s in job["stages"])
    assert {d["stage"] for d in job["decisions"]} == {"prompt_check", "image_check", "route"}
    url = job["images"][0]["url"]
    served = client.get(url, headers=tenant.headers())
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    import hashlib

    # The signed copy (C2PA manifest and XMP), not the generated bytes.
    assert hashlib.sha256(served.content).hexdigest() == job["images"][0]["released_sha256"]
    assert job["images"][0]["released_sha256"] != job["images"][0]["sha256"]

    other = make_tenant("globex")
    assert client.get(url, headers=other.headers()).status_code == 404
    hidden = client.get(f"/v1/jobs/{created['id']}", headers=other.headers())
    assert hidden.status_code == 404
    assert hidden.json()["error"] == "job_not_found"


def test_unknown_routes_answer_in_the_error_format(client: TestClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Not Found"}
