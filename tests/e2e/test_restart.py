"""What `make run` does, on the embedded defaults: seed the demo, serve the API with its
worker, stop with Ctrl-C, start again: every job and audit event is still there."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

SMALL = ("--width", "256", "--height", "256")


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_demo_survives_ctrl_c_and_a_restart(service: Service) -> None:
    seeded = service.cli("demo", "seed")
    service.api_key = (service.root / "var" / "demo-api-key").read_text().strip()
    assert f"export CLEARANCE_API_KEY={service.api_key}" in seeded.stderr
    demo_ids = re.findall(r"queued demo job ([0-9a-f]{32})", seeded.stderr)
    assert len(demo_ids) == 3

    service.start_api()  # with its worker, as `make run` does
    demo = [service.wait_settled(job_id) for job_id in demo_ids]
    assert [job["state"] for job in demo] == ["released", "released", "blocked"], service.logs()
    lighthouse = service.submit("a lighthouse in a storm", *SMALL)
    assert lighthouse["state"] == "released", service.logs()
    licence = service.submit(
        "a lighthouse in a storm", "--variant", "dev", "--use", "commercial", expect=3
    )
    assert licence["state"] == "blocked"
    assert "Non-Commercial" in licence["decisions"][0]["reasons"][0]["detail"]
    before = service.cli("audit", "verify").stdout
    assert "audit chain OK" in before

    # Ctrl-C stops the API and the worker it started; none of them is left running.
    service.interrupt("api")

    # The next `make run`: seeding again changes nothing and prints the same key.
    again = service.cli("demo", "seed")
    assert service.api_key in again.stderr
    assert "queued demo job" not in again.stderr
    service.start_api()
    with service.http() as client:
        for job in [*demo, lighthouse, licence]:
            stored = client.get(f"/v1/jobs/{job['id']}").json()
            assert (stored["state"], stored["images"]) == (job["state"], job["images"])
    assert service.cli("audit", "verify").stdout == before
    assert service.submit("a lighthouse in a storm", *SMALL)["state"] == "released"
