"""Exports of the audit log for legal, and their offline verification.

An export is two files: the events (JSON Lines or CSV, in seq order) and a manifest. The
manifest states the filter, the count, the first and last event hash, the chain head at the
time and the sha256 of the export's bytes, and is signed (Ed25519) over its canonical JSON.
It is stored as exactly that canonical JSON and a newline, so any change to its bytes, even
to spacing, is caught. Verifying needs only the two files and the public key:
`clearance audit verify-export FILE`.

Each exported event carries every hashed field, so its hash recomputes; where two exported
events are neighbours in the chain (seq n and n+1), the second's `prev_hash` must be the
first's hash. A tenant-filtered export skips other tenants' events, so it has gaps there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import IO, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import signing
from audit.errors import ExportInvalidError
from audit.models import AuditEvent, AuditHead
from audit.service import canonical_json, event_hash
from core.db import utcnow
from core.errors import InvalidInputError, choices

FORMATS = ("jsonl", "csv")
MANIFEST_FORMAT = "clearance-audit-export/1"
MANIFEST_SUFFIX = ".manifest.json"
# Every field the event hash covers, plus the hash: enough to recompute it.
FIELDS = ("seq", "occurred_at", "actor", "tenant_id", "type", "subject", "payload", "prev_hash")
COLUMNS = (*FIELDS, "hash")
_BATCH = 1000


@dataclass(frozen=True)
class ExportFilter:
    """Events with `start <= occurred_at < before` of one tenant (all when `tenant_id` is
    None). `asked` is the filter as given, for the manifest."""

    start: datetime | None
    before: datetime | None
    tenant_id: str | None
    asked: Mapping[str, str | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.asked,
            "tenant_id": self.tenant_id,
            "occurred_at_from": _iso(self.start),
            "occurred_at_before": _iso(self.before),
        }


@dataclass(frozen=True)
class ExportCheck:
    count: int
    first_seq: int | None
    last_seq: int | None
    gaps: int
    key_id: str
    manifest: Mapping[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value else None


def parse_bound(value: str | None, *, field: str, end: bool) -> tuple[datetime | None, str | None]:
    """An ISO date (a whole UTC day) or date-time (no zone: UTC) -> the bound, as `start`
    (inclusive) or, for an `end`, the first instant after it; and the text normalised."""
    if value is None or not value.strip():
        return None, None
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time(), tzinfo=UTC)
            return (moment + timedelta(days=1) if end else moment), day.isoformat()
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise InvalidInputError(
            f"{field}: {value!r} is not an ISO date (2026-01-31) or date-time "
            "(2026-01-31T12:00:00Z)",
            field=field,
        ) from e
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return (moment + timedelta(microseconds=1) if end else moment), _iso(moment)


def make_filter(
    *,
    start: str | None,
    end: str | None,
    tenant_id: str | None,
    tenant: str | None,
    fmt: str,
) -> ExportFilter:
    """Check and build a filter; errors name the field (`from`, `to`, `format`)."""
    if fmt not in FORMATS:
        raise InvalidInputError(f"format: {fmt!r} is not one of {choices(FORMATS)}", field="format")
    lower, start_text = parse_bound(start, field="from", end=False)
    upper, end_text = parse_bound(end, field="to", end=True)
    if lower is not None and upper is not None and lower >= upper:
        raise InvalidInputError(f"from: {start_text} is after to ({end_text})", field="from")
    asked = {"from": start_text, "to": end_text, "tenant": tenant}
    return ExportFilter(lower, upper, tenant_id, asked)


def event_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "actor": event.actor,
        "tenant_id": event.tenant_id,
        "type": event.type,
        "subject": event.subject,
        "payload": event.payload,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def _encode_jsonl(row: Mapping[str, Any]) -> bytes:
    return (canonical_json(row) + "\n").encode()


def _encode_csv(row: Mapping[str, Any] | None) -> bytes:
    # No tenant is an empty cell: tenant ids are never empty strings.
    buffer = io.StringIO()
    values = COLUMNS if row is None else ["" if row[c] is None else row[c] for c in COLUMNS]
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue().encode()


def write_export(
    *, session: Session, filter: ExportFilter, fmt: str, out: IO[bytes], signer: signing.Signer
) -> dict[str, Any]:
    """Write the matching events to `out` and return the signed manifest.

    Reads one snapshot (REPEATABLE READ on PostgreSQL), so the events, the count and the head
    in the manifest agree even while appends go on."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    head = session.get(AuditHead, 1)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, None)
    query = select(AuditEvent).where(AuditEvent.seq <= head_seq).order_by(AuditEvent.seq)
    if filter.start is not None:
        query = query.where(AuditEvent.occurred_at >= filter.start)
    if filter.before is not None:
        query = query.where(AuditEvent.occurred_at < filter.before)
    if filter.tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == filter.tenant_id)
    digest = hashlib.sha256()
    count, first, last = 0, None, None

    def emit(data: bytes) -> None:
        digest.update(data)
        out.write(data)

    if fmt == "csv":
        emit(_encode_csv(None))
    events = session.execute(query.execution_options(yield_per=_BATCH)).scalars()
    for event in events:
        row = event_row(event)
        emit(_encode_jsonl(row) if fmt == "jsonl" else _encode_csv(row))
        count += 1
        first = first or row
        last = row
    manifest: dict[str, Any] = {
        "manifest": MANIFEST_FORMAT,
        "export_format": fmt,
        "filter": filter.to_dict(),
        "count": count,
        "first_seq": first["seq"] if first else None,
        "first_hash": first["hash"] if first else None,
        "last_seq": last["seq"] if last else None,
        "last_hash": last["hash"] if last else None,
        "chain_head": {"seq": head_seq, "hash": head_hash},
        "sha256": digest.hexdigest(),
        "created_at": _iso(utcnow()),
        "key_id": signer.key_id,
    }
    manifest["signature"] = signer.sign(_signed_bytes(manifest))
    return manifest


def _signed_bytes(manifest: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in manifest.items() if k != "signature"}).encode()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest file: its canonical JSON (what is signed, plus the signature) and a
    newline."""
    return (canonical_json(manifest) + "\n").encode()


def verify_export(
    data: bytes, manifest_data: bytes, public_keys: Mapping[str, Ed25519PublicKey]
) -> ExportCheck:
    """Check an export against its manifest; raises ExportInvalidError naming the first
    problem. Order: the manifest (form, key, signature), then the export's bytes (sha256),
    then its events (count, hashes, links, first and last)."""
    manifest = _read_manifest(manifest_data)
    key = public_keys.get(str(manifest.get("key_id")))
    if key is None:
        trusted = ", ".join(sorted(k[:16] for k in public_keys)) or "none"
        raise ExportInvalidError(
            f"manifest: signed by key {str(manifest.get('key_id'))[:16]}, which is not trusted "
            f"here (trusted: {trusted}); pass the signer's public key with --public-key"
        )
    if not signing.verify_signature(key, _signed_bytes(manifest), str(manifest["signature"])):
        raise ExportInvalidError("manifest: the signature does not verify (manifest altered)")
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.get("sha256"):
        raise ExportInvalidError(
            f"export: its sha256 is {actual}, the manifest says {manifest.get('sha256')} "
            "(export altered)"
        )
    rows = list(_read_rows(data, str(manifest.get("export_format"))))
    if len(rows) != manifest.get("count"):
        raise ExportInvalidError(
            f"export: {len(rows)} events, the manifest says {manifest.get('count')}"
        )
    gaps = _check_rows(rows)
    for end, row in (("first", rows[0] if rows else None), ("last", rows[-1] if rows else None)):
        stated = (manifest.get(f"{end}_seq"), manifest.get(f"{end}_hash"))
        found = (row["seq"], row["hash"]) if row else (None, None)
        if stated != found:
            raise ExportInvalidError(f"export: the {end} event is not the one the manifest names")
    return ExportCheck(
        count=len(rows),
        first_seq=rows[0]["seq"] if rows else None,
        last_seq=rows[-1]["seq"] if rows else None,
        gaps=gaps,
        key_id=str(manifest["key_id"]),
        manifest=manifest,
    )


def _read_manifest(manifest_data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(manifest_data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportInvalidError(f"manifest: not JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("manifest") != MANIFEST_FORMAT:
        raise ExportInvalidError(f"manifest: not a {MANIFEST_FORMAT} manifest")
    if not isinstance(manifest.get("signature"), str):
        raise ExportInvalidError("manifest: no signature")
    if manifest_bytes(manifest) != manifest_data:
        raise ExportInvalidError(
            "manifest: not byte for byte in the form it was written in (manifest altered)"
        )
    return manifest


def _read_rows(data: bytes, fmt: str) -> Iterator[dict[str, Any]]:
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        raise ExportInvalidError(f"export: not UTF-8 ({e})") from e
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ExportInvalidError(f"export line {number}: not JSON ({e.msg})") from e
            if not isinstance(row, dict) or set(row) != set(COLUMNS) or type(row["seq"]) is not int:
                raise ExportInvalidError(f"export line {number}: not an audit event")
            yield row
    elif fmt == "csv":
        reader = csv.reader(io.StringIO(text, newline=""))
        if next(reader, None) != list(COLUMNS):
            raise ExportInvalidError(f"export: the CSV header is not {','.join(COLUMNS)}")
        for number, values in enumerate(reader, start=2):
            if len(values) != len(COLUMNS) or not values[0].isdigit():
                raise ExportInvalidError(f"export line {number}: not an audit event")
            row = dict(zip(COLUMNS, values, strict=True))
            yield {**row, "seq": int(values[0]), "tenant_id": row["tenant_id"] or None}
    else:
        raise ExportInvalidError(f"manifest: export_format {fmt!r} is not one of {FORMATS}")


def _check_rows(rows: list[dict[str, Any]]) -> int:
    """Recompute every event's hash and check the links between chain neighbours; returns how
    many gaps (events not in the export) lie between exported events."""
    gaps, previous = 0, None
    for row in rows:
        seq = row["seq"]
        try:
            recomputed = event_hash(
                seq=seq,
                occurred_at=datetime.fromisoformat(row["occurred_at"]),
                actor=row["actor"],
                tenant_id=row["tenant_id"],
                type=row["type"],
                subject=row["subject"],
                payload=row["payload"],
                prev_hash=row["prev_hash"],
            )
        except (TypeError, ValueError) as e:
            raise ExportInvalidError(f"event #{seq}: malformed ({e})") from e
        if recomputed != row["hash"]:
            raise ExportInvalidError(f"event #{seq}: its content does not match its hash")
        if previous is not None:
            if seq <= previous["seq"]:
                raise ExportInvalidError(f"event #{seq}: out of order after #{previous['seq']}")
            if seq == previous["seq"] + 1 and row["prev_hash"] != previous["hash"]:
                raise ExportInvalidError(
                    f"event #{seq}: its prev_hash is not the hash of event #{previous['seq']}"
                )
            gaps += seq != previous["seq"] + 1
        previous = row
    return gaps
