"""Cancelling a job while its stages run, on SQLite and PostgreSQL: the stage that is working
when the job is cancelled drops its results, later stages do not start, nothing is charged
and the budget reservation ends."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from audit.models import AuditEvent
from core.db import read_scope, session_scope
from generation import costs
from generation import service as generation
from generation.models import CostEntry
from pipeline import service, stages
from pipeline.errors import JobFinalError
from pipeline.models import CANCELLED, FINAL_STATES, SETTLED_STATES, Job
from tests.conftest import TenantKeys
from tests.pipeline.conftest import NewJobFactory, run_all_stages


def cancel(tenant: TenantKeys, job_id: str) -> None:
    with session_scope() as session:
        service.cancel_job(
            session=session, tenant_id=tenant.id, job_id=job_id, actor="test", reason="changed"
        )


def test_cancelled_is_final_and_settled() -> None:
    assert CANCELLED in FINAL_STATES
    assert CANCELLED in SETTLED_STATES


def test_a_stage_running_when_the_job_is_cancelled_drops_its_results(
    new_job: NewJobFactory, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = new_job()
    assert stages.prompt_check(job_id, stages.default_context())
    real_generate = generation.generate

    def cancelled_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The requester cancels while the model is working.
        cancel(tenant, job_id)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", cancelled_meanwhile)
    assert stages.generate(job_id, stages.default_context()) is False
    monkeypatch.undo()
    # Later stages (a redelivered chain) find the job cancelled and do nothing.
    assert run_all_stages(job_id) == ["prompt_check"]
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        assert job.state == CANCELLED
        assert job.images == []
        assert job.error == "cancelled by test: changed"
        charged = session.scalar(select(func.count()).where(CostEntry.job_id == job_id))
        assert charged == 0
        types = session.scalars(
            select(AuditEvent.type)
            .where(AuditEvent.subject == f"job:{job_id}")
            .order_by(AuditEvent.seq)
        ).all()
    assert "images.generated" not in types
    assert types[-1] == "job.cancelled"


def test_cancelling_frees_the_budget_reservation(
    new_job: NewJobFactory, tenant: TenantKeys
) -> None:
    job_id = new_job()
    with read_scope() as session:
        estimate = session.get_one(Job, job_id).estimated_cost_usd
        held = service._reserved(session, tenant.id)
    assert estimate > 0
    assert held == [("", estimate)]
    cancel(tenant, job_id)
    with read_scope() as session:
        assert service._reserved(session, tenant.id) == []
        event = session.scalars(select(AuditEvent).where(AuditEvent.type == "job.cancelled")).one()
    payload = json.loads(event.payload)
    assert Decimal(payload["released_reservation_usd"]) == estimate
    assert payload["from"] == "queued"
    # A budget that only fits one job takes a new one once the first is cancelled.
    with session_scope() as session:
        costs.set_budget(
            session=session, tenant_id=tenant.id, project="", monthly_usd=estimate, actor="test"
        )
    new_job()


def test_a_final_job_cannot_be_cancelled(new_job: NewJobFactory, tenant: TenantKeys) -> None:
    job_id = new_job()
    run_all_stages(job_id)
    with pytest.raises(JobFinalError) as raised:
        cancel(tenant, job_id)
    assert raised.value.extra["state"] == "released"
    assert "released" in raised.value.detail
