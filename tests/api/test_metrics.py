"""/metrics after jobs ran through the real stages in this process, on SQLite and PostgreSQL:
every figure parsed with prometheus_client's own parser and checked against the database."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api import auth
from api.app import create_app
from api.models import ROLES
from core.db import read_scope, session_scope, utcnow
from core.settings import Settings
from generation.models import CostEntry
from pipeline.models import Job, JobStage
from review.models import ReviewTask
from tests.conftest import TenantKeys, reset_caches
from tests.pipeline.conftest import run_all_stages


def submit(client: TestClient, tenant: TenantKeys) -> str:
    response = client.post(
        "/v1/jobs",
        headers=tenant.headers("requester"),
        json={"prompt": "a lighthouse in a storm", "width": 256, "height": 256, "seed": 7},
    )
    assert response.status_code == 201, response.text
    job_id = str(response.json()["id"])
    run_all_stages(job_id)
    return job_id


def approvals_tenant() -> TenantKeys:
    with session_scope() as session:
        tenant = auth.create_tenant(
            session=session, name="approvals", actor="test", require_human_approval=True
        )
        keys = {
            r: auth.create_key(session=session, tenant=tenant, role=r, actor="test") for r in ROLES
        }
        return TenantKeys(tenant.id, "approvals", keys)


def scrape(
    client: TestClient, **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_match_the_database(
    client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    released = submit(client, tenant)
    in_review = submit(client, approvals_tenant())
    started = utcnow()
    samples = scrape(client)

    with read_scope() as session:
        states = {j.id: j.state for j in session.scalars(select(Job))}
        runs = list(session.scalars(select(JobStage).where(JobStage.finished_at.is_not(None))))
        tasks = list(session.scalars(select(ReviewTask)))
        costs = list(session.scalars(select(CostEntry)))
    assert (states[released], states[in_review]) == ("released", "in_review")

    assert value(samples, "clearance_jobs", state="released") == 1
    assert value(samples, "clearance_jobs", state="in_review") == 1
    assert value(samples, "clearance_jobs", state="failed") == 0

    for stage in {r.stage for r in runs}:
        mine = [r for r in runs if r.stage == stage]
        durations = [(r.finished_at - r.started_at).total_seconds() for r in mine]  # type: ignore[operator]
        name = "clearance_stage_duration_seconds"
        assert value(samples, f"{name}_count", stage=stage) == len(mine)
        assert value(samples, f"{name}_bucket", stage=stage, le="+Inf") == len(mine)
        assert value(samples, f"{name}_sum", stage=stage) == pytest.approx(sum(durations), abs=0.01)
        within = sum(d <= 600 for d in durations)
        assert value(samples, f"{name}_bucket", stage=stage, le="600.0") == within
    assert {"prompt_check", "generate", "image_check", "route", "release"} <= {
        r.stage for r in runs
    }

    (task,) = tasks
    assert value(samples, "clearance_review_tasks", state="open") == 1
    assert value(samples, "clearance_review_tasks", state="escalated") == 0
    assert value(samples, "clearance_review_backlog") == 1
    assert value(samples, "clearance_review_overdue") == 0
    oldest = value(samples, "clearance_review_oldest_open_age_seconds")
    assert 0 < oldest <= (utcnow() - task.created_at).total_seconds()
    assert oldest >= (started - task.created_at).total_seconds()

    assert costs, "local generation writes the cost ledger"
    for variant in {c.variant for c in costs}:
        gpu = sum(c.gpu_seconds or 0.0 for c in costs if c.variant == variant)
        usd = sum(float(c.amount_usd) for c in costs if c.variant == variant and c.kind == "local")
        assert value(samples, "clearance_gpu_seconds_total", variant=variant) == pytest.approx(gpu)
        assert value(
            samples, "clearance_generation_cost_usd_total", kind="local", variant=variant
        ) == pytest.approx(usd)
    assert value(samples, "clearance_webhook_deliveries", state="pending") == 0


def test_a_metrics_token_is_required_once_set(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEARANCE_METRICS__TOKEN", "s3cret-metrics-token")
    reset_caches()
    with TestClient(create_app()) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["field"]) == (401, "Authorization")
        samples = scrape(client, Authorization="Bearer s3cret-metrics-token")
        assert value(samples, "clearance_review_backlog") == 0
