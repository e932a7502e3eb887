from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base


class AuditEvent(Base):
    """One entry of the chain. `hash` covers every other column and the previous event's hash,
    so changing, removing or reordering any stored event breaks the chain from there on.
    The payload is stored as the exact canonical JSON text that was hashed."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(100), index=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The single row naming the chain's last event (seq 0 and the genesis hash before the
    first; the migration creates it). Appends lock it, which serialises them across
    processes (SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on SQLite); the verifier
    compares it with the last stored event, so cutting off the tail shows too."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement that event `seq` was the chain head with hash `head_hash`.

    The signature (Ed25519, by the key `key_id` names) covers every other column, so a
    checkpoint cannot be moved or edited; `prev_seq` names the checkpoint before it, so one
    cannot be removed from the middle either. A chain rewritten from some event on, with every
    hash recomputed, still verifies as a chain but no longer matches the checkpoints after
    that event. A checkpoint is written within the transaction of every `every_events`th
    event, so the head is never that far past the last checkpoint."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    prev_seq: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    every_events: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
