"""Thin Celery wrapper: SLA breaches escalate to legal by themselves, run by Celery beat."""

from __future__ import annotations

from core.celery_app import app
from core.db import session_scope
from review import queue

ESCALATE_TASK = "review.escalate_overdue"


@app.task(name=ESCALATE_TASK)
def escalate_overdue() -> int:
    """Escalate every task past its SLA; returns how many. Idempotent: a task already
    escalated is not overdue any more."""
    with session_scope() as session:
        return len(queue.escalate_overdue(session=session))
