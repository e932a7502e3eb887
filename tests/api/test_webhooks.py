"""Webhooks through the API, on SQLite and PostgreSQL, delivered to a real HTTP server this test
starts: signed deliveries the receiver verifies, retries with backoff, replay, the delivery log,
tenant isolation and bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from core import celery_app
from core.db import read_scope, session_scope, utcnow
from core.settings import Settings, WebhookSettings
from pipeline import stages, tasks, webhooks
from pipeline.models import BLOCKED, IN_REVIEW, Job, WebhookDelivery
from tests.api.webhook_receiver import Receiver
from tests.conftest import TenantKeys, make_tenant
from tests.pipeline.conftest import run_all_stages


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def subscribe(
    client: TestClient, tenant: TenantKeys, receiver: Receiver, events: list[str]
) -> dict[str, Any]:
    response = client.post(
        "/v1/webhooks",
        headers=tenant.headers("admin"),
        json={"url": receiver.url, "events": events, "description": "erp"},
    )
    assert response.status_code == 201, response.text
    hook: dict[str, Any] = response.json()
    receiver.secret = hook["secret"]
    return hook


def submit(client: TestClient, tenant: TenantKeys) -> str:
    response = client.post(
        "/v1/jobs",
        headers=tenant.headers("requester"),
        json={"prompt": "a lighthouse in a storm", "width": 256, "height": 256, "seed": 7},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def change_state(job_id: str, state: str) -> None:
    with session_scope() as session:
        job = session.get_one(Job, job_id, with_for_update=True)
        stages.set_state(session, job, state, stage="test")


def deliveries(client: TestClient, tenant: TenantKeys, hook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/webhooks/{hook_id}/deliveries", headers=tenant.headers("admin"))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def test_a_released_job_is_delivered_signed_after_the_commit(
    client: TestClient, tenant: TenantKeys, receiver: Receiver, settings: Settings
) -> None:
    hook = subscribe(client, tenant, receiver, ["job.released", "job.blocked"])
    assert hook["secret"].startswith("whsec_")
    # The secret is shown once, at creation.
    (listed,) = client.get("/v1/webhooks", headers=tenant.headers("admin")).json()
    assert (listed["id"], listed["secret"]) == (hook["id"], None)
    job_id = submit(client, tenant)
    run_all_stages(job_id)
    with read_scope() as session:
        assert session.get_one(Job, job_id).state == "released"
    # The outbox holds it; nothing is sent from the stage itself.
    assert receiver.received == []
    (pending,) = deliveries(client, tenant, hook["id"])
    assert (pending["state"], pending["event"], pending["attempts"]) == (
        "pending",
        "job.released",
        0,
    )

    # What Celery beat runs (the task is registered and scheduled).
    beat = celery_app.app.conf.beat_schedule["webhooks-dispatch"]
    assert beat["task"] == tasks.dispatch_webhooks.name
    assert tasks.dispatch_webhooks() == 1
    (got,) = receiver.received
    assert got.signature_ok
    assert webhooks.verify(hook["secret"], got.headers["clearance-signature"], got.body)
    assert not webhooks.verify(
        "whsec_wrong" + "x" * 20, got.headers["clearance-signature"], got.body
    )
    assert got.headers["clearance-event"] == "job.released"
    assert got.headers["clearance-event-id"] == got.payload["id"]
    assert got.payload["type"] == "job.released"
    data = got.payload["data"]
    assert (data["job_id"], data["tenant_id"], data["state"]) == (job_id, tenant.id, "released")

    (done,) = deliveries(client, tenant, hook["id"])
    assert (done["state"], done["attempts"], done["last_status_code"]) == ("delivered", 1, 200)
    assert done["next_attempt_at"] is None
    assert [a["status_code"] for a in done["attempt_log"]] == [200]
    # Delivered once: nothing is due any more.
    assert webhooks.dispatch_due(settings) == 0
    assert len(receiver.received) == 1


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(
    client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    receiver = Receiver(statuses=[500, 503])
    try:
        hook = subscribe(client, tenant, receiver, ["job.blocked"])
        job_id = submit(client, tenant)
        change_state(job_id, BLOCKED)
        # A state that is no subscribed event adds nothing.
        change_state(job_id, IN_REVIEW)

        before = utcnow()
        assert webhooks.dispatch_due(settings) == 1
        (first,) = deliveries(client, tenant, hook["id"])
        assert (first["state"], first["attempts"], first["last_status_code"]) == (
            "pending",
            1,
            500,
        )
        assert "HTTP 500" in first["last_error"]
        base = settings.webhooks.backoff_base_s
        assert first["next_attempt_at"] is not None
        # Not due yet: the backoff holds it back.
        assert webhooks.dispatch_due(settings) == 0

        later = before + timedelta(seconds=base + 5)
        assert webhooks.dispatch_due(settings, now=later) == 1  # 503
        assert webhooks.dispatch_due(settings, now=later) == 0  # backing off twice as long
        assert webhooks.dispatch_due(settings, now=later + timedelta(seconds=2 * base + 5)) == 1

        (done,) = deliveries(client, tenant, hook["id"])
        assert (done["state"], done["attempts"], done["last_status_code"]) == ("delivered", 3, 200)
        assert [a["status_code"] for a in done["attempt_log"]] == [500, 503, 200]
        assert len({r.headers["clearance-event-id"] for r in receiver.received}) == 1
        assert [r.headers["clearance-attempt"] for r in receiver.received] == ["1", "2", "3"]
        assert all(r.signature_ok for r in receiver.received)
    finally:
        receiver.close()


def test_backoff_doubles_up_to_its_cap() -> None:
    config = WebhookSettings(backoff_base_s=10, backoff_cap_s=60)
    waits = [webhooks.backoff(n, config).total_seconds() for n in range(1, 6)]
    assert waits == [10, 20, 40, 60, 60]


def test_a_failed_delivery_is_replayed_with_the_same_event_id(
    client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    receiver = Receiver(statuses=[500, 500])
    once = settings.model_copy(
        update={"webhooks": settings.webhooks.model_copy(update={"max_attempts": 2})}
    )
    try:
        hook = subscribe(client, tenant, receiver, ["job.blocked"])
        change_state(submit(client, tenant), BLOCKED)
        assert webhooks.dispatch_due(once) == 1
        assert webhooks.dispatch_due(once, now=utcnow() + timedelta(hours=1)) == 1
        (failed,) = deliveries(client, tenant, hook["id"])
        assert (failed["state"], failed["attempts"], failed["next_attempt_at"]) == (
            "failed",
            2,
            None,
        )
        assert webhooks.dispatch_due(once, now=utcnow() + timedelta(days=1)) == 0

        admin = tenant.headers("admin")
        response = client.post(f"/v1/webhooks/deliveries/{failed['id']}/replay", headers=admin)
        assert response.status_code == 202, response.text
        copy = response.json()
        assert (copy["state"], copy["replay_of"], copy["event_id"]) == (
            "pending",
            failed["id"],
            failed["event_id"],
        )
        # A pending delivery is not replayed: it would be sent twice.
        response = client.post(f"/v1/webhooks/deliveries/{copy['id']}/replay", headers=admin)
        assert (response.status_code, response.json()["error"]) == (409, "webhook_delivery_pending")

        assert webhooks.dispatch_due(once) == 1
        newest, original = deliveries(client, tenant, hook["id"])
        assert (newest["id"], newest["state"], newest["attempts"]) == (copy["id"], "delivered", 1)
        assert original["state"] == "failed"
        assert receiver.received[0].body == receiver.received[-1].body
        assert receiver.received[-1].signature_ok
    finally:
        receiver.close()


def test_webhooks_belong_to_one_tenant(
    client: TestClient, tenant: TenantKeys, receiver: Receiver, settings: Settings
) -> None:
    other = make_tenant("globex")
    hook = subscribe(client, tenant, receiver, ["job.blocked"])
    change_state(submit(client, other), BLOCKED)
    # The other tenant's job is not this tenant's event.
    with read_scope() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []
    change_state(submit(client, tenant), BLOCKED)
    assert webhooks.dispatch_due(settings) == 1
    (delivery,) = deliveries(client, tenant, hook["id"])

    theirs = other.headers("admin")
    assert client.get("/v1/webhooks", headers=theirs).json() == []
    for method, path in (
        ("GET", f"/v1/webhooks/{hook['id']}/deliveries"),
        ("DELETE", f"/v1/webhooks/{hook['id']}"),
        ("POST", f"/v1/webhooks/deliveries/{delivery['id']}/replay"),
    ):
        response = client.request(method, path, headers=theirs)
        assert response.status_code == 404, (method, path, response.text)
    # Admins only, in the subscribing tenant too.
    for role in ("requester", "reviewer", "legal"):
        assert client.get("/v1/webhooks", headers=tenant.headers(role)).status_code == 403
    assert len(client.get("/v1/webhooks", headers=tenant.headers("admin")).json()) == 1

    response = client.delete(f"/v1/webhooks/{hook['id']}", headers=tenant.headers("admin"))
    assert response.status_code == 204
    assert client.get("/v1/webhooks", headers=tenant.headers("admin")).json() == []
    with read_scope() as session:
        assert session.scalars(select(WebhookDelivery)).all() == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/hook", "events": ["job.released"]}, "url"),
        ({"url": "example.com/hook", "events": ["job.released"]}, "url"),
        ({"url": "https://user:pw@example.com/", "events": ["job.released"]}, "url"),
        ({"url": "https://example.com/hook", "events": ["job.done"]}, "events"),
        ({"url": "https://example.com/hook", "events": []}, "events"),
        (
            {"url": "https://example.com/hook", "events": ["job.released"], "secret": "short"},
            "secret",
        ),
        ({"events": ["job.released"]}, "url"),
        ({"url": "https://example.com/hook", "events": ["job.released"], "extra": 1}, "extra"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    client: TestClient, tenant: TenantKeys, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/webhooks", headers=tenant.headers("admin"), json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert (error["error"], error["field"]) == ("invalid_input", field)
    if field == "events":
        assert "job.released" in error["detail"]
    assert client.get("/v1/webhooks", headers=tenant.headers("admin")).json() == []


def test_a_delivery_claimed_by_a_dispatcher_that_died_comes_due_again(
    client: TestClient, tenant: TenantKeys, receiver: Receiver, settings: Settings
) -> None:
    subscribe(client, tenant, receiver, ["job.blocked"])
    change_state(submit(client, tenant), BLOCKED)
    with session_scope() as session:
        claimed = webhooks.claim_next(session=session, config=settings.webhooks, now=utcnow())
    assert claimed is not None
    # Leased: a second dispatcher does not take it...
    assert webhooks.dispatch_due(settings) == 0
    # ...until the lease runs out without the attempt being recorded.
    lease = settings.webhooks.request_timeout_s + webhooks.LEASE_MARGIN_S
    assert webhooks.dispatch_due(settings, now=utcnow() + timedelta(seconds=lease + 1)) == 1
    (got,) = receiver.received
    assert got.signature_ok
