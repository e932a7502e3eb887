from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Numeric, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base, new_id, utcnow

# Money is stored exactly: ten-thousandths of a cent add up over a month.
Money = Numeric(14, 6)


class ModelRegistration(Base):
    """A model folder and the sha256 of every file in it when it was registered. Worker start
    and `clearance models verify` compare the folder against this manifest."""

    __tablename__ = "model_registrations"

    folder: Mapped[str] = mapped_column(String(1000), primary_key=True)
    variant: Mapped[str] = mapped_column(String(40))
    # Relative path -> {"sha256": ..., "size": ...}
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    registered_by: Mapped[str] = mapped_column(String(200))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoraAdapter(Base):
    """An adapter registered by an operator (`tenant_id` None: every tenant may use it) or by
    a tenant's admin (only that tenant's jobs may; its name is `<tenant name>:<name>`)."""

    __tablename__ = "lora_adapters"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    licence_note: Mapped[str] = mapped_column(Text)
    registered_by: Mapped[str] = mapped_column(String(200))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProviderRequestRecord(Base):
    """A request the BFL API accepted (and bills). Stored before polling, so a retried task
    or a restarted worker resumes polling it instead of paying for a second one."""

    __tablename__ = "provider_requests"
    __table_args__ = (UniqueConstraint("job_id", "image_index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    image_index: Mapped[int]
    request_id: Mapped[str] = mapped_column(String(200))
    polling_url: Mapped[str] = mapped_column(String(2000))
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)


class CostEntry(Base):
    """What one image cost: the provider's price, or GPU seconds times the configured rate."""

    __tablename__ = "cost_entries"
    __table_args__ = (UniqueConstraint("job_id", "image_index"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    project: Mapped[str] = mapped_column(String(100), default="")
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    image_index: Mapped[int]
    variant: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(10))  # "local" (GPU seconds) or "api"
    gpu_seconds: Mapped[float | None]
    amount_usd: Mapped[Decimal] = mapped_column(Money)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Budget(Base):
    """A monthly spending limit for a tenant (project "") or one of its projects."""

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("tenant_id", "project"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    project: Mapped[str] = mapped_column(String(100), default="")
    monthly_usd: Mapped[Decimal] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
