"""The human review queue: tasks with a priority and an SLA, claims that are leases, decisions
with reason codes, four-eyes on high-risk tasks, escalation to legal, and one appeal.

Concurrency: every change locks the task row first (`SELECT ... FOR UPDATE` on PostgreSQL;
SQLite write transactions are serialised by `BEGIN IMMEDIATE`), then checks its state. Of
two decisions racing on one task exactly one finds it still undecided; the other gets a
ConflictError (409).

The queue decides tasks; what a decision does to the job (approve → release, reject) is
pipeline's, which reads the returned `Outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from audit import service as audit
from core.db import utcnow
from core.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    choices,
)
from core.settings import ReviewSettings
from review.models import (
    APPROVE,
    CLAIMED,
    DECIDED,
    DECISIONS,
    ESCALATE,
    ESCALATED,
    HIGH,
    OPEN,
    PRIORITIES,
    REJECT,
    TASK_STATES,
    WITHDRAWN,
    ReviewDecision,
    ReviewTask,
)

# Reason codes a decision must give; `infringement` on a reject and any approve of a flagged
# image feed the reference index when legal or admin confirm them.
REASONS = (
    "infringement",
    "likeness",
    "trademark",
    "nsfw",
    "policy",
    "licence",
    "false_positive",
    "acceptable_use",
    "needs_legal",
    "other",
)
# Who may decide: reviewers, and legal and admin; escalated tasks only legal and admin.
REVIEWER_ROLES = ("reviewer", "legal", "admin")
LEGAL_ROLES = ("legal", "admin")
MAX_NOTE = 4000


@dataclass(frozen=True)
class Outcome:
    """What a decision did to its task: `final` is approve | reject once the task is decided,
    None while it waits (for a second approval, or for legal)."""

    task: ReviewTask
    final: str | None


def sla(settings: ReviewSettings, priority: str) -> timedelta:
    hours = settings.sla_hours_high if priority == HIGH else settings.sla_hours_normal
    return timedelta(hours=hours)


def _lock(session: Session, task_id: str, tenant_id: str) -> ReviewTask:
    task = session.get(ReviewTask, task_id, with_for_update=True, populate_existing=True)
    if task is None or task.tenant_id != tenant_id:
        raise NotFoundError(f"review task {task_id!r} does not exist", field="task_id")
    return task


def _event(session: Session, task: ReviewTask, actor: str, type: str, **payload: object) -> None:
    audit.append(
        session=session,
        actor=actor,
        tenant_id=task.tenant_id,
        type=f"review.{type}",
        subject=f"job:{task.job_id}",
        payload={"task_id": task.id, **payload},
    )


def open_task(
    *,
    session: Session,
    tenant_id: str,
    job_id: str,
    requester: str,
    priority: str,
    band: str,
    reasons: list[dict[str, object]],
    sla: timedelta,
    actor: str,
    appeal_of: ReviewTask | None = None,
    appeal_note: str | None = None,
) -> ReviewTask:
    if priority not in PRIORITIES:
        raise InvalidInputError(
            f"priority {priority!r} is not one of {choices(PRIORITIES)}", field="priority"
        )
    now = utcnow()
    task = ReviewTask(
        tenant_id=tenant_id,
        job_id=job_id,
        requester=requester,
        priority=priority,
        band=band,
        reasons=reasons,
        required_approvals=2 if priority == HIGH else 1,
        approvals=[],
        excluded=sorted({d.reviewer for d in appeal_of.decisions}) if appeal_of else [],
        due_at=now + sla,
        appeal_of=appeal_of.id if appeal_of else None,
        appeal_note=appeal_note,
        created_at=now,
    )
    session.add(task)
    session.flush()
    _event(session, task, actor, "opened", priority=priority, band=band, appeal_of=task.appeal_of)
    return task


def _task_filter(tenant_id: str, state: str | None) -> Select[tuple[ReviewTask]]:
    if state is not None and state not in TASK_STATES:
        raise InvalidInputError(
            f"state {state!r} is not one of {choices(TASK_STATES)}", field="state"
        )
    query = select(ReviewTask).where(ReviewTask.tenant_id == tenant_id)
    now = utcnow()
    lapsed = (ReviewTask.state == CLAIMED) & (ReviewTask.lease_expires_at <= now)
    if state == OPEN:
        query = query.where(or_(ReviewTask.state == OPEN, lapsed))
    elif state == CLAIMED:
        query = query.where(ReviewTask.state == CLAIMED, ReviewTask.lease_expires_at > now)
    elif state is not None:
        query = query.where(ReviewTask.state == state)
    return query


def list_tasks(
    *,
    session: Session,
    tenant_id: str,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[ReviewTask]:
    """Tasks of a tenant, the most urgent first (high priority, then the earliest due).
    An expired claim shows as open."""
    query = _task_filter(tenant_id, state)
    query = query.order_by((ReviewTask.priority != HIGH), ReviewTask.due_at, ReviewTask.id)
    return list(session.scalars(query.offset(offset).limit(limit)))


def count_tasks(*, session: Session, tenant_id: str, state: str | None = None) -> int:
    """How many tasks `list_tasks` would find without a limit."""
    query = _task_filter(tenant_id, state)
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def get_task(*, session: Session, tenant_id: str, task_id: str) -> ReviewTask:
    task = session.get(ReviewTask, task_id)
    if task is None or task.tenant_id != tenant_id:
        raise NotFoundError(f"review task {task_id!r} does not exist", field="task_id")
    return task


def _may_decide(task: ReviewTask, reviewer: str, role: str) -> None:
    if role not in REVIEWER_ROLES:
        raise PermissionDeniedError(
            f"role {role!r} may not review; it needs {choices(REVIEWER_ROLES)}", field="role"
        )
    if reviewer == task.requester:
        raise PermissionDeniedError("nobody reviews their own job", field="reviewer")
    if reviewer in task.excluded:
        raise PermissionDeniedError(
            "an appeal is decided by a reviewer who did not decide the rejection",
            field="reviewer",
        )
    if reviewer in task.approvals:
        raise PermissionDeniedError(
            "this reviewer has approved already; four-eyes needs a different reviewer",
            field="reviewer",
        )
    if task.state == ESCALATED and role not in LEGAL_ROLES:
        raise PermissionDeniedError(
            f"the task is escalated; it needs {choices(LEGAL_ROLES)}", field="role"
        )


def claim(
    *, session: Session, tenant_id: str, task_id: str, reviewer: str, role: str, lease: timedelta
) -> ReviewTask:
    """Claim a task for `lease`; a claim that lapses returns the task to the queue. Claiming
    again one's own live claim renews it."""
    task = _lock(session, task_id, tenant_id)
    if task.state == DECIDED:
        raise ConflictError(f"review task {task_id!r} is already decided", field="task_id")
    _may_decide(task, reviewer, role)
    now = utcnow()
    live = task.state == CLAIMED and task.lease_expires_at and task.lease_expires_at > now
    if live and task.claimed_by != reviewer:
        raise ConflictError(
            f"review task {task_id!r} is claimed by {task.claimed_by} until "
            f"{task.lease_expires_at:%H:%M:%S} UTC",
            field="task_id",
        )
    if task.state != ESCALATED:
        task.state = CLAIMED
    task.claimed_by, task.lease_expires_at = reviewer, now + lease
    _event(session, task, reviewer, "claimed", lease_expires_at=task.lease_expires_at.isoformat())
    return task


def decide(
    *,
    session: Session,
    tenant_id: str,
    task_id: str,
    reviewer: str,
    role: str,
    decision: str,
    reason: str,
    note: str = "",
) -> Outcome:
    """Record a decision. The reviewer must hold a live claim on the task. Approve counts
    towards four-eyes; reject decides at once; escalate hands the task to legal."""
    if decision not in DECISIONS:
        raise InvalidInputError(
            f"decision {decision!r} is not one of {choices(DECISIONS)}", field="decision"
        )
    if reason not in REASONS:
        raise InvalidInputError(
            f"reason {reason!r} is not one of {choices(REASONS)}", field="reason"
        )
    if len(note) > MAX_NOTE:
        raise InvalidInputError(f"note is longer than {MAX_NOTE} characters", field="note")
    task = _lock(session, task_id, tenant_id)
    if task.state == DECIDED:
        raise ConflictError(f"review task {task_id!r} is already decided", field="task_id")
    _may_decide(task, reviewer, role)
    now = utcnow()
    if task.claimed_by != reviewer or not task.lease_expires_at or task.lease_expires_at <= now:
        raise ConflictError(
            f"claim review task {task_id!r} before deciding it (claims lapse)", field="task_id"
        )
    session.add(
        ReviewDecision(
            task_id=task.id,
            reviewer=reviewer,
            role=role,
            decision=decision,
            reason=reason,
            note=note,
        )
    )
    task.claimed_by, task.lease_expires_at = None, None
    final: str | None = None
    if decision == REJECT:
        final = REJECT
    elif decision == ESCALATE:
        task.state, task.escalated_at = ESCALATED, now
    else:
        task.approvals = [*task.approvals, reviewer]
        if len(task.approvals) >= task.required_approvals:
            final = APPROVE
        else:
            task.state = OPEN if task.state != ESCALATED else ESCALATED
    if final is not None:
        task.state, task.outcome, task.decided_at = DECIDED, final, now
    session.flush()
    _event(
        session,
        task,
        reviewer,
        "decided",
        decision=decision,
        reason=reason,
        note=note,
        role=role,
        outcome=final,
        approvals=len(task.approvals),
        required_approvals=task.required_approvals,
    )
    return Outcome(task, final)


def appeal(
    *, session: Session, tenant_id: str, job_id: str, requester: str, note: str, sla: timedelta
) -> ReviewTask:
    """A requester may appeal a rejection by a person once, with a note; a reviewer who did not
    decide the rejection decides the appeal."""
    if not note.strip():
        raise InvalidInputError("an appeal needs a note saying why", field="note")
    if len(note) > MAX_NOTE:
        raise InvalidInputError(f"note is longer than {MAX_NOTE} characters", field="note")
    tasks = list(
        session.scalars(
            select(ReviewTask)
            .where(ReviewTask.tenant_id == tenant_id, ReviewTask.job_id == job_id)
            .order_by(ReviewTask.created_at)
            .with_for_update()
        )
    )
    if any(t.appeal_of for t in tasks):
        raise ConflictError(f"job {job_id!r} has been appealed already", field="job_id")
    rejected = [t for t in tasks if t.outcome == REJECT]
    if not rejected:
        raise ConflictError(
            f"job {job_id!r} has no rejection by a reviewer to appeal", field="job_id"
        )
    original = rejected[-1]
    return open_task(
        session=session,
        tenant_id=tenant_id,
        job_id=job_id,
        requester=requester,
        priority=original.priority,
        band="appeal",
        reasons=original.reasons,
        sla=sla,
        actor=requester,
        appeal_of=original,
        appeal_note=note,
    )


def undecided_tasks(*, session: Session, tenant_id: str, job_id: str) -> list[ReviewTask]:
    """The job's tasks still waiting for a decision, locked."""
    return list(
        session.scalars(
            select(ReviewTask)
            .where(
                ReviewTask.tenant_id == tenant_id,
                ReviewTask.job_id == job_id,
                ReviewTask.state != DECIDED,
            )
            .order_by(ReviewTask.id)
            .with_for_update()
        )
    )


def withdraw(*, session: Session, tasks: list[ReviewTask], actor: str) -> None:
    """Close tasks (from `undecided_tasks`) whose job no longer needs a decision (it was
    cancelled): decided, with the outcome `withdrawn`, so nobody claims or decides them."""
    now = utcnow()
    for task in tasks:
        task.state, task.outcome, task.decided_at = DECIDED, WITHDRAWN, now
        task.claimed_by, task.lease_expires_at = None, None
        _event(session, task, actor, "withdrawn")


def escalate_overdue(*, session: Session, now: datetime | None = None) -> list[ReviewTask]:
    """Tasks past their SLA go to legal by themselves (run by Celery beat)."""
    now = now or utcnow()
    overdue = list(
        session.scalars(
            select(ReviewTask)
            .where(ReviewTask.state.in_((OPEN, CLAIMED)), ReviewTask.due_at <= now)
            .with_for_update()
        )
    )
    for task in overdue:
        task.state, task.escalated_at = ESCALATED, now
        task.claimed_by, task.lease_expires_at = None, None
        _event(session, task, "system:sla", "escalated", due_at=task.due_at.isoformat())
    return overdue
