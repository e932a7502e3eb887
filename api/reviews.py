"""HTTP routes of the human review queue, and appeals."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from api.auth import Principal
from api.deps import Offset, PrincipalDep, ReadSessionDep, SettingsDep
from api.errors import ERRORS
from api.schemas import AppealIn, Page, ReviewDecisionIn, ReviewTaskOut
from core.db import session_scope, utcnow
from core.settings import Settings
from pipeline import reviews, tasks
from review import queue
from review.models import CLAIMED, OPEN, ReviewTask

router = APIRouter()
log = logging.getLogger(__name__)


def task_out(task: ReviewTask) -> ReviewTaskOut:
    out = ReviewTaskOut.model_validate(task)
    # A lapsed claim is back in the queue.
    lapsed = task.state == CLAIMED and task.lease_expires_at and task.lease_expires_at <= utcnow()
    return out.model_copy(update={"state": OPEN, "claimed_by": None}) if lapsed else out


@router.get("/v1/reviews", response_model=Page[ReviewTaskOut], responses=ERRORS)
def list_reviews(
    principal: PrincipalDep,
    session: ReadSessionDep,
    state: str | None = Query(default=None, description="open, claimed, escalated or decided"),
    offset: Offset = 0,
    limit: int = Query(default=100, ge=1, le=500),
) -> Page[ReviewTaskOut]:
    """The tenant's review tasks, the most urgent first (high priority, earliest due)."""
    principal.require(*queue.REVIEWER_ROLES)
    found = queue.list_tasks(
        session=session, tenant_id=principal.tenant_id, state=state, offset=offset, limit=limit
    )
    total = queue.count_tasks(session=session, tenant_id=principal.tenant_id, state=state)
    return Page[ReviewTaskOut](
        items=[task_out(t) for t in found], total=total, offset=offset, limit=limit
    )


@router.get("/v1/reviews/{task_id}", response_model=ReviewTaskOut, responses=ERRORS)
def get_review(task_id: str, principal: PrincipalDep, session: ReadSessionDep) -> ReviewTaskOut:
    principal.require(*queue.REVIEWER_ROLES)
    return task_out(queue.get_task(session=session, tenant_id=principal.tenant_id, task_id=task_id))


@router.post("/v1/reviews/{task_id}/claim", response_model=ReviewTaskOut, responses=ERRORS)
def claim_review(task_id: str, principal: PrincipalDep, settings: SettingsDep) -> ReviewTaskOut:
    """Claim a task for the lease time (settings.review.lease_minutes); 409 when someone else
    holds a live claim."""
    principal.require(*queue.REVIEWER_ROLES)
    return claim_task(principal, settings, task_id)


def claim_task(principal: Principal, settings: Settings, task_id: str) -> ReviewTaskOut:
    """Claim for the lease time; the API and the dashboard both claim through here."""
    with session_scope() as session:
        return task_out(_claim(session, principal, settings, task_id))


def _claim(session: Session, principal: Principal, settings: Settings, task_id: str) -> ReviewTask:
    return queue.claim(
        session=session,
        tenant_id=principal.tenant_id,
        task_id=task_id,
        reviewer=principal.actor,
        role=principal.role,
        lease=timedelta(minutes=settings.review.lease_minutes),
    )


@router.post("/v1/reviews/{task_id}/decision", response_model=ReviewTaskOut, responses=ERRORS)
def decide_review(
    task_id: str, body: ReviewDecisionIn, principal: PrincipalDep, settings: SettingsDep
) -> ReviewTaskOut:
    """Approve, reject or escalate (to legal) a claimed task, with a reason code and a note.
    Of two decisions at once on one task exactly one wins; the other gets 409."""
    principal.require(*queue.REVIEWER_ROLES)
    return decide_task(principal, settings, task_id, body)


def decide_task(
    principal: Principal,
    settings: Settings,
    task_id: str,
    body: ReviewDecisionIn,
    *,
    claim: bool = False,
) -> ReviewTaskOut:
    """Record a decision and send the job on when it is now approved (to release, or to
    generation when the image to edit was reviewed). With `claim` the reviewer claims the
    task first, in the same transaction (the dashboard's one-key decisions); someone else's
    live claim still answers 409."""
    with session_scope() as session:
        if claim:
            _claim(session, principal, settings, task_id)
        task, next_stage = reviews.decide(
            session=session,
            settings=settings,
            tenant_id=principal.tenant_id,
            task_id=task_id,
            reviewer=principal.actor,
            role=principal.role,
            decision=body.decision,
            reason=body.reason,
            note=body.note,
        )
        out = task_out(task)
    if next_stage is not None:
        # After the commit, so the stage finds the job in its new state. If the broker is
        # down the job stays approved and unreleased (nothing leaks) and this answers 503.
        tasks.enqueue(task.job_id, first=next_stage)
    return out


@router.post(
    "/v1/jobs/{job_id}/appeal", status_code=201, response_model=ReviewTaskOut, responses=ERRORS
)
def appeal_job(
    job_id: str, body: AppealIn, principal: PrincipalDep, settings: SettingsDep
) -> ReviewTaskOut:
    """Appeal a rejection once, with a note; a reviewer who did not reject it decides."""
    principal.require("requester", "admin")
    with session_scope() as session:
        task = reviews.appeal(
            session=session,
            settings=settings,
            tenant_id=principal.tenant_id,
            job_id=job_id,
            requester=principal.actor,
            note=body.note,
        )
        return task_out(task)
