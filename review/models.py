"""The human review queue: one task per job a person must decide, and every decision on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, new_id, utcnow

# Task states. A task is open until claimed; a claim is a lease that lapses back to open.
OPEN = "open"
CLAIMED = "claimed"
# Waiting for someone with role legal (escalated by a reviewer or by an SLA breach).
ESCALATED = "escalated"
DECIDED = "decided"
TASK_STATES = (OPEN, CLAIMED, ESCALATED, DECIDED)

APPROVE = "approve"
REJECT = "reject"
ESCALATE = "escalate"
DECISIONS = (APPROVE, REJECT, ESCALATE)
# The outcome of a task closed without a decision, because its job was cancelled.
WITHDRAWN = "withdrawn"

HIGH = "high"
NORMAL = "normal"
PRIORITIES = (HIGH, NORMAL)


class ReviewTask(Base):
    __tablename__ = "review_tasks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    # The job under review (pipeline's); review keeps only its id, DESIGN.md keeps features
    # apart.
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    # Who submitted the job: they may never decide it.
    requester: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default=OPEN, index=True)
    priority: Mapped[str] = mapped_column(String(10), default=NORMAL)
    # The routing band that sent the job here, and its reasons, for the reviewer to read.
    band: Mapped[str] = mapped_column(String(40))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Four-eyes: high-risk tasks need approvals from this many different reviewers.
    required_approvals: Mapped[int] = mapped_column(Integer, default=1)
    approvals: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Reviewers who may not decide this task (those who decided the task it appeals).
    excluded: Mapped[list[str]] = mapped_column(JSON, default=list)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    due_at: Mapped[datetime]
    escalated_at: Mapped[datetime | None]
    # The task this one appeals, if any; a rejection may be appealed once.
    appeal_of: Mapped[str | None] = mapped_column(ForeignKey("review_tasks.id"))
    appeal_note: Mapped[str | None] = mapped_column(Text)
    # approve | reject once decided; withdrawn when its job was cancelled first.
    outcome: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]

    decisions: Mapped[list[ReviewDecision]] = relationship(
        back_populates="task", order_by="ReviewDecision.created_at", cascade="all, delete-orphan"
    )


class ReviewDecision(Base):
    __tablename__ = "review_decisions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task_id: Mapped[str] = mapped_column(
        ForeignKey("review_tasks.id", ondelete="CASCADE"), index=True
    )
    reviewer: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    decision: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    task: Mapped[ReviewTask] = relationship(back_populates="decisions")


class TenantPolicyOverride(Base):
    """A tenant's own prompt-policy overrides, set by its admin (`PUT /v1/admin/rules`): the
    YAML as sent, validated by the rule-file loader. It applies on top of the rule file, whose
    own entry for the tenant (the operator's) keeps the last word."""

    __tablename__ = "tenant_policy_overrides"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    # 1 for the first version, then one more for every replacement.
    revision: Mapped[int] = mapped_column(Integer)
    # The rules version this override produced when it was saved.
    rules_version: Mapped[str] = mapped_column(String(100))
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
