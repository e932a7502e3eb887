"""The database layer: SQLite connection settings, UTC timestamps on both backends, and
transactions that let concurrent writers and readers get on with their work on SQLite."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from api.models import ApiKey, Tenant
from audit import service as audit
from audit.models import AuditEvent
from core.db import read_scope, session_scope
from core.settings import Settings
from generation.costs import set_budget
from generation.models import Budget
from tests.conftest import TenantKeys

# Runs a test that takes the `settings` fixture on the SQLite database only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# Not UTC on purpose: the stored and loaded value must be the same instant, expressed in UTC.
IST = timezone(timedelta(hours=5, minutes=30))
MOMENT = datetime(2024, 3, 1, 12, 30, 45, 123456, tzinfo=IST)


def count_events() -> int:
    with read_scope() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent)) or 0


@sqlite_only
def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(settings: Settings) -> None:
    """Every pooled SQLite connection, writing or reading, has WAL, a 30 s busy timeout and
    foreign keys enforced."""
    with session_scope() as writer, read_scope() as reader:
        for session in (writer, reader):
            assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert session.execute(text("PRAGMA busy_timeout")).scalar_one() == 30000
            assert session.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        # Two sessions open at once hold two different connections, so both were configured.
        assert writer.connection().connection.dbapi_connection is not (
            reader.connection().connection.dbapi_connection
        )


def test_foreign_keys_are_enforced(settings: Settings) -> None:
    """A row pointing at a parent that does not exist is refused (SQLite too, where foreign
    keys are off unless each connection turns them on)."""

    def insert_orphan_key() -> None:
        with session_scope() as session:
            session.add(ApiKey(tenant_id="no-such-tenant", role="admin", prefix="p", key_hash="h"))

    with pytest.raises(IntegrityError):
        insert_orphan_key()

    with read_scope() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_utc_datetime_round_trips_as_aware_utc(settings: Settings) -> None:
    """A timezone-aware timestamp comes back as the same instant, timezone-aware, in UTC."""
    with session_scope() as session:
        tenant = Tenant(name="acme", created_at=MOMENT)
        session.add(tenant)
        session.flush()
        tenant_id = tenant.id

    with read_scope() as session:
        loaded = session.get(Tenant, tenant_id)
        assert loaded is not None
        created_at = loaded.created_at

    assert created_at == MOMENT
    assert created_at.tzinfo is UTC
    assert created_at.replace(tzinfo=None) == datetime(2024, 3, 1, 7, 0, 45, 123456)


def test_utc_datetime_compares_as_the_same_instant_in_queries(settings: Settings) -> None:
    """A filter with the same instant in another zone finds the row; a later one does not."""
    with session_scope() as session:
        session.add(Tenant(name="acme", created_at=MOMENT))

    with read_scope() as session:
        same_instant = MOMENT.astimezone(UTC)
        found = session.scalars(select(Tenant.name).where(Tenant.created_at == same_instant))
        assert list(found) == ["acme"]
        later = MOMENT + timedelta(microseconds=1)
        assert session.scalar(select(Tenant.name).where(Tenant.created_at >= later)) is None


@sqlite_only
def test_sqlite_stores_utc_timestamps_as_utc_text(settings: Settings) -> None:
    """SQLite has no timezone type; the stored text is the UTC wall time, so text order is
    time order whatever zone a caller used."""
    with session_scope() as session:
        session.add(Tenant(name="acme", created_at=MOMENT))

    with read_scope() as session:
        raw = session.execute(text("SELECT created_at FROM tenants")).scalar_one()

    assert raw == "2024-03-01 07:00:45.123456"


def test_utc_datetime_refuses_naive_datetimes(settings: Settings) -> None:
    """A naive timestamp is ambiguous, so it is refused before it reaches the database."""

    def insert_naive() -> None:
        with session_scope() as session:
            session.add(Tenant(name="naive", created_at=datetime(2024, 3, 1, 12, 0)))

    with pytest.raises(StatementError, match="naive datetime"):
        insert_naive()

    with read_scope() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == 0
        with pytest.raises(StatementError, match="naive datetime"):
            session.scalar(select(Tenant).where(Tenant.created_at < datetime(2024, 3, 1)))


@sqlite_only
def test_concurrent_writers_on_one_sqlite_file_all_succeed(settings: Settings) -> None:
    """Many threads, each running many short read-then-write transactions (audit appends)
    against the same SQLite file, all commit: no "database is locked", no lost write."""
    threads, per_thread = 8, 40
    start = threading.Barrier(threads, timeout=60)

    def writer(worker: int) -> None:
        start.wait()
        for i in range(per_thread):
            with session_scope() as session:
                audit.append(
                    session=session,
                    actor=f"worker-{worker}",
                    type="test.write",
                    subject=f"{worker}-{i}",
                )
                if i % 10 == 0:
                    session.add(Tenant(name=f"tenant-{worker}-{i}"))

    with ThreadPoolExecutor(threads) as pool:
        for result in [pool.submit(writer, worker) for worker in range(threads)]:
            result.result()  # re-raises a writer's error, e.g. OperationalError

    assert count_events() == threads * per_thread
    with read_scope() as session:
        assert session.scalar(select(func.count()).select_from(Tenant)) == threads * 4
        assert audit.verify(session=session).ok


@sqlite_only
def test_read_scope_does_not_wait_for_an_open_write_transaction(settings: Settings) -> None:
    """While a writer holds its write lock, a reader still runs at once (no BEGIN IMMEDIATE,
    so no "database is locked" after the busy timeout) and sees the last committed state."""
    with session_scope() as session:
        audit.append(session=session, actor="test", type="test.seed", subject="s")

    with session_scope() as writer:
        audit.append(session=writer, actor="test", type="test.pending", subject="s")
        # The writer's BEGIN IMMEDIATE holds SQLite's write lock until this block ends.
        assert count_events() == 1

    assert count_events() == 2


@sqlite_only
def test_a_writer_commits_while_a_read_scope_is_open(settings: Settings) -> None:
    """An open reader does not hold up a writer, and keeps reading its own snapshot."""
    with read_scope() as reader:
        before = reader.scalar(select(func.count()).select_from(AuditEvent))
        with session_scope() as writer:
            audit.append(session=writer, actor="test", type="test.write", subject="s")
        during = reader.scalar(select(func.count()).select_from(AuditEvent))

    assert (before, during) == (0, 0)
    assert count_events() == 1


def test_two_transactions_creating_one_row_at_once_both_succeed(
    settings: Settings, tenant: TenantKeys
) -> None:
    """A first budget set twice at once (two admins, a retried request): the second
    transaction's insert waits on the unique key while the first is open, fails when it
    commits, and then updates the first's row (`core.db.locked_or_added`) instead of
    failing the request. On SQLite the second waits at BEGIN IMMEDIATE instead."""

    def set_launch_budget(session: Session, usd: str, actor: str) -> None:
        set_budget(
            session=session,
            tenant_id=tenant.id,
            project="launch",
            monthly_usd=Decimal(usd),
            actor=actor,
        )

    def second() -> None:
        with session_scope() as session:
            set_launch_budget(session, "20", "second")

    with ThreadPoolExecutor(1) as pool:
        with session_scope() as first:
            set_launch_budget(first, "10", "first")
            first.flush()
            waiting = pool.submit(second)
            if settings.db_url.startswith("postgresql"):
                # Commit only once the second is blocked on the first's uncommitted row.
                for _ in range(1000):
                    with read_scope() as reader:
                        blocked = reader.scalar(
                            text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        )
                    if blocked or waiting.done():
                        break
                    time.sleep(0.01)
                assert blocked, "the second transaction never waited on the first"
        waiting.result(timeout=60)

    with read_scope() as session:
        budgets = session.scalars(
            select(Budget).where(Budget.tenant_id == tenant.id, Budget.project == "launch")
        ).all()
    assert [b.monthly_usd for b in budgets] == [Decimal("20")]
