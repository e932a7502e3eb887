"""The stats page's figures for one tenant over the last days: job volume, how jobs were
routed (the auto-approve rate), reviewers' decisions, false positives per protected asset as
reviewers judged them, and SLA breaches. Read-only; days are UTC days."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import utcnow
from pipeline.models import APPROVED, JOB_STATES, Job, JobDecision
from pipeline.stages import ROUTE
from review.models import (
    APPROVE,
    DECIDED,
    DECISIONS,
    REJECT,
    WITHDRAWN,
    ReviewDecision,
    ReviewTask,
)


@dataclass(frozen=True)
class Bar:
    label: str
    value: int


@dataclass(frozen=True)
class AssetFeedback:
    """Of the decided tasks whose image matched `asset_id`, how many a person cleared (the
    match was a false positive) and how many they upheld."""

    asset_id: str
    flagged: int
    cleared: int

    @property
    def rate(self) -> float:
        return self.cleared / self.flagged if self.flagged else 0.0


@dataclass(frozen=True)
class Stats:
    days: int
    since: datetime
    jobs_per_day: list[Bar]
    jobs_by_state: list[Bar]
    routed: list[Bar]
    auto_approve_rate: float | None
    decisions: list[Bar]
    reasons: list[Bar]
    false_positives: list[AssetFeedback]
    sla: list[Bar]

    @property
    def total_jobs(self) -> int:
        return sum(b.value for b in self.jobs_by_state)

    @property
    def sla_breaches(self) -> int:
        return sum(b.value for b in self.sla if b.label in (SLA_LATE, SLA_OVERDUE))


SLA_ON_TIME = "decided in time"
SLA_LATE = "decided late"
SLA_OVERDUE = "waiting, overdue"
SLA_WAITING = "waiting, in time"


def _day(moment: datetime) -> date:
    return moment.date()


def tenant_stats(
    *, session: Session, tenant_id: str, days: int, now: datetime | None = None
) -> Stats:
    now = now or utcnow()
    since = now - timedelta(days=days)

    created = session.scalars(
        select(Job.created_at).where(Job.tenant_id == tenant_id, Job.created_at >= since)
    ).all()
    per_day = Counter(_day(c) for c in created)
    first = _day(since)
    jobs_per_day = [
        Bar(d.strftime("%m-%d"), per_day.get(d, 0))
        for d in (first + timedelta(days=n) for n in range((_day(now) - first).days + 1))
    ]
    states = Counter(
        session.scalars(
            select(Job.state).where(Job.tenant_id == tenant_id, Job.created_at >= since)
        ).all()
    )
    jobs_by_state = [Bar(s, states[s]) for s in JOB_STATES if states.get(s)]

    routes = Counter(
        session.scalars(
            select(JobDecision.decision)
            .join(Job, Job.id == JobDecision.job_id)
            .where(
                Job.tenant_id == tenant_id,
                JobDecision.stage == ROUTE,
                JobDecision.created_at >= since,
            )
        ).all()
    )
    total_routed = sum(routes.values())
    auto_rate = routes.get(APPROVED, 0) / total_routed if total_routed else None

    made = session.execute(
        select(ReviewDecision.decision, ReviewDecision.reason)
        .join(ReviewTask, ReviewTask.id == ReviewDecision.task_id)
        .where(ReviewTask.tenant_id == tenant_id, ReviewDecision.created_at >= since)
    ).all()
    decisions = Counter(d for d, _ in made)
    reasons = Counter(r for _, r in made)

    tasks = session.scalars(
        select(ReviewTask).where(ReviewTask.tenant_id == tenant_id, ReviewTask.created_at >= since)
    ).all()
    flagged: Counter[str] = Counter()
    cleared: Counter[str] = Counter()
    sla: Counter[str] = Counter()
    for task in tasks:
        if task.outcome == WITHDRAWN:
            continue  # its job was cancelled: nobody had to decide it
        if task.state == DECIDED and task.outcome in (APPROVE, REJECT):
            assets = {str(r["asset_id"]) for r in task.reasons if r.get("asset_id")}
            flagged.update(assets)
            if task.outcome == APPROVE:
                cleared.update(assets)
        if task.decided_at is not None:
            sla[SLA_LATE if task.decided_at > task.due_at else SLA_ON_TIME] += 1
        else:
            sla[SLA_OVERDUE if task.due_at < now else SLA_WAITING] += 1
    return Stats(
        days=days,
        since=since,
        jobs_per_day=jobs_per_day,
        jobs_by_state=jobs_by_state,
        routed=[Bar(state, n) for state, n in routes.most_common()],
        auto_approve_rate=auto_rate,
        decisions=[Bar(d, decisions.get(d, 0)) for d in DECISIONS],
        reasons=[Bar(r, n) for r, n in reasons.most_common()],
        false_positives=sorted(
            (AssetFeedback(a, flagged[a], cleared[a]) for a in flagged),
            key=lambda f: (-f.cleared, -f.flagged, f.asset_id),
        ),
        sla=[Bar(k, sla.get(k, 0)) for k in (SLA_ON_TIME, SLA_LATE, SLA_OVERDUE, SLA_WAITING)],
    )
