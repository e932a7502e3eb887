"""Signed checkpoints of the audit chain head, on SQLite and PostgreSQL: written by appends
every N events (in their transaction) and by the beat task; `verify_checkpoints` and
`clearance audit verify` catch a tampered event, checkpoint, signature or head."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import select, text

from api import auth
from api.cli import main
from api.models import Tenant
from audit import service, signing, tasks
from audit.models import AuditCheckpoint, AuditEvent, AuditHead
from audit.schemas import CheckpointResult
from core.db import read_scope, session_scope
from core.settings import Settings, get_settings
from tests.audit.test_chain import AbortedError, append_events, run_sql, stored_events

EVERY = 5


@pytest.fixture
def every_five(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CLEARANCE_AUDIT__CHECKPOINT_EVERY_EVENTS", str(EVERY))
    get_settings.cache_clear()
    return get_settings()


def checkpoints() -> list[AuditCheckpoint]:
    with read_scope() as session:
        return list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))


def verify_checkpoints(keys: dict[str, Ed25519PublicKey] | None = None) -> CheckpointResult:
    settings = get_settings()
    with read_scope() as session:
        assert service.verify(session=session).ok
        return service.verify_checkpoints(
            session=session,
            public_keys=signing.trusted_keys(settings) if keys is None else keys,
            every_events=settings.audit.checkpoint_every_events,
        )


def cli_verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", *args])
    return result.exit_code, result.output


def test_appends_write_a_signed_checkpoint_every_n_events(every_five: Settings) -> None:
    """Events 5 and 10 of 12 are checkpointed, each signed by the embedded key (created on
    first use, private file 0600, public key exported next to it) over the hash of that
    event, each naming the one before it."""
    append_events(12)

    events = {event.seq: event for event in stored_events()}
    found = checkpoints()
    assert [(c.seq, c.prev_seq, c.every_events) for c in found] == [(5, 0, 5), (10, 5, 5)]
    assert [c.head_hash for c in found] == [events[5].hash, events[10].hash]
    key_file = every_five.audit_signing_key_file
    assert key_file == every_five.data_dir / "audit-signing" / "signing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public = signing.load_public_key(signing.public_key_file(key_file))
    assert {c.key_id for c in found} == {signing.key_id(public)}
    result = verify_checkpoints()
    assert result.ok, result.broken
    assert (result.checkpoints_checked, result.last_seq) == (2, 10)


def test_a_checkpoint_rolls_back_with_its_event(every_five: Settings) -> None:
    """The checkpoint is written in the transaction of the event that makes it due: rolled
    back with that transaction, neither is stored, and the next append writes it instead."""
    append_events(EVERY - 1)

    def append_then_fail() -> None:
        with session_scope() as session:
            assert service.append(session=session, actor="a", type="t", subject="s").seq == EVERY
            assert [c.seq for c in session.scalars(select(AuditCheckpoint))] == [EVERY]
            raise AbortedError

    with pytest.raises(AbortedError):
        append_then_fail()

    assert checkpoints() == []
    append_events(1)
    assert [c.seq for c in checkpoints()] == [EVERY]


def test_a_rolled_back_change_leaves_neither_the_change_nor_its_event(settings: Settings) -> None:
    """No state change without its audit event and no event without its change: a tenant
    created in a transaction that then fails leaves no tenant and no `tenant.created`."""
    append_events(1)

    def create_then_fail() -> None:
        with session_scope() as session:
            auth.create_tenant(session=session, name="rolled-back", actor="test")
            assert session.scalar(select(Tenant).where(Tenant.name == "rolled-back")) is not None
            raise AbortedError

    with pytest.raises(AbortedError):
        create_then_fail()

    with read_scope() as session:
        assert session.scalar(select(Tenant).where(Tenant.name == "rolled-back")) is None
        types = session.scalars(select(AuditEvent.type)).all()
        assert "tenant.created" not in types
    with read_scope() as session:
        assert service.verify(session=session).ok

    with session_scope() as session:
        auth.create_tenant(session=session, name="committed", actor="test")
    with read_scope() as session:
        assert session.scalar(select(Tenant).where(Tenant.name == "committed")) is not None
        assert session.scalars(select(AuditEvent.type)).all()[-1] == "tenant.created"


def test_the_beat_task_checkpoints_the_head_once(settings: Settings) -> None:
    """The time-based task (run directly here, as beat would) checkpoints the head when
    events came since the last checkpoint, and does nothing otherwise: a redelivered run
    writes nothing twice."""
    assert tasks.checkpoint() is None  # empty chain: nothing to sign

    append_events(3)
    assert tasks.checkpoint() == 3
    assert tasks.checkpoint() is None
    append_events(2)
    assert tasks.checkpoint() == 5

    assert [(c.seq, c.prev_seq) for c in checkpoints()] == [(3, 0), (5, 3)]
    assert verify_checkpoints().ok


def test_beat_schedules_the_checkpoint_task(settings: Settings) -> None:
    from core.celery_app import app

    entry = app.conf.beat_schedule["audit-checkpoint"]
    assert entry["task"] == tasks.CHECKPOINT_TASK == tasks.checkpoint.name
    assert entry["schedule"] == settings.audit.checkpoint_every_minutes * 60


def test_cli_verify_counts_the_checkpoints(every_five: Settings) -> None:
    append_events(11)

    code, output = cli_verify()

    assert code == 0, output
    assert "audit chain OK: 11 events verified, head #11" in output
    assert "2 signed checkpoints verified, the last at #10" in output


def rewrite_chain_from(seq: int) -> None:
    """Alter event `seq` and recompute every hash after it and the head: the chain on its
    own verifies again; only the signed checkpoints can tell."""
    with session_scope() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        prev = events[seq - 2].hash if seq > 1 else service.GENESIS_HASH
        for event in events[seq - 1 :]:
            if event.seq == seq:
                event.actor = "someone-else"
            event.prev_hash = prev
            event.hash = prev = service.event_hash(
                seq=event.seq,
                occurred_at=event.occurred_at,
                actor=event.actor,
                tenant_id=event.tenant_id,
                type=event.type,
                subject=event.subject,
                payload=event.payload,
                prev_hash=event.prev_hash,
            )
            session.flush()
        head = session.get(AuditHead, 1)
        assert head is not None
        head.hash = prev


def test_a_rewritten_chain_is_caught_by_the_next_checkpoint(every_five: Settings) -> None:
    """Event 7 altered and every later hash recomputed: the chain verifies, but checkpoint
    #10 signs the old hash of event 10; checkpoint #5 still holds."""
    append_events(12)

    rewrite_chain_from(7)

    result = verify_checkpoints()
    assert result.broken is not None
    assert result.broken.seq == 10
    assert "rewritten" in result.broken.reason
    assert result.checkpoints_checked == 1
    code, output = cli_verify()
    assert code == 1
    assert "audit checkpoint BROKEN at checkpoint #10" in output


def test_cli_verify_names_a_tampered_event_before_the_checkpoints(every_five: Settings) -> None:
    append_events(12)
    run_sql("UPDATE audit_events SET payload = '{}' WHERE seq = 4")

    code, output = cli_verify()

    assert code == 1
    assert "audit chain BROKEN at event #4" in output


@pytest.mark.parametrize(
    ("column", "value"),
    [
        pytest.param("signature", "00" * 64, id="signature"),
        pytest.param("head_hash", "ab" * 32, id="head_hash"),
        pytest.param("prev_seq", 1, id="prev_seq"),
        pytest.param("every_events", 1000, id="every_events"),
    ],
)
def test_a_tampered_checkpoint_fails_its_signature(
    every_five: Settings, column: str, value: object
) -> None:
    append_events(12)
    run_sql(f"UPDATE audit_checkpoints SET {column} = :value WHERE seq = 10", value=value)

    result = verify_checkpoints()

    assert result.broken is not None
    assert result.broken.seq == 10
    assert "signature" in result.broken.reason
    code, output = cli_verify()
    assert code == 1
    assert "checkpoint #10" in output
    assert "signature does not verify" in output


def resign(checkpoint: AuditCheckpoint, key: Ed25519PrivateKey) -> str:
    return key.sign(
        service.checkpoint_message(
            seq=checkpoint.seq,
            prev_seq=checkpoint.prev_seq,
            head_hash=checkpoint.head_hash,
            created_at=checkpoint.created_at,
            every_events=checkpoint.every_events,
            key_id=checkpoint.key_id,
        )
    ).hex()


def test_a_validly_signed_checkpoint_of_a_wrong_head_is_caught(every_five: Settings) -> None:
    """A checkpoint whose signature is good but whose head hash is not event 5's (signed by
    whoever holds the key, for another chain) does not match this chain."""
    append_events(6)
    key = signing.signer(every_five).private_key
    with session_scope() as session:
        checkpoint = session.get(AuditCheckpoint, 5)
        assert checkpoint is not None
        checkpoint.head_hash = "ab" * 32
        checkpoint.signature = resign(checkpoint, key)

    result = verify_checkpoints()

    assert result.broken is not None
    assert result.broken.seq == 5
    assert "does not have the hash it signs" in result.broken.reason


def test_a_checkpoint_beyond_the_head_is_caught(every_five: Settings) -> None:
    """Events cut off the tail (head moved back with them) leave a checkpoint naming an
    event that is gone."""
    append_events(6)
    events = stored_events()
    run_sql("DELETE FROM audit_events WHERE seq > 4")
    run_sql("UPDATE audit_head SET seq = 4, hash = :h", h=events[3].hash)

    result = verify_checkpoints()

    assert result.broken is not None
    assert result.broken.seq == 5
    assert "not in the chain" in result.broken.reason


def test_a_removed_checkpoint_is_caught(every_five: Settings) -> None:
    """Removing one from the middle breaks the next one's link; removing the last leaves the
    head a whole interval past the one before."""
    append_events(16)
    run_sql("DELETE FROM audit_checkpoints WHERE seq = 10")

    middle = verify_checkpoints()
    assert middle.broken is not None
    assert middle.broken.seq == 15
    assert "removed" in middle.broken.reason

    run_sql("DELETE FROM audit_checkpoints WHERE seq = 15")
    tail = verify_checkpoints()
    assert tail.broken is not None
    assert tail.broken.seq == 5
    assert "no checkpoint after it" in tail.broken.reason


def test_a_checkpoint_by_an_untrusted_key_is_caught(every_five: Settings, tmp_path: Path) -> None:
    """Only keys from outside the database are trusted: verifying with another key (here
    named with --public-key) rejects the checkpoints."""
    append_events(6)
    other = tmp_path / "other.pub.pem"
    other.write_text(signing.public_pem(Ed25519PrivateKey.generate().public_key()))

    result = verify_checkpoints(keys={})
    assert result.broken is not None
    assert "not trusted" in result.broken.reason

    code, output = cli_verify("--public-key", str(other))
    assert code == 1
    assert "not trusted" in output
    own = signing.public_key_file(every_five.audit_signing_key_file)
    assert cli_verify("--public-key", str(own))[0] == 0


def test_a_named_signing_key_is_never_created(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file named in settings that does not exist is an error at the first
    checkpoint (which rolls back its event with it), not a new key."""
    missing = settings.data_dir / "nowhere" / "key.pem"
    monkeypatch.setenv("CLEARANCE_AUDIT__SIGNING_KEY_FILE", str(missing))
    monkeypatch.setenv("CLEARANCE_AUDIT__CHECKPOINT_EVERY_EVENTS", "1")
    get_settings.cache_clear()

    with pytest.raises(Exception, match="signing key"):
        append_events(1)

    assert not missing.exists()
    assert stored_events() == []
    with read_scope() as session:
        assert session.execute(text("SELECT count(*) FROM audit_checkpoints")).scalar() == 0
