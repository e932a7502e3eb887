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
    prev_seq, prev_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    occurred_at = utcnow()
    payload_text = canonical_json(dict(payload or {}))
    event = AuditEvent(
        seq=prev_seq + 1,
        occurred_at=occurred_at,
        actor=actor,
        tenant_id=tenant_id,
        type=type,
        subject=subject,
        payload=payload_text,
        prev_hash=prev_hash,
    )
    event.hash = event_hash(
        seq=event.seq,
        occurred_at=occurred_at,
        actor=actor,
        tenant_id=tenant_id,
        type=type,
        subject=subject,
        payload=payload_text,
        prev_hash=prev_hash,
    )
    session.add(event)
    if head is None:
        session.add(AuditHead(id=1, seq=event.seq, hash=event.hash))
    else:
        head.seq, head.hash = event.seq, event.hash
    session.flush()
    return event


def verify(*, session: Session) -> VerifyResult:
    """Walk the chain up to the head and report the first event that does not check out.

    The head is read first: events appended while the walk runs lie beyond it and are left
    for the next run, so a busy system never looks broken."""
    head = session.get(AuditHead, 1)
    head_seq = head.seq if head else 0
    expected_seq, prev_hash, checked = 1, GENESIS_HASH, 0
    stream = session.execute(
        select(AuditEvent)
        .where(AuditEvent.seq <= head_seq)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=_VERIFY_BATCH)
    ).scalars()
    for event in stream:
        broken = _check(event, expected_seq, prev_hash)
        if broken:
            return VerifyResult(checked, head_seq, broken)
        checked += 1
        expected_seq, prev_hash = event.seq + 1, event.hash
    if checked < head_seq:
        reason = f"event {expected_seq} is missing (the chain head names event {head_seq})"
        return VerifyResult(checked, head_seq, BrokenEvent(expected_seq, reason))
    if head is not None and head.hash != prev_hash:
        reason = "the chain head's hash does not match this event"
        return VerifyResult(checked, head_seq, BrokenEvent(head_seq, reason))
    if head is None and session.scalar(select(AuditEvent.seq).limit(1)) is not None:
        return VerifyResult(0, 0, BrokenEvent(1, "events exist but the chain head is missing"))
    return VerifyResult(checked, head_seq, None)


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
