"""The audit hash chain on SQLite and PostgreSQL: appends link up, verify() names the first
event that was altered or removed, rolled-back appends leave no trace, and concurrent
appends from many transactions still form one gap-free chain."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import bindparam, select, text
from sqlalchemy.types import String, TypeEngine

from api.cli import main
from audit.models import AuditEvent, AuditHead
from audit.schemas import VerifyResult
from audit.service import GENESIS_HASH, append, event_hash, verify
from core.db import UTCDateTime, read_scope, session_scope
from core.settings import Settings


class AbortedError(Exception):
    """Raised inside a transaction to make `session_scope` roll it back."""


def append_events(count: int, *, actor: str = "user") -> None:
    """`count` events, each in its own transaction, as stages write them."""
    for i in range(count):
        with session_scope() as session:
            append(
                session=session,
                actor=actor,
                type="job.stage",
                subject=f"job-{i}",
                tenant_id="tenant-1",
                payload={"index": i, "decision": "allow"},
            )


def stored_events() -> list[AuditEvent]:
    with read_scope() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def head() -> tuple[int, str] | None:
    with read_scope() as session:
        row = session.get(AuditHead, 1)
        return (row.seq, row.hash) if row else None


def verify_now() -> VerifyResult:
    with read_scope() as session:
        return verify(session=session)


def run_sql(sql: str, **params: object) -> None:
    """Raw SQL in its own committed transaction: what someone with database access could do."""
    with session_scope() as session:
        session.execute(text(sql), params)


def assert_links_up(events: list[AuditEvent]) -> None:
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert [event.prev_hash for event in events] == [GENESIS_HASH] + [e.hash for e in events[:-1]]


def test_empty_chain_verifies(settings: Settings) -> None:
    """A database with no events yet is a valid (empty) chain."""
    result = verify_now()

    assert result.ok
    assert (result.events_checked, result.head_seq) == (0, 0)


def test_appends_are_numbered_from_one_and_linked(settings: Settings) -> None:
    """Each event gets the next seq and carries the previous event's hash; the head names the
    last one; verify() checks them all."""
    append_events(5)

    events = stored_events()
    assert_links_up(events)
    assert len({event.hash for event in events}) == 5
    assert head() == (5, events[-1].hash)
    result = verify_now()
    assert result.ok
    assert (result.events_checked, result.head_seq) == (5, 5)


def test_several_appends_in_one_transaction_are_linked(settings: Settings) -> None:
    """Appends that share one transaction (several changes committed together) chain too."""
    append_events(1)
    with session_scope() as session:
        seqs = [append(session=session, actor="a", type="t", subject=f"s{i}").seq for i in range(3)]

    assert seqs == [2, 3, 4]
    assert_links_up(stored_events())
    assert verify_now().ok


def test_payload_is_stored_as_canonical_json(settings: Settings) -> None:
    """The payload text is stable (sorted keys, no spaces, unicode kept), so it hashes the
    same on every backend and after every export."""
    with session_scope() as session:
        append(
            session=session,
            actor="a",
            type="t",
            subject="s",
            payload={"b": 1, "a": ["é", None]},
        )

    assert stored_events()[0].payload == '{"a":["é",null],"b":1}'
    assert verify_now().ok


TAMPERING = [
    pytest.param("payload", '{"decision":"block","index":2}', String(), id="payload"),
    pytest.param("actor", "someone-else", String(), id="actor"),
    pytest.param("occurred_at", datetime(2020, 1, 1, tzinfo=UTC), UTCDateTime(), id="occurred_at"),
    pytest.param("tenant_id", "tenant-2", String(), id="tenant_id"),
    pytest.param("type", "job.released", String(), id="type"),
    pytest.param("subject", "job-999", String(), id="subject"),
]


@pytest.mark.parametrize(("column", "value", "sql_type"), TAMPERING)
def test_altering_a_stored_event_breaks_the_chain_at_that_event(
    settings: Settings, column: str, value: object, sql_type: TypeEngine[object]
) -> None:
    """Changing any field of one stored event with a raw UPDATE makes verify() fail naming
    exactly that event; the events before it still verify."""
    append_events(5)

    with session_scope() as session:
        statement = text(f"UPDATE audit_events SET {column} = :value WHERE seq = 3")
        session.execute(statement.bindparams(bindparam("value", type_=sql_type)), {"value": value})

    result = verify_now()
    assert not result.ok
    assert result.broken is not None
    assert result.broken.seq == 3
    assert "altered" in result.broken.reason
    assert result.events_checked == 2


def test_rewriting_an_event_with_a_recomputed_hash_breaks_the_chain_at_the_next_event(
    settings: Settings,
) -> None:
    """Someone who alters an event and stores a freshly computed hash for it is still caught:
    the next event's prev_hash names the original hash."""
    append_events(5)
    original = stored_events()[1]
    forged = event_hash(
        seq=original.seq,
        occurred_at=original.occurred_at,
        actor="someone-else",
        tenant_id=original.tenant_id,
        type=original.type,
        subject=original.subject,
        payload=original.payload,
        prev_hash=original.prev_hash,
    )

    run_sql("UPDATE audit_events SET actor = 'someone-else', hash = :h WHERE seq = 2", h=forged)

    result = verify_now()
    assert result.broken is not None
    assert result.broken.seq == 3
    assert "prev_hash" in result.broken.reason
    assert result.events_checked == 2


@pytest.mark.parametrize("deleted", [1, 3, 4])
def test_deleting_an_event_names_the_missing_seq(settings: Settings, deleted: int) -> None:
    """Removing an event before the last one is reported as that seq missing."""
    append_events(5)

    run_sql("DELETE FROM audit_events WHERE seq = :seq", seq=deleted)

    result = verify_now()
    assert result.broken is not None
    assert result.broken.seq == deleted
    assert "missing" in result.broken.reason
    assert result.events_checked == deleted - 1


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_cutting_off_the_tail_without_touching_the_head_breaks_the_chain(
    settings: Settings, cut: int
) -> None:
    """Deleting the last events leaves the head naming an event that is gone: broken at the
    first removed seq."""
    append_events(5)

    run_sql("DELETE FROM audit_events WHERE seq > :keep", keep=5 - cut)

    assert head() is not None
    result = verify_now()
    assert result.broken is not None
    assert result.broken.seq == 5 - cut + 1
    assert result.events_checked == 5 - cut


def test_deleting_the_head_row_breaks_the_chain(settings: Settings) -> None:
    """Events without a head (someone removed it) are not a valid chain either."""
    append_events(3)

    run_sql("DELETE FROM audit_head")

    result = verify_now()
    assert result.broken is not None
    assert result.broken.seq == 1


def test_a_rolled_back_append_leaves_no_event(settings: Settings) -> None:
    """An append belongs to its caller's transaction: rolled back with it, it leaves no event
    and no head change, and the next append takes the seq it would have had."""
    append_events(2)
    head_before = head()

    def append_then_fail() -> None:
        with session_scope() as session:
            event = append(session=session, actor="a", type="job.failed", subject="job-x")
            assert event.seq == 3
            raise AbortedError

    with pytest.raises(AbortedError):
        append_then_fail()

    assert [event.seq for event in stored_events()] == [1, 2]
    assert head() == head_before
    assert verify_now().ok

    append_events(1)
    assert_links_up(stored_events())
    assert verify_now().ok


def run_concurrent_appends(threads: int, per_thread: int) -> None:
    """`threads` threads, released together, each appending `per_thread` events, one
    transaction per event."""
    start = threading.Barrier(threads, timeout=60)

    def appender(worker: int) -> None:
        start.wait()
        for i in range(per_thread):
            with session_scope() as session:
                append(
                    session=session,
                    actor=f"worker-{worker}",
                    type="test.concurrent",
                    subject=f"{worker}-{i}",
                )

    with ThreadPoolExecutor(threads) as pool:
        for result in [pool.submit(appender, worker) for worker in range(threads)]:
            result.result()  # re-raises an appender's error


def assert_one_gap_free_chain(expected_subjects: set[str], total: int) -> None:
    events = stored_events()
    assert len(events) == total
    assert_links_up(events)
    assert {event.subject for event in events} >= expected_subjects
    result = verify_now()
    assert result.ok, result.broken
    assert result.events_checked == total


def test_concurrent_appends_form_one_gap_free_chain(settings: Settings) -> None:
    """Appends racing from several threads, each in its own transaction, are serialised on
    the head row: one chain, seq 1..n without gaps or forks, every event stored once."""
    append_events(1)
    threads, per_thread = 6, 25

    run_concurrent_appends(threads, per_thread)

    subjects = {f"{worker}-{i}" for worker in range(threads) for i in range(per_thread)}
    assert_one_gap_free_chain(subjects, 1 + threads * per_thread)


def test_concurrent_first_appends_on_an_empty_chain(settings: Settings) -> None:
    """The very first appends race too (two processes on a fresh database): with no head row
    yet to lock, they must still not collide on seq 1."""
    threads, per_thread = 6, 5

    run_concurrent_appends(threads, per_thread)

    subjects = {f"{worker}-{i}" for worker in range(threads) for i in range(per_thread)}
    assert_one_gap_free_chain(subjects, threads * per_thread)


def test_cli_verify_reports_ok_and_exits_zero(settings: Settings) -> None:
    """`clearance audit verify` on an intact chain prints "audit chain OK" and exits 0."""
    append_events(3)

    result = CliRunner().invoke(main, ["audit", "verify"])

    assert result.exit_code == 0, result.output
    assert "audit chain OK" in result.output
    assert "3 events verified" in result.output


def test_cli_verify_names_the_tampered_event_and_exits_one(settings: Settings) -> None:
    """After one event is altered, `clearance audit verify` exits 1 naming its number."""
    append_events(5)
    run_sql("UPDATE audit_events SET payload = '{}' WHERE seq = 3")

    result = CliRunner().invoke(main, ["audit", "verify"])

    assert result.exit_code == 1, result.output
    assert "#3" in result.output
    assert "BROKEN" in result.output
    assert "audit chain OK" not in result.output
