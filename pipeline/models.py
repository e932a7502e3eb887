from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db import Base, new_id, utcnow

# Job states. `in_review` waits for a person; the last five are final.
QUEUED = "queued"
CHECKING_PROMPT = "checking_prompt"
GENERATING = "generating"
CHECKING_IMAGES = "checking_images"
APPROVED = "approved"
IN_REVIEW = "in_review"
REJECTED = "rejected"
BLOCKED = "blocked"
RELEASED = "released"
FAILED = "failed"
# Stopped by its requester before it was final; nothing more of it runs or is released.
CANCELLED = "cancelled"
JOB_STATES = (
    QUEUED,
    CHECKING_PROMPT,
    GENERATING,
    CHECKING_IMAGES,
    APPROVED,
    IN_REVIEW,
    REJECTED,
    BLOCKED,
    RELEASED,
    FAILED,
    CANCELLED,
)
FINAL_STATES = frozenset({REJECTED, BLOCKED, RELEASED, FAILED, CANCELLED})
# States a client waiting on a job stops at: final, or waiting for a person.
SETTLED_STATES = FINAL_STATES | {IN_REVIEW}


class Job(Base):
    __tablename__ = "jobs"
    # GET /v1/jobs lists a tenant's jobs newest first.
    __table_args__ = (Index("ix_jobs_tenant_id_created_at", "tenant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)
    variant: Mapped[str] = mapped_column(String(40))
    use: Mapped[str] = mapped_column(String(20))
    width: Mapped[int]
    height: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    n_images: Mapped[int]
    steps: Mapped[int | None]
    # Groups jobs for budgets and usage; "" when the client names no project.
    project: Mapped[str] = mapped_column(String(100), default="")
    # Kontext editing: the uploaded image to edit (a blob name).
    input_image_sha256: Mapped[str | None] = mapped_column(String(64))
    # [{"name": ..., "scale": ...}] as requested; checked against the registry at submission.
    loras: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # Reserved against the budget until the ledger records the real cost.
    estimated_cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), default=Decimal(0))
    # Denoising progress while generating: step `progress_step` of `progress_total`.
    progress_step: Mapped[int | None]
    progress_total: Mapped[int | None]
    # Copied from the tenant at submission: every image of this job needs a person's approval.
    require_human_approval: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(20), default=QUEUED, index=True)
    model: Mapped[str | None] = mapped_column(String(300))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    stages: Mapped[list[JobStage]] = relationship(
        back_populates="job", order_by="JobStage.started_at", cascade="all, delete-orphan"
    )
    decisions: Mapped[list[JobDecision]] = relationship(
        back_populates="job", order_by="JobDecision.created_at", cascade="all, delete-orphan"
    )
    images: Mapped[list[JobImage]] = relationship(
        back_populates="job", order_by="JobImage.index", cascade="all, delete-orphan"
    )


class JobStage(Base):
    """One stage of one job: when it ran, how often it was started, how it ended.
    A finished row is what makes a redelivered stage task a no-op."""

    __tablename__ = "job_stages"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(20), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(40))

    job: Mapped[Job] = relationship(back_populates="stages")


class JobDecision(Base):
    """A decision with its reasons: the prompt policy's, the image checks', the router's."""

    __tablename__ = "job_decisions"
    __table_args__ = (UniqueConstraint("job_id", "stage"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(20))
    decision: Mapped[str] = mapped_column(String(20))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="decisions")


class JobImage(Base):
    __tablename__ = "job_images"
    __table_args__ = (UniqueConstraint("job_id", "index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int]
    seed: Mapped[int] = mapped_column(BigInteger)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    # The full result of the image checks (reference_index.checks), and its matches.
    check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    matches: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    released_at: Mapped[datetime | None]
    # The signed copies served once released (blob names): the PNG, and a JPEG made from it,
    # each with its own C2PA manifest and IPTC XMP. Nothing unsigned is ever served.
    released_sha256: Mapped[str | None] = mapped_column(String(64))
    released_jpeg_sha256: Mapped[str | None] = mapped_column(String(64))

    job: Mapped[Job] = relationship(back_populates="images")


class Upload(Base):
    """An image a client uploaded for editing, stored in the blob store."""

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("tenant_id", "blob_sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    blob_sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    uploaded_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Webhook delivery states: pending until a 2xx (delivered) or until the attempts run out (failed).
DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"
DELIVERY_STATES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED)


class WebhookSubscription(Base):
    """A tenant's endpoint for job events. The secret is kept as is: signing needs it."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one subscription: the outbox row, written in the transaction of the job's
    state change, so an event is never lost and never sent for a change that rolled back.
    `next_attempt_at` is when it is due (None once delivered or failed); a dispatcher that
    claims it pushes it forward by a lease, so a crashed sender's delivery comes due again."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    subscription_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    # The same for a delivery and its replays: receivers deduplicate on it.
    event_id: Mapped[str] = mapped_column(String(32), default=new_id)
    event: Mapped[str] = mapped_column(String(40))
    job_id: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default=DELIVERY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    replay_of: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    attempt_log: Mapped[list[WebhookAttempt]] = relationship(
        order_by="WebhookAttempt.number", cascade="all, delete-orphan"
    )


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: the receiver's status code, or why there was none."""

    __tablename__ = "webhook_attempts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int]
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRequestKey(Base):
    """An `Idempotency-Key` a client sent with POST /v1/jobs, and the job it created.
    The unique (tenant, key) pair is what makes two requests with one key create one job,
    across API processes: the second insert waits for the first transaction and then fails.
    `job_id` is set in the transaction that inserts the row, so a committed row always has it."""

    __tablename__ = "job_request_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    key: Mapped[str] = mapped_column(String(255))
    # sha256 of the request body (canonical JSON): the same key with another body is refused.
    request_sha256: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
