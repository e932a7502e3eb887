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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from audit import signing
from audit.models import AuditCheckpoint, AuditEvent, AuditHead
from audit.schemas import BrokenCheckpoint, BrokenEvent, CheckpointResult, VerifyResult
from core.db import utcnow
from core.settings import Settings, get_settings

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
    settings = get_settings()
    if event.seq - _last_checkpoint_seq(session) >= settings.audit.checkpoint_every_events:
        _write_checkpoint(session, settings, event.seq, event.hash)
    return event


def _last_checkpoint_seq(session: Session) -> int:
    return session.scalar(select(func.max(AuditCheckpoint.seq))) or 0


def checkpoint_message(
    *,
    seq: int,
    prev_seq: int,
    head_hash: str,
    created_at: datetime,
    every_events: int,
    key_id: str,
) -> bytes:
    """What a checkpoint's signature covers. The `kind` keeps a checkpoint signature from
    passing for an export manifest's, or the other way round."""
    return canonical_json(
        {
            "kind": "clearance-audit-checkpoint/1",
            "seq": seq,
            "prev_seq": prev_seq,
            "head_hash": head_hash,
            "created_at": _timestamp(created_at),
            "every_events": every_events,
            "key_id": key_id,
        }
    ).encode()


def _write_checkpoint(
    session: Session, settings: Settings, seq: int, head_hash: str
) -> AuditCheckpoint:
    signer = signing.signer(settings)
    checkpoint = AuditCheckpoint(
        seq=seq,
        prev_seq=_last_checkpoint_seq(session),
        head_hash=head_hash,
        created_at=utcnow(),
        every_events=settings.audit.checkpoint_every_events,
        key_id=signer.key_id,
    )
    checkpoint.signature = signer.sign(_message_of(checkpoint))
    session.add(checkpoint)
    session.flush()
    return checkpoint


def _message_of(checkpoint: AuditCheckpoint) -> bytes:
    return checkpoint_message(
        seq=checkpoint.seq,
        prev_seq=checkpoint.prev_seq,
        head_hash=checkpoint.head_hash,
        created_at=checkpoint.created_at,
        every_events=checkpoint.every_events,
        key_id=checkpoint.key_id,
    )


def write_checkpoint(*, session: Session, settings: Settings) -> AuditCheckpoint | None:
    """Checkpoint the current head, unless it is checkpointed already (or the chain is empty):
    running this twice in a row writes one checkpoint. Locks the head like `append`, so it
    cannot interleave with one."""
    head = session.get(AuditHead, 1, with_for_update=True)
    if head is None or head.seq == 0 or head.seq == _last_checkpoint_seq(session):
        return None
    return _write_checkpoint(session, settings, head.seq, head.hash)


def verify_checkpoints(
    *, session: Session, public_keys: Mapping[str, Ed25519PublicKey], every_events: int
) -> CheckpointResult:
    """Check every checkpoint's signature, that it names the hash of the event at its seq,
    that none is missing between them (`prev_seq` links), and that the head is not a whole
    checkpoint interval past the last one (which appends would have prevented).

    Run it in the same transaction as `verify`, after it, so both see one snapshot; the
    events it compares against are then known to form a valid chain. `every_events` is the
    interval in force now; a checkpoint carries the one in force when it was written, and
    the larger of the two applies, so changing the setting raises no false alarm."""
    head = session.get(AuditHead, 1)
    head_seq = head.seq if head else 0
    rows = session.execute(
        select(AuditCheckpoint, AuditEvent.hash)
        .outerjoin(AuditEvent, AuditEvent.seq == AuditCheckpoint.seq)
        .order_by(AuditCheckpoint.seq)
        .execution_options(yield_per=_VERIFY_BATCH)
    ).tuples()
    checked, last = 0, None
    for checkpoint, hash_at_seq in rows:
        broken = _check_checkpoint(checkpoint, hash_at_seq, public_keys, last, head_seq)
        if broken:
            return CheckpointResult(checked, last.seq if last else 0, broken)
        checked, last = checked + 1, checkpoint
    if last is not None and head_seq - last.seq >= max(last.every_events, every_events):
        reason = (
            f"no checkpoint after it, though the head (#{head_seq}) is more than "
            f"{max(last.every_events, every_events)} events past it (removed?)"
        )
        return CheckpointResult(checked, last.seq, BrokenCheckpoint(last.seq, reason))
    return CheckpointResult(checked, last.seq if last else 0, None)


def _check_checkpoint(
    checkpoint: AuditCheckpoint,
    hash_at_seq: str | None,
    public_keys: Mapping[str, Ed25519PublicKey],
    previous: AuditCheckpoint | None,
    head_seq: int,
) -> BrokenCheckpoint | None:
    seq = checkpoint.seq
    key = public_keys.get(checkpoint.key_id)
    if key is None:
        trusted = ", ".join(sorted(k[:16] for k in public_keys)) or "none"
        reason = f"it is signed by key {checkpoint.key_id[:16]}, which is not trusted ({trusted})"
        return BrokenCheckpoint(seq, reason)
    if not signing.verify_signature(key, _message_of(checkpoint), checkpoint.signature):
        return BrokenCheckpoint(seq, "its signature does not verify (altered after signing)")
    expected_prev = previous.seq if previous else 0
    if checkpoint.prev_seq != expected_prev:
        reason = (
            f"it follows checkpoint #{checkpoint.prev_seq}, but the one before it is "
            f"#{expected_prev} (a checkpoint was removed)"
        )
        return BrokenCheckpoint(seq, reason)
    if seq > head_seq or hash_at_seq is None:
        return BrokenCheckpoint(seq, f"event #{seq}, which it signs, is not in the chain")
    if checkpoint.head_hash != hash_at_seq:
        reason = f"event #{seq} does not have the hash it signs (the chain was rewritten)"
        return BrokenCheckpoint(seq, reason)
    return None


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


def count_since(*, session: Session, type: str, subject: str, since: datetime) -> int:
    """How many events of `type` about `subject` occurred after `since`."""
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.type == type,
                AuditEvent.subject == subject,
                AuditEvent.occurred_at > since,
            )
        )
        or 0
    )


def last_at(*, session: Session, type: str, subject: str) -> datetime | None:
    """When the last event of `type` about `subject` occurred."""
    return session.scalar(
        select(func.max(AuditEvent.occurred_at)).where(
            AuditEvent.type == type, AuditEvent.subject == subject
        )
    )


def search(
    *,
    session: Session,
    tenant_id: str,
    type_prefix: str = "",
    actor: str = "",
    subject: str = "",
    start: datetime | None = None,
    before: datetime | None = None,
    below_seq: int | None = None,
    limit: int = 50,
) -> list[AuditEvent]:
    """One tenant's events, newest first: types starting with `type_prefix`, actors and
    subjects containing `actor` and `subject`, `start <= occurred_at < before`; `below_seq`
    pages on from the last event of the previous page."""
    query = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
    if type_prefix:
        query = query.where(AuditEvent.type.startswith(type_prefix, autoescape=True))
    if actor:
        query = query.where(AuditEvent.actor.contains(actor, autoescape=True))
    if subject:
        query = query.where(AuditEvent.subject.contains(subject, autoescape=True))
    if start is not None:
        query = query.where(AuditEvent.occurred_at >= start)
    if before is not None:
        query = query.where(AuditEvent.occurred_at < before)
    if below_seq is not None:
        query = query.where(AuditEvent.seq < below_seq)
    return list(session.scalars(query.order_by(AuditEvent.seq.desc()).limit(limit)))
