"""Prometheus `/metrics`, computed from the database at scrape time.

Why from the database and not from in-process counters: stages run in Celery worker processes
(prefork children that recycle), possibly on many machines, while /metrics is served by any of
the API processes. An in-process histogram would show only what the scraped process happened
to see and lose it on every recycle. The `job_stages` rows hold when every stage started and
finished, whichever process ran it, so every API process reports the same, complete figures.
The cost is a grouped scan per scrape (one per table, aggregated in SQL); scrape every 15 s or
more. Figures are deployment-wide with no tenant label: tenants' volumes are not exposed.

Access: `CLEARANCE_METRICS__TOKEN` set → `Authorization: Bearer <token>` required. API keys are
per tenant, and these figures cover every tenant, so no tenant's admin key opens them.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from api.deps import SettingsDep
from api.errors import ERRORS
from core.db import read_scope, utcnow
from core.errors import AuthenticationError
from generation.models import CostEntry
from pipeline.models import DELIVERY_STATES, JOB_STATES, Job, JobStage, WebhookDelivery
from review.models import DECIDED, TASK_STATES, ReviewTask

router = APIRouter()

# Seconds; the tiny offline model finishes a stage in well under a second, FLUX.1-dev on a GPU
# takes tens of seconds, and a stuck stage hits the 600 s soft limit.
STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def _seconds_between(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    if session.get_bind().dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return func.extract("epoch", end - start)  # type: ignore[return-value]


class DatabaseCollector(Collector):
    """Reads every figure in one read-only transaction, when collected."""

    def collect(self) -> Iterator[Metric]:
        with read_scope() as session:
            yield from self._jobs(session)
            yield from self._stages(session)
            yield from self._reviews(session)
            yield from self._costs(session)
            yield from self._webhooks(session)

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts = _counts(session, select(Job.state, func.count()).group_by(Job.state))
        jobs = GaugeMetricFamily("clearance_jobs", "Jobs by state.", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs

    def _stages(self, session: Session) -> Iterator[Metric]:
        duration = _seconds_between(session, JobStage.started_at, JobStage.finished_at).label("d")
        finished = (
            select(JobStage.stage, duration).where(JobStage.finished_at.is_not(None)).subquery()
        )
        columns = [func.sum(case((finished.c.d <= bound, 1), else_=0)) for bound in STAGE_BUCKETS]
        query = select(
            finished.c.stage, func.count(), func.coalesce(func.sum(finished.c.d), 0.0), *columns
        ).group_by(finished.c.stage)
        histogram = HistogramMetricFamily(
            "clearance_stage_duration_seconds",
            "Time from a stage's first start to its finish (retries included), per stage.",
            labels=["stage"],
        )
        for stage, count, total, *cumulative in session.execute(query).all():
            buckets = [
                (str(float(bound)), float(n or 0))
                for bound, n in zip(STAGE_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(count)))
            histogram.add_metric([stage], buckets, sum_value=float(total or 0.0))
        yield histogram

    def _reviews(self, session: Session) -> Iterator[Metric]:
        counts = _counts(
            session,
            select(ReviewTask.state, func.count())
            .where(ReviewTask.state != DECIDED)
            .group_by(ReviewTask.state),
        )
        tasks = GaugeMetricFamily(
            "clearance_review_tasks", "Undecided review tasks by state.", labels=["state"]
        )
        for state in TASK_STATES:
            if state != DECIDED:
                tasks.add_metric([state], counts.get(state, 0))
        yield tasks
        yield GaugeMetricFamily(
            "clearance_review_backlog", "Review tasks not yet decided.", value=sum(counts.values())
        )
        oldest = session.scalar(
            select(func.min(ReviewTask.created_at)).where(ReviewTask.state != DECIDED)
        )
        age = (utcnow() - _aware(oldest)).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "clearance_review_oldest_open_age_seconds",
            "Age of the oldest undecided review task; 0 when there is none.",
            value=max(0.0, age),
        )
        overdue = session.scalar(
            select(func.count())
            .select_from(ReviewTask)
            .where(ReviewTask.state != DECIDED, ReviewTask.due_at < utcnow())
        )
        yield GaugeMetricFamily(
            "clearance_review_overdue", "Undecided review tasks past their SLA.", value=overdue
        )

    def _costs(self, session: Session) -> Iterator[Metric]:
        gpu = CounterMetricFamily(
            "clearance_gpu_seconds",
            "GPU seconds of local generation, per variant.",
            labels=["variant"],
        )
        rows = session.execute(
            select(CostEntry.variant, func.sum(CostEntry.gpu_seconds))
            .where(CostEntry.gpu_seconds.is_not(None))
            .group_by(CostEntry.variant)
        ).all()
        for variant, seconds in rows:
            gpu.add_metric([variant], float(seconds or 0.0))
        yield gpu
        cost = CounterMetricFamily(
            "clearance_generation_cost_usd",
            "Generation cost from the ledger, per kind (local, api) and variant.",
            labels=["kind", "variant"],
        )
        amounts = session.execute(
            select(CostEntry.kind, CostEntry.variant, func.sum(CostEntry.amount_usd)).group_by(
                CostEntry.kind, CostEntry.variant
            )
        ).all()
        for kind, variant, amount in amounts:
            cost.add_metric([kind, variant], float(amount or 0))
        yield cost

    def _webhooks(self, session: Session) -> Iterator[Metric]:
        counts = _counts(
            session, select(WebhookDelivery.state, func.count()).group_by(WebhookDelivery.state)
        )
        deliveries = GaugeMetricFamily(
            "clearance_webhook_deliveries", "Webhook deliveries by state.", labels=["state"]
        )
        for state in DELIVERY_STATES:
            deliveries.add_metric([state], counts.get(state, 0))
        yield deliveries


def _counts(session: Session, query: Any) -> dict[str, int]:
    return {str(key): int(n) for key, n in session.execute(query).all()}


def _aware(moment: datetime | str) -> datetime:
    # func.min bypasses the column type on SQLite, so the timezone may be missing or a string.
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _check_token(request: Request, token: str) -> None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise AuthenticationError(
            "send the metrics token as 'Authorization: Bearer <token>'", field="Authorization"
        )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        401: ERRORS[401],
        500: ERRORS[500],
        503: ERRORS[503],
    },
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    if settings.metrics.token is not None:
        _check_token(request, settings.metrics.token.get_secret_value())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
