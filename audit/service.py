"""Append to and verify the audit chain.

Invariants: events are numbered 1, 2, 3, ... without gaps; event n's `prev_hash` is event
n-1's `hash` (the genesis hash for event 1); `hash` is sha256 over the canonical JSON of the
event's fields and `prev_hash`. `append` runs inside the caller's transaction, so an event is
stored if and only if the change it records is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit.models import AuditEvent, AuditHead
from audit.schemas import BrokenEvent, VerifyResult
from core.db import utcnow

GENESIS_HASH = "0" * 64
_VERIFY_BATCH = 1000


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _timestamp(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def event_hash(
    *,
    seq: int,
    occurred_at: datetime,
    actor: str,
    tenant_id: str | None,
    type: str,
    subject: str,
    payload: str,
    prev_hash: str,
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "occurred_at": _timestamp(occurred_at),
            "actor": actor,
            "tenant_id": tenant_id,
            "type": type,
            "subject": subject,
            "payload": payload,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(body.encode()).hexdigest()


def append(
    *,
    session: Session,
    actor: str,
    type: str,
    subject: str,
    tenant_id: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> AuditEvent:
    head = session.get(AuditHead, 1, with_for_update=True)
    if head is None:
        # The migration creates it; without it appends could not be serialised.
        raise RuntimeError("the audit chain head row is missing; run `clearance db upgrade`")
    occurred_at = utcnow()
    payload_text = canonical_json(dict(payload or {}))
    event = AuditEvent(
        seq=head.seq + 1,
        occurred_at=occurred_at,
        actor=actor,
        tenant_id=tenant_id,
        type=type,
        subject=subject,
        payload=payload_text,
        prev_hash=head.hash,
    )
    event.hash = event_hash(
        seq=event.seq,
        occurred_at=occurred_at,
        actor=actor,
        tenant_id=tenant_id,
        type=type,
        subject=subject,
        payload=payload_text,
        prev_hash=head.hash,
    )
    session.add(event)
    head.seq, head.hash = event.seq, event.hash
    session.flush()
    return event


def verify(*, session: Session) -> VerifyResult:
    """Walk the whole chain and report the first event that does not check out.

    Reads one snapshot (REPEATABLE READ on PostgreSQL; a SQLite read transaction is one
    already), so events appended meanwhile are neither half-seen nor mistaken for damage."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    head = session.get(AuditHead, 1)
    if head is None:
        return VerifyResult(0, 0, BrokenEvent(1, "the chain head record is missing"))
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    stream = session.execute(
        select(AuditEvent).order_by(AuditEvent.seq).execution_options(yield_per=_VERIFY_BATCH)
    ).scalars()
    for event in stream:
        if event.seq > head.seq:
            reason = f"it lies beyond the chain head, which names event {head.seq}"
            return VerifyResult(checked, head.seq, BrokenEvent(event.seq, reason))
        broken = _check(event, expected_seq, prev_hash)
        if broken:
            return VerifyResult(checked, head.seq, broken)
        checked += 1
        expected_seq, prev_hash = event.seq + 1, event.hash
    if checked < head.seq:
        reason = f"event {expected_seq} is missing (the chain head names event {head.seq})"
        return VerifyResult(checked, head.seq, BrokenEvent(expected_seq, reason))
    if head.hash != prev_hash:
        reason = "the chain head's hash does not match the last event"
        return VerifyResult(checked, head.seq, BrokenEvent(head.seq, reason))
    return VerifyResult(checked, head.seq, None)


def _check(event: AuditEvent, expected_seq: int, prev_hash: str) -> BrokenEvent | None:
    if event.seq != expected_seq:
        return BrokenEvent(expected_seq, f"event {expected_seq} is missing (next is {event.seq})")
    if event.prev_hash != prev_hash:
        return BrokenEvent(event.seq, "its prev_hash does not match the previous event's hash")
    recomputed = event_hash(
        seq=event.seq,
        occurred_at=event.occurred_at,
        actor=event.actor,
        tenant_id=event.tenant_id,
        type=event.type,
        subject=event.subject,
        payload=event.payload,
        prev_hash=event.prev_hash,
    )
    if recomputed != event.hash:
        return BrokenEvent(event.seq, "its content does not match its hash (altered after writing)")
    return None


def events_for(*, session: Session, subject: str) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent).where(AuditEvent.subject == subject).order_by(AuditEvent.seq)
        )
    )
