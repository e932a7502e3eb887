"""Listing jobs, cancelling them and Idempotency-Key on POST /v1/jobs, through the real app
on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from core.db import read_scope, session_scope, utcnow
from pipeline import service
from pipeline.models import Job, JobRequestKey
from review.models import ReviewTask
from tests.api.test_jobs_api import SMALL, job_count
from tests.api.test_reviews import new_tenant
from tests.conftest import TenantKeys, make_tenant, queued_messages
from tests.pipeline.conftest import run_all_stages


def submit(client: TestClient, tenant: TenantKeys, role: str = "requester", **fields: Any) -> str:
    body = {"prompt": "a lighthouse", **SMALL, **fields}
    response = client.post("/v1/jobs", json=body, headers=tenant.headers(role))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def listed(client: TestClient, tenant: TenantKeys, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/jobs", params=params, headers=tenant.headers("reviewer"))
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def test_jobs_are_listed_newest_first_filtered_and_paged(
    client: TestClient, tenant: TenantKeys
) -> None:
    first = submit(client, tenant, project="spring")
    second = submit(client, tenant, project="autumn", variant="dev")
    third = submit(client, tenant, "admin", project="spring")
    run_all_stages(first)
    other = make_tenant("globex")
    submit(client, other)

    everything = listed(client, tenant)
    assert ids(everything) == [third, second, first]
    assert (everything["total"], everything["offset"], everything["limit"]) == (3, 0, 50)
    assert everything["items"][2]["state"] == "released"
    assert everything["items"][2]["images"][0]["cost_usd"] is not None

    assert ids(listed(client, tenant, state="released")) == [first]
    assert ids(listed(client, tenant, state="queued")) == [third, second]
    assert ids(listed(client, tenant, variant="dev")) == [second]
    assert ids(listed(client, tenant, project="spring")) == [third, first]
    by_admin = everything["items"][0]["created_by"]
    assert by_admin == f"api_key:{tenant.keys['admin'].split('_')[1]}"
    assert ids(listed(client, tenant, created_by=by_admin)) == [third]

    page = listed(client, tenant, offset=1, limit=1)
    assert (ids(page), page["total"], page["offset"], page["limit"]) == ([second], 3, 1, 1)
    assert ids(listed(client, tenant, offset=3)) == []

    with session_scope() as session:
        session.execute(
            update(Job).where(Job.id == first).values(created_at=utcnow() - timedelta(days=2))
        )
    since = (utcnow() - timedelta(days=1)).isoformat()
    assert ids(listed(client, tenant, created_from=since)) == [third, second]
    # A time without a zone is UTC.
    naive = (utcnow() - timedelta(days=1)).replace(tzinfo=None).isoformat()
    assert ids(listed(client, tenant, created_to=naive)) == [first]


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"state": "done"}, "state", "'cancelled'"),
        ({"variant": "turbo"}, "variant", "'schnell'"),
        ({"limit": 0}, "limit", "greater than or equal to 1"),
        ({"offset": -1}, "offset", "greater than or equal to 0"),
        ({"created_from": "yesterday"}, "created_from", "datetime"),
        (
            {"created_from": "2026-02-01T00:00:00Z", "created_to": "2026-01-01T00:00:00Z"},
            "created_from",
            "before created_to",
        ),
    ],
)
def test_bad_list_filters_name_the_parameter(
    client: TestClient, tenant: TenantKeys, params: dict[str, Any], field: str, says: str
) -> None:
    response = client.get("/v1/jobs", params=params, headers=tenant.headers())
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert says in response.json()["detail"]


def test_a_queued_job_is_cancelled_and_then_refused_with_its_state(
    client: TestClient, tenant: TenantKeys
) -> None:
    job_id = submit(client, tenant)
    refused = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers("reviewer"))
    assert refused.status_code == 403
    hidden = client.post(f"/v1/jobs/{job_id}/cancel", headers=make_tenant("globex").headers())
    assert hidden.status_code == 404

    response = client.post(
        f"/v1/jobs/{job_id}/cancel", json={"reason": "wrong brief"}, headers=tenant.headers()
    )
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert "wrong brief" in response.json()["error"]
    # The worker picks the queued message up later and does nothing.
    assert run_all_stages(job_id) == ["prompt_check"]
    assert client.get(f"/v1/jobs/{job_id}", headers=tenant.headers()).json()["state"] == (
        "cancelled"
    )

    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers())
    assert again.status_code == 409
    assert again.json()["error"] == "job_final"
    assert again.json()["state"] == "cancelled"
    assert "is cancelled" in again.json()["detail"]

    released = submit(client, tenant)
    run_all_stages(released)
    late = client.post(f"/v1/jobs/{released}/cancel", headers=tenant.headers())
    assert late.status_code == 409
    assert (late.json()["error"], late.json()["state"]) == ("job_final", "released")


def test_cancelling_a_job_in_review_withdraws_its_task(client: TestClient, settings: Any) -> None:
    tenant = new_tenant("approvals", require_human_approval=True)
    job_id = submit(client, tenant)
    run_all_stages(job_id)
    tasks = client.get("/v1/reviews", headers=tenant.headers("reviewer")).json()
    (task,) = tasks["items"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers()).status_code == 200
    with read_scope() as session:
        stored = session.get_one(ReviewTask, task["id"])
        assert (stored.state, stored.outcome) == ("decided", "withdrawn")
    claim = client.post(f"/v1/reviews/{task['id']}/claim", headers=tenant.headers("reviewer"))
    assert claim.status_code == 409
    open_tasks = client.get("/v1/reviews?state=open", headers=tenant.headers("reviewer")).json()
    assert open_tasks["items"] == []


def test_reviews_are_paged(client: TestClient, settings: Any) -> None:
    tenant = new_tenant("approvals", require_human_approval=True)
    for seed in (1, 2, 3):
        run_all_stages(submit(client, tenant, seed=seed))
    headers = tenant.headers("reviewer")
    whole = client.get("/v1/reviews", headers=headers).json()
    assert (whole["total"], whole["offset"], whole["limit"], len(whole["items"])) == (3, 0, 100, 3)
    page = client.get("/v1/reviews", params={"offset": 1, "limit": 1}, headers=headers).json()
    assert (page["total"], page["offset"], page["limit"]) == (3, 1, 1)
    assert [t["id"] for t in page["items"]] == [whole["items"][1]["id"]]


def test_the_same_idempotency_key_and_body_give_the_same_job(
    client: TestClient, tenant: TenantKeys, broker_file: Path
) -> None:
    body = {"prompt": "a lighthouse", **SMALL}
    headers = {**tenant.headers(), "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == 201, first.text
    # The same request, its fields in another order and a default spelled out.
    again = client.post(
        "/v1/jobs", json={**dict(reversed(body.items())), "variant": "schnell"}, headers=headers
    )
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert job_count() == 1
    assert queued_messages(broker_file) == 1
    with read_scope() as session:
        assert len(service._reserved(session, tenant.id)) == 1

    changed = client.post("/v1/jobs", json={**body, "prompt": "a harbour"}, headers=headers)
    assert changed.status_code == 409
    assert changed.json()["error"] == "idempotency_key_reused"
    assert changed.json()["field"] == "Idempotency-Key"
    assert "Idempotency-Key" in changed.json()["detail"]
    assert job_count() == 1

    # Keys are per tenant.
    other = make_tenant("globex")
    theirs = client.post(
        "/v1/jobs", json=body, headers={**other.headers(), "Idempotency-Key": "order-42"}
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]
    assert job_count() == 2


def test_a_key_is_remembered_for_24_hours(client: TestClient, tenant: TenantKeys) -> None:
    body = {"prompt": "a lighthouse", **SMALL}
    headers = {**tenant.headers(), "Idempotency-Key": "daily"}
    first = client.post("/v1/jobs", json=body, headers=headers).json()["id"]
    with session_scope() as session:
        session.execute(
            update(JobRequestKey).values(created_at=utcnow() - timedelta(hours=23, minutes=59))
        )
    assert client.post("/v1/jobs", json=body, headers=headers).json()["id"] == first
    with session_scope() as session:
        session.execute(update(JobRequestKey).values(created_at=utcnow() - timedelta(hours=25)))
    later = client.post("/v1/jobs", json=body, headers=headers)
    assert later.status_code == 201
    assert later.json()["id"] != first


@pytest.mark.parametrize("key", ["", "x" * 256, "two words", "tab\there"])
def test_a_malformed_idempotency_key_is_refused(
    client: TestClient, tenant: TenantKeys, key: str
) -> None:
    headers = {**tenant.headers(), "Idempotency-Key": key}
    response = client.post("/v1/jobs", json={"prompt": "a lighthouse", **SMALL}, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "Idempotency-Key"
    assert job_count() == 0


def test_two_requests_at_once_with_one_key_make_one_job(
    client: TestClient, tenant: TenantKeys, broker_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_create = service.create_job

    def slow_create(**kwargs: Any) -> Job:
        # Hold the first transaction open, so the second request arrives while it is.
        time.sleep(0.5)
        return real_create(**kwargs)

    monkeypatch.setattr(service, "create_job", slow_create)
    barrier = threading.Barrier(2)
    answers: list[tuple[int, str]] = []
    headers = {**tenant.headers(), "Idempotency-Key": "at-once"}

    def post() -> None:
        with TestClient(create_app()) as own:
            barrier.wait()
            response = own.post(
                "/v1/jobs", json={"prompt": "a lighthouse", **SMALL}, headers=headers
            )
            answers.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=post) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(status for status, _ in answers) == [200, 201], answers
    assert len({job_id for _, job_id in answers}) == 1
    assert job_count() == 1
    assert queued_messages(broker_file) == 1
