"""Issue 6's promise through the real processes: with a tenant that requires human approval,
a job waits for a reviewer, is released once approved, its image carries a C2PA manifest
that validates, and the audit trail and a legal export verify, and stop verifying after a
one-byte change."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import c2pa
import httpx
import pytest
from sqlalchemy import create_engine, text

from pipeline.provenance import DIGITAL_SOURCE_TYPE
from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e


def key(service: Service, role: str) -> str:
    return service.cli("keys", "create", "--tenant", "careful", "--role", role).stdout.strip()


def client(service: Service, api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=service.api_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


def wait_for(service: Service, job_id: str, state: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with service.http() as http:
        while time.monotonic() < deadline:
            job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == state:
                return job
            time.sleep(0.2)
    raise AssertionError(f"job {job_id} never became {state}\n{service.logs()}")


def flip_one_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def database_url(service: Service) -> str:
    return service.env.get(
        "CLEARANCE_DATABASE_URL",
        f"sqlite:///{Path(service.env['CLEARANCE_DATA_DIR'])}/clearance.db",
    )


def test_a_reviewer_approves_and_the_release_and_the_audit_trail_verify(
    service: Service, tmp_path: Path
) -> None:
    service.cli("tenants", "create", "careful", "--require-human-approval")
    service.api_key = key(service, "requester")
    reviewer, legal = key(service, "reviewer"), key(service, "legal")
    service.start_api()

    # Exit status 3: the job waits for a person.
    job = service.submit(
        "a lighthouse in a storm", "--seed", "5", "--width", "256", "--height", "256", expect=3
    )
    assert job["state"] == "in_review", service.logs()
    with client(service, reviewer) as http:
        (task,) = http.get("/v1/reviews", params={"state": "open"}).json()["items"]
        assert (task["job_id"], task["band"]) == (job["id"], "approval-required")
        assert http.post(f"/v1/reviews/{task['id']}/claim").status_code == 200
        decided = http.post(
            f"/v1/reviews/{task['id']}/decision",
            json={"decision": "approve", "reason": "acceptable_use", "note": "as briefed"},
        )
        assert decided.status_code == 200, decided.text
    released = wait_for(service, job["id"], "released")

    (image,) = released["images"]
    with service.http() as http:
        png = http.get(image["url"])
    assert png.status_code == 200
    with c2pa.Reader("image/png", io.BytesIO(png.content)) as reader:
        state = reader.get_validation_state()
        report = json.loads(reader.json())
    # Valid; the local CA of the embedded default is not a public trust anchor.
    assert state == "Valid", report
    assert [s["code"] for s in report.get("validation_status", [])] == [
        "signingCredential.untrusted"
    ]
    manifest = report["manifests"][report["active_manifest"]]
    (actions,) = [a["data"] for a in manifest["assertions"] if a["label"] == "c2pa.actions.v2"]
    assert actions["actions"][0]["digitalSourceType"] == DIGITAL_SOURCE_TYPE

    assert "audit chain OK" in service.cli("audit", "verify").stdout
    export = tmp_path / "export.jsonl"
    with client(service, legal) as http:
        assert http.get("/v1/audit/export", params={"format": "jsonl"}).status_code == 200
    service.cli("audit", "export", "--tenant", "careful", "--out", str(export))
    service.cli("audit", "verify-export", str(export))
    assert f"job:{job['id']}" in export.read_text()

    # A one-byte change in the export, or in its manifest, is caught offline.
    manifest_file = Path(f"{export}.manifest.json")
    for changed in (export, manifest_file):
        original = changed.read_bytes()
        flip_one_byte(changed, len(original) // 2)
        assert service.cli("audit", "verify-export", str(export), expect=None).returncode == 1
        changed.write_bytes(original)
    service.cli("audit", "verify-export", str(export))

    # ... and so is a one-byte change in the stored trail.
    service.stop_all()
    engine = create_engine(database_url(service))
    with engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = actor || 'x' WHERE seq = 2"))
    engine.dispose()
    broken = service.cli("audit", "verify", expect=1)
    assert "BROKEN at event #2" in broken.stdout + broken.stderr
