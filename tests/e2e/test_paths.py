"""Jobs down every path through the real processes: released, in review through a PDQ
match, blocked by the licence rule, blocked by the blocklist, failed in a stage."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e

SMALL = ("--width", "256", "--height", "256")


@pytest.fixture
def running(service: Service, tiny_model_dir: Path) -> Service:
    # `dev` gets a registered model folder of its own; the test corrupts it later.
    dev_model = service.root / "dev-model"
    shutil.copytree(tiny_model_dir, dev_model)
    service.env |= {
        "CLEARANCE_POLICY__BLOCKLIST": json.dumps(["forbidden ritual"]),
        # Keypoint matches never count as copies here, so the retouched copy below is a
        # PDQ match for review, not an automatic rejection.
        "CLEARANCE_MATCHING__KEYPOINT_REJECT_INLIERS": "100000",
        "CLEARANCE_GENERATION__LOCAL_MODELS": json.dumps({"dev": str(dev_model)}),
    }
    service.cli("models", "register", "--variant", "dev")
    service.cli("tenants", "create", "acme")
    service.api_key = service.cli(
        "keys", "create", "--tenant", "acme", "--role", "requester"
    ).stdout.strip()
    service.start_api("--no-worker")
    service.start("worker", "worker")
    return service


def test_every_path(running: Service) -> None:
    service = running

    released = service.submit("a lighthouse in a storm", "--seed", "11", *SMALL)
    assert released["state"] == "released", service.logs()
    assert "offline fallback" in released["model"]
    (image,) = released["images"]
    with service.http() as client:
        png = client.get(image["url"])
    assert png.status_code == 200
    assert png.content.startswith(b"\x89PNG")

    # A retouched copy of the released image becomes the exemplar of a protected asset;
    # the same prompt and seed then generate an image PDQ matches (distance over the copy
    # threshold), which must go to a person.
    edited = ImageEnhance.Brightness(Image.open(io.BytesIO(png.content))).enhance(1.3)
    edited.save(service.root / "retouched.png")
    (service.root / "catalogue.yaml").write_text(
        "assets:\n  - id: storm-light\n    name: Storm Light\n    kind: artwork\n"
        "    owner: Example Studio\n    exemplars: [retouched.png]\n"
    )
    imported = service.cli("assets", "import", str(service.root / "catalogue.yaml"))
    assert "reference images added: 1" in imported.stdout
    matched = service.submit("a lighthouse in a storm", "--seed", "11", *SMALL, expect=3)
    assert matched["state"] == "in_review", service.logs()
    route = next(d for d in matched["decisions"] if d["stage"] == "route")
    pdq_reason = next(r for r in route["reasons"] if r["rule"] == "images.pdq_match")
    assert "Storm Light" in pdq_reason["detail"]
    assert pdq_reason["strength"] == "review"
    (held,) = matched["images"]
    assert held["url"] is None
    with service.http() as client:
        assert client.get(f"/v1/images/{held['id']}").status_code == 409

    licence = service.submit(
        "a lighthouse in a storm", "--variant", "dev", "--use", "commercial", expect=3
    )
    assert licence["state"] == "blocked"
    (decision,) = licence["decisions"]
    assert decision["reasons"][0]["rule"] == "licence.non_commercial"
    assert "Non-Commercial" in decision["reasons"][0]["detail"]
    assert [s["stage"] for s in licence["stages"]] == ["prompt_check"]
    assert licence["images"] == []

    blocked = service.submit("a Forbidden  Ritual at dawn", *SMALL, expect=3)
    assert blocked["state"] == "blocked"
    reason = blocked["decisions"][0]["reasons"][0]
    assert reason["rule"] == "blocklist"
    assert reason["matched"] == "Forbidden  Ritual"  # quoted exactly as written

    # The model cache corrupts itself after the worker verified it (the field reports it
    # after ~500 generations): the job fails, naming the file, and releases nothing.
    weights = service.root / "dev-model" / "transformer" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as f:
        f.seek(200)
        f.write(b"\x00" * 64)
    failed = service.submit(
        "a watercolour fox", "--variant", "dev", "--use", "non-commercial", *SMALL, expect=3
    )
    assert failed["state"] == "failed", service.logs()
    assert failed["error"].startswith("generate: ")
    assert "transformer/diffusion_pytorch_model.safetensors" in failed["error"]
    assert failed["images"] == []
    assert next(s for s in failed["stages"] if s["stage"] == "generate")["outcome"] == "error"
    assert service.cli("models", "verify", expect=1).stdout.count("changed") == 1

    verified = service.cli("audit", "verify")
    assert "audit chain OK" in verified.stdout


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_an_unreachable_broker_fails_the_job_instead_of_losing_it(service: Service) -> None:
    """A job that cannot be queued is not left `queued` forever: it ends `failed`, and the
    client is told to retry (503)."""
    service.cli("tenants", "create", "acme")
    service.api_key = service.cli(
        "keys", "create", "--tenant", "acme", "--role", "requester"
    ).stdout.strip()
    service.env["CLEARANCE_BROKER_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    service.start_api("--no-worker")
    with service.http() as client:
        response = client.post(
            "/v1/jobs", json={"prompt": "a lighthouse", "width": 256, "height": 256}
        )
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    done = service.cli("audit", "verify")
    assert "audit chain OK" in done.stdout
    import sqlite3

    with sqlite3.connect(service.root / "var" / "clearance.db") as connection:
        rows = connection.execute("SELECT state, error FROM jobs").fetchall()
    assert len(rows) == 1
    assert rows[0][0] == "failed"
    assert "broker" in rows[0][1]


@pytest.mark.parametrize("service", ["embedded"], indirect=True)
def test_a_worker_does_not_start_on_an_unverifiable_model(
    service: Service, tiny_model_dir: Path
) -> None:
    """A configured model folder that is not registered, or is incomplete, stops the worker
    at start, naming the setting and what is wrong, instead of failing jobs later."""
    model = service.root / "schnell-model"
    shutil.copytree(tiny_model_dir, model)
    service.env["CLEARANCE_GENERATION__LOCAL_MODELS"] = json.dumps({"schnell": str(model)})
    refused = service.cli("worker", expect=1)
    assert "is not registered" in refused.stderr
    assert "clearance models register --variant schnell" in refused.stderr

    service.cli("models", "register", "--variant", "schnell")
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    incomplete = service.cli("worker", expect=1)
    assert "CLEARANCE_GENERATION__LOCAL_MODELS['schnell']" in incomplete.stderr
    assert "vae/*.safetensors" in incomplete.stderr
