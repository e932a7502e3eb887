"""Exports of the audit log for legal, on SQLite and PostgreSQL: JSON Lines and CSV through
the API (a zip) and the CLI (a file and its manifest), tenant-scoped; `clearance audit
verify-export` passes on the untouched export and fails on a one-byte change anywhere."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from api.cli import main
from audit import signing
from audit.export import MANIFEST_SUFFIX
from audit.models import AuditEvent
from core.db import read_scope
from core.settings import Settings
from tests.conftest import TenantKeys, make_tenant


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture
def tenants(settings: Settings) -> tuple[TenantKeys, TenantKeys]:
    """Two tenants, each with a key per role (their creation is audited: 5 events each)."""
    return make_tenant("acme"), make_tenant("globex")


def events(tenant_id: str | None = None) -> list[AuditEvent]:
    with read_scope() as session:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if tenant_id is not None:
            query = query.where(AuditEvent.tenant_id == tenant_id)
        return list(session.scalars(query))


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["audit", *args])


def cli_export(out: Path, *args: str) -> Result:
    result = cli("export", "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    return result


def verify_export(path: Path, *args: str) -> Result:
    return cli("verify-export", str(path), *args)


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def exported_seqs(data: bytes, fmt: str) -> list[int]:
    lines = data.decode().splitlines()
    if fmt == "jsonl":
        return [json.loads(line)["seq"] for line in lines]
    return [int(line.split(",", 1)[0]) for line in lines[1:]]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_cli_export_verifies_and_holds_every_event(
    tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path, fmt: str
) -> None:
    """Without a tenant the CLI exports the whole chain; the manifest states the count, the
    first and last hash and the sha256; verify-export passes. The export is itself audited."""
    everything = events()
    out = tmp_path / f"audit.{fmt}"

    cli_export(out, "--format", fmt)

    manifest = json.loads(Path(f"{out}{MANIFEST_SUFFIX}").read_text())
    assert exported_seqs(out.read_bytes(), fmt) == [e.seq for e in everything]
    assert manifest["count"] == len(everything) == 10
    assert (manifest["first_hash"], manifest["last_hash"]) == (
        everything[0].hash,
        everything[-1].hash,
    )
    assert manifest["export_format"] == fmt
    assert manifest["filter"]["tenant_id"] is None
    result = verify_export(out)
    assert result.exit_code == 0, result.output
    assert f"export OK: {len(everything)} events (#1..#10), 0 gaps" in result.output
    assert events()[-1].type == "audit.exported"


def test_cli_export_of_one_tenant_has_only_its_events(
    tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path
) -> None:
    _, globex = tenants
    expected = [e.seq for e in events(globex.id)]
    out = tmp_path / "globex.csv"

    cli_export(out, "--tenant", "globex", "--format", "csv")

    assert exported_seqs(out.read_bytes(), "csv") == expected
    assert events(globex.id)[-1].type == "audit.exported"
    manifest = json.loads(Path(f"{out}{MANIFEST_SUFFIX}").read_text())
    assert manifest["filter"]["tenant"] == "globex"
    assert verify_export(out).exit_code == 0


def positions(size: int) -> list[int]:
    return sorted({0, 1, size // 3, size // 2, size - 2, size - 1})


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_one_byte_change_anywhere_fails_verify_export(
    tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path, fmt: str
) -> None:
    """Flipping one bit of one byte, at the start, middle or end of the export or of the
    manifest, makes verify-export exit 1 saying what is broken."""
    out = tmp_path / f"audit.{fmt}"
    cli_export(out, "--format", fmt)
    manifest = Path(f"{out}{MANIFEST_SUFFIX}")
    originals = {out: out.read_bytes(), manifest: manifest.read_bytes()}

    for path, original in originals.items():
        for position in positions(len(original)):
            flip_byte(path, position)
            result = verify_export(out)
            assert result.exit_code == 1, (path.name, position, result.output)
            assert "BROKEN" in result.output
            path.write_bytes(original)
    assert verify_export(out).exit_code == 0


def test_verify_export_names_what_was_changed(
    tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path
) -> None:
    out = tmp_path / "audit.jsonl"
    cli_export(out)
    manifest_path = Path(f"{out}{MANIFEST_SUFFIX}")
    original_manifest = manifest_path.read_bytes()

    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3] + lines[4:]))
    assert "export altered" in verify_export(out).output

    manifest = json.loads(original_manifest)
    manifest["count"] = 9
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")) + "\n")
    assert "signature does not verify" in verify_export(out).output

    manifest_path.write_text(json.dumps(json.loads(original_manifest), indent=2))
    assert "manifest altered" in verify_export(out).output


def test_verify_export_trusts_only_the_signers_key(
    tenants: tuple[TenantKeys, TenantKeys], settings: Settings, tmp_path: Path
) -> None:
    """Offline, legal names the public key (from `clearance audit public-key`); a manifest
    checked against another key fails."""
    out = tmp_path / "audit.jsonl"
    cli_export(out)
    printed = cli("public-key")
    assert printed.exit_code == 0
    own = tmp_path / "clearance.pub.pem"
    own.write_text(printed.stdout)
    other = tmp_path / "other.pub.pem"
    other.write_text(signing.public_pem(Ed25519PrivateKey.generate().public_key()))

    assert verify_export(out, "--public-key", str(own)).exit_code == 0
    refused = verify_export(out, "--public-key", str(other))
    assert refused.exit_code == 1
    assert "not trusted" in refused.output


def api_export(client: TestClient, keys: TenantKeys, role: str, **params: str) -> bytes:
    response = client.get("/v1/audit/export", params=params, headers=keys.headers(role))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    return response.content


def unzip(data: bytes) -> tuple[str, bytes, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        (manifest_name,) = [n for n in names if n.endswith(MANIFEST_SUFFIX)]
        name = manifest_name.removesuffix(MANIFEST_SUFFIX)
        assert sorted(names) == sorted([name, manifest_name])
        return name, archive.read(name), archive.read(manifest_name)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_api_export_for_legal_is_its_tenant_only(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path, fmt: str
) -> None:
    """Legal of acme gets a zip of acme's events alone (globex's are the gaps), and the zip
    verifies with one command."""
    acme, _ = tenants

    expected = [e.seq for e in events(acme.id)]

    data = api_export(client, acme, "legal", format=fmt)

    name, exported, manifest = unzip(data)
    assert name.endswith(f".{fmt}")
    assert exported_seqs(exported, fmt) == expected
    assert json.loads(manifest)["filter"]["tenant"] == "acme"
    archive = tmp_path / "export.zip"
    archive.write_bytes(data)
    result = verify_export(archive)
    assert result.exit_code == 0, result.output
    assert "export OK: 5 events" in result.output
    exported_event = events()[-1]
    assert (exported_event.type, exported_event.tenant_id) == ("audit.exported", acme.id)


def test_api_export_is_always_the_callers_own_tenant(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    """Keys belong to one tenant: even an admin key exports only its own tenant's trail."""
    acme, _ = tenants
    of_acme = [e.seq for e in events(acme.id)]

    _, data, _ = unzip(api_export(client, acme, "admin"))

    assert exported_seqs(data, "jsonl") == of_acme
    other = client.get("/v1/audit/export?tenant=globex", headers=acme.headers("admin"))
    assert other.status_code == 403
    assert other.json()["field"] == "tenant"


def test_a_changed_member_of_the_api_zip_fails(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path
) -> None:
    acme, _ = tenants
    name, exported, manifest = unzip(api_export(client, acme, "legal"))
    changed = bytearray(exported)
    changed[len(changed) // 2] ^= 0x01
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as rezipped:
        rezipped.writestr(name, bytes(changed))
        rezipped.writestr(name + MANIFEST_SUFFIX, manifest)

    result = verify_export(archive)

    assert result.exit_code == 1
    assert "export altered" in result.output


def test_api_export_refuses_other_roles_and_tenants(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys]
) -> None:
    acme, _ = tenants

    for role in ("requester", "reviewer"):
        response = client.get("/v1/audit/export", headers=acme.headers(role))
        assert response.status_code == 403
        assert response.json()["field"] == "role"
    other = client.get("/v1/audit/export?tenant=globex", headers=acme.headers("legal"))
    assert other.status_code == 403
    assert other.json()["field"] == "tenant"
    unknown = client.get("/v1/audit/export?tenant=nobody", headers=acme.headers("admin"))
    assert unknown.status_code == 403
    assert client.get("/v1/audit/export").status_code == 401


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"from": "yesterday"}, "from", id="bad-from"),
        pytest.param({"to": "2026-13-01"}, "to", id="bad-to"),
        pytest.param({"from": "2026-02-01", "to": "2026-01-31"}, "from", id="from-after-to"),
        pytest.param({"format": "xml"}, "format", id="bad-format"),
    ],
)
def test_api_export_names_a_bad_parameter(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys], params: dict[str, str], field: str
) -> None:
    acme, _ = tenants

    response = client.get("/v1/audit/export", params=params, headers=acme.headers("legal"))

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_input"
    assert body["field"] == field


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(["--from", "yesterday"], "--from", id="bad-from"),
        pytest.param(["--to", "2026-01-32"], "--to", id="bad-to"),
        pytest.param(["--from", "2026-02-01", "--to", "2026-01-31"], "--from", id="from-after-to"),
        pytest.param(["--format", "xml"], "--format", id="bad-format"),
    ],
)
def test_cli_export_names_a_bad_option(
    settings: Settings, tmp_path: Path, args: list[str], option: str
) -> None:
    result = cli("export", "--out", str(tmp_path / "x.jsonl"), *args)

    assert result.exit_code == 2
    assert option in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_export_filters_by_time(
    client: TestClient, tenants: tuple[TenantKeys, TenantKeys], tmp_path: Path
) -> None:
    """`from` and `to` are inclusive; a date is a whole UTC day; a date-time may carry a
    zone."""
    acme, _ = tenants
    today = datetime.now(UTC).date()
    count = len(events(acme.id))

    def exported(**params: str) -> int:
        _, data, manifest = unzip(api_export(client, acme, "admin", **params))
        assert json.loads(manifest)["count"] == len(data.splitlines())
        return len(data.splitlines())

    assert exported(**{"from": str(today), "to": str(today)}) == count
    assert exported(**{"from": str(today + timedelta(days=1))}) == 0
    assert exported(to=str(today - timedelta(days=1))) == 0
    middle = events(acme.id)[4].occurred_at
    assert exported(to=middle.isoformat()) == 5
    assert exported(**{"from": middle.astimezone().isoformat()}) >= count - 4
    empty = tmp_path / "empty.jsonl"
    cli_export(empty, "--from", str(today + timedelta(days=1)))
    result = verify_export(empty)
    assert result.exit_code == 0, result.output
    assert "export OK: 0 events" in result.output
