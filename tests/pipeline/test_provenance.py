"""Release with provenance: every released image is served signed, as PNG and as JPEG, with a
C2PA manifest (trainedAlgorithmicMedia, model, licence, job, approving audit event) and IPTC
XMP; a changed byte invalidates it; no usable key means nothing is released. Real app, real
database (SQLite and PostgreSQL), real tiny model, real c2pa and exiftool."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import c2pa
import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api.app import create_app
from api.cli import main
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import read_scope
from core.settings import Settings
from generation.variants import VARIANTS
from pipeline.models import Job
from pipeline.provenance import DIGITAL_SOURCE_TYPE, RELEASE_ASSERTION
from tests.conftest import TenantKeys, reset_caches
from tests.pipeline.conftest import NewJobFactory, run_all_stages

# What c2pa reports for a manifest signed by our own local CA, which no reader trusts by
# default: everything else validates.
UNTRUSTED_LOCAL_CA = ["signingCredential.untrusted"]


@pytest.fixture
def no_sampling(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """No random quality sample to human review: these jobs are released automatically."""
    monkeypatch.setenv("CLEARANCE_ROUTING__SAMPLE_RATE", "0")
    reset_caches()
    from core.settings import get_settings

    return get_settings()


@pytest.fixture
def client(no_sampling: Settings) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def load(job_id: str) -> Job:
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        job.images  # noqa: B018 (loaded while the session is open)
        return job


def released_job(client: TestClient, tenant: TenantKeys) -> dict[str, Any]:
    created = client.post(
        "/v1/jobs",
        json={"prompt": "a lighthouse in a storm", "width": 256, "height": 256, "seed": 3},
        headers=tenant.headers(),
    ).json()
    run_all_stages(created["id"])
    job: dict[str, Any] = client.get(f"/v1/jobs/{created['id']}", headers=tenant.headers()).json()
    assert job["state"] == "released", job
    return job


def download(client: TestClient, tenant: TenantKeys, image: dict[str, Any], fmt: str) -> bytes:
    response = client.get(image["url"], params={"format": fmt}, headers=tenant.headers())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == f"image/{fmt}"
    return response.content


def approving_event(job_id: str) -> AuditEvent:
    with read_scope() as session:
        events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.subject == f"job:{job_id}", AuditEvent.type == "job.state_changed"
            )
        ).all()
    return max(
        (e for e in events if json.loads(e.payload)["to"] == "approved"), key=lambda e: e.seq
    )


def read_manifest(data: bytes, mime: str, trust: Path | None = None) -> tuple[str, dict[str, Any]]:
    """The validation state and the manifest store report, as c2pa's Reader gives them;
    `trust` adds a CA to the reader's trust anchors."""
    context = None
    if trust is not None:
        context = c2pa.Context(
            c2pa.Settings.from_dict({"trust": {"trust_anchors": trust.read_text()}})
        )
    with c2pa.Reader(mime, io.BytesIO(data), context=context) as reader:
        return reader.get_validation_state(), json.loads(reader.json())


def codes(report: dict[str, Any]) -> list[str]:
    return [status["code"] for status in report.get("validation_status", [])]


def active(report: dict[str, Any]) -> dict[str, Any]:
    manifest: dict[str, Any] = report["manifests"][report["active_manifest"]]
    return manifest


def assertion(manifest: dict[str, Any], label: str) -> dict[str, Any]:
    (found,) = [a["data"] for a in manifest["assertions"] if a["label"] == label]
    data: dict[str, Any] = found
    return data


def test_released_png_and_jpeg_carry_a_signed_manifest(
    client: TestClient, tenant: TenantKeys, no_sampling: Settings
) -> None:
    job = released_job(client, tenant)
    (image,) = job["images"]
    approval = approving_event(job["id"])
    variant = VARIANTS["schnell"]
    generated = BlobStore(no_sampling.blob_dir).get(image["sha256"])
    local_ca = no_sampling.certificate_chain_path.with_name("local-ca.pem")
    for fmt, mime in (("png", "image/png"), ("jpeg", "image/jpeg")):
        data = download(client, tenant, image, fmt)
        assert (
            hashlib.sha256(data).hexdigest()
            == image[f"released_{'jpeg_' if fmt == 'jpeg' else ''}sha256"]
        )

        state, report = read_manifest(data, mime)
        assert (state, codes(report)) == ("Valid", UNTRUSTED_LOCAL_CA), report
        # With the local CA as a trust anchor nothing at all is left to report.
        state, trusted = read_manifest(data, mime, trust=local_ca)
        assert (state, codes(trusted)) == ("Trusted", []), trusted

        manifest = active(report)
        (action,) = assertion(manifest, "c2pa.actions.v2")["actions"]
        assert action["action"] == "c2pa.created"
        assert action["digitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert action["softwareAgent"]["name"] == variant.title
        release = assertion(manifest, RELEASE_ASSERTION)
        assert release["job_id"] == job["id"]
        assert release["image_id"] == image["id"]
        assert release["generated_sha256"] == image["sha256"]
        assert release["model"] == job["model"]
        assert release["variant"] == "schnell"
        assert release["licence"] == {
            "id": variant.licence_id,
            "name": variant.licence_name,
            "commercial_use": variant.commercial_use,
        }
        assert release["approval"] == {
            "audit_event_seq": approval.seq,
            "audit_event_hash": approval.hash,
        }
        assert manifest["signature_info"]["common_name"] == "Clearance release signer"
    other = client.get(image["url"], params={"format": "gif"}, headers=tenant.headers())
    assert other.status_code == 422

    # The PNG is the generated image, pixel for pixel; the JPEG is that image encoded at the
    # configured quality.
    def pixels(data: bytes) -> np.ndarray[Any, Any]:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    reference = io.BytesIO()
    Image.open(io.BytesIO(generated)).convert("RGB").save(
        reference, format="JPEG", quality=no_sampling.provenance.jpeg_quality
    )
    assert np.array_equal(pixels(generated), pixels(download(client, tenant, image, "png")))
    assert np.array_equal(
        pixels(reference.getvalue()), pixels(download(client, tenant, image, "jpeg"))
    )

    # The audit log names the signed copies, the approval and the signing certificate.
    with read_scope() as session:
        (released,) = session.scalars(
            select(AuditEvent).where(
                AuditEvent.subject == f"job:{job['id']}", AuditEvent.type == "job.released"
            )
        ).all()
    payload = json.loads(released.payload)
    assert payload["images"] == [
        {
            "id": image["id"],
            "sha256": image["sha256"],
            "signed_sha256": image["released_sha256"],
            "signed_jpeg_sha256": image["released_jpeg_sha256"],
        }
    ]
    assert payload["approval_event_hash"] == approval.hash
    assert len(payload["signer"]["sha256"]) == 64


def exiftool() -> str:
    found = shutil.which("exiftool")
    if found is None:
        message = "exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, so this test must run, not skip")
        pytest.skip(message)
    return found


def test_exiftool_reads_the_iptc_digital_source_type(
    client: TestClient, tenant: TenantKeys, tmp_path: Path
) -> None:
    tool = exiftool()
    job = released_job(client, tenant)
    (image,) = job["images"]
    for fmt in ("png", "jpeg"):
        path = tmp_path / f"released.{fmt}"
        path.write_bytes(download(client, tenant, image, fmt))
        out = subprocess.run(
            [
                tool,
                "-json",
                "-XMP-iptcExt:DigitalSourceType",
                "-XMP-photoshop:Credit",
                "-XMP-xmp:CreatorTool",
                "-XMP-xmpRights:UsageTerms",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (tags,) = json.loads(out)
        assert tags["DigitalSourceType"] == DIGITAL_SOURCE_TYPE, fmt
        assert "FLUX.1 [schnell]" in tags["Credit"]
        assert tags["CreatorTool"] == job["model"]
        assert "Apache License 2.0" in tags["UsageTerms"]


def _flip_pixel_byte(data: bytes, fmt: str) -> bytes:
    """`data` with one byte of its pixel data changed (inside IDAT, or the JPEG scan)."""
    changed = bytearray(data)
    if fmt == "png":
        position = data.index(b"IDAT") + 4 + 10
    else:
        position = data.rindex(b"\xff\xda") + 40
        while changed[position] >= 0xFE:  # never make a marker out of scan data
            position += 1
    changed[position] ^= 0x01
    return bytes(changed)


def test_one_changed_byte_invalidates_the_manifest(client: TestClient, tenant: TenantKeys) -> None:
    job = released_job(client, tenant)
    (image,) = job["images"]
    for fmt, mime in (("png", "image/png"), ("jpeg", "image/jpeg")):
        data = download(client, tenant, image, fmt)
        state, report = read_manifest(_flip_pixel_byte(data, fmt), mime)
        assert state == "Invalid", fmt
        assert codes(report) == [*UNTRUSTED_LOCAL_CA, "assertion.dataHash.mismatch"], fmt


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_init_signing_creates_the_files_and_refuses_to_overwrite(settings: Settings) -> None:
    key, chain = settings.signing_key_path, settings.certificate_chain_path
    code, out, _ = run_cli("keys", "init-signing")
    assert code == 0
    assert f"signing key: {key}" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert chain.read_text().count("BEGIN CERTIFICATE") == 2  # signing certificate, then CA
    assert chain.with_name("local-ca.pem").exists()
    before = key.read_bytes(), chain.read_bytes()

    code, _, err = run_cli("keys", "init-signing")
    assert code == 1
    assert "pass --force to replace the signing key" in err
    assert (key.read_bytes(), chain.read_bytes()) == before

    code, _, _ = run_cli("keys", "init-signing", "--force")
    assert code == 0
    assert key.read_bytes() != before[0]
    assert chain.read_bytes() != before[1]


def assert_failed_closed(job_id: str, client: TestClient, tenant: TenantKeys, error: str) -> None:
    job = load(job_id)
    assert job.state == "failed"
    assert job.error is not None
    assert job.error.startswith("release: ")
    assert error in job.error
    for image in job.images:
        assert (image.released_at, image.released_sha256, image.released_jpeg_sha256) == (
            None,
            None,
            None,
        )
        for fmt in ("png", "jpeg"):
            response = client.get(
                f"/v1/images/{image.id}", params={"format": fmt}, headers=tenant.headers()
            )
            assert response.status_code == 409
    with read_scope() as session:
        released = session.scalars(
            select(AuditEvent).where(
                AuditEvent.subject == f"job:{job_id}", AuditEvent.type == "job.released"
            )
        ).all()
    assert released == []


def test_a_configured_key_that_is_missing_fails_the_release_closed(
    client: TestClient,
    tenant: TenantKeys,
    new_job: NewJobFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    missing = tmp_path / "prod" / "signing-key.pem"
    monkeypatch.setenv("CLEARANCE_PROVENANCE__SIGNING_KEY", str(missing))
    monkeypatch.setenv("CLEARANCE_PROVENANCE__CERTIFICATE_CHAIN", str(tmp_path / "prod" / "c.pem"))
    reset_caches()
    job_id = new_job()
    assert run_all_stages(job_id)[-1] == "release"
    assert_failed_closed(job_id, client, tenant, "cannot read the signing key")
    assert not missing.exists()  # a configured key is never made up


def test_a_corrupt_key_fails_the_release_closed(
    client: TestClient, tenant: TenantKeys, new_job: NewJobFactory, no_sampling: Settings
) -> None:
    assert run_cli("keys", "init-signing")[0] == 0
    key = no_sampling.signing_key_path
    key.write_bytes(key.read_bytes()[:100])
    job_id = new_job()
    assert run_all_stages(job_id)[-1] == "release"
    assert_failed_closed(job_id, client, tenant, "is not a readable PEM key")
    assert len(key.read_bytes()) == 100  # not replaced behind the operator's back


def test_a_key_that_does_not_match_the_chain_fails_the_release_closed(
    client: TestClient, tenant: TenantKeys, new_job: NewJobFactory, no_sampling: Settings
) -> None:
    assert run_cli("keys", "init-signing")[0] == 0
    chain = no_sampling.certificate_chain_path
    first = chain.read_bytes()
    assert run_cli("keys", "init-signing", "--force")[0] == 0
    chain.write_bytes(first)
    job_id = new_job()
    run_all_stages(job_id)
    assert_failed_closed(job_id, client, tenant, "is not for the key in")


def test_a_default_key_that_cannot_be_created_fails_the_release_closed(
    client: TestClient, tenant: TenantKeys, new_job: NewJobFactory, no_sampling: Settings
) -> None:
    blocked = no_sampling.signing_key_path.parent
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the signing folder should be")
    job_id = new_job()
    run_all_stages(job_id)
    assert_failed_closed(job_id, client, tenant, "cannot create the default signing key")
