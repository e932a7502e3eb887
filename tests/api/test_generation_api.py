"""Generation features through the HTTP API in-process: uploads and Kontext jobs, the image
to edit checked against the catalogue, steps / images / LoRA validation, budgets (402),
costs and progress on the job, and GET /v1/usage. Real app, real database (SQLite and
PostgreSQL), real embedded broker file, real tiny model; stages run in this process."""

from __future__ import annotations

import hashlib
import io
import struct
import threading
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import skimage.data
import yaml
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from api.app import create_app
from audit.models import AuditEvent
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.settings import Settings
from generation import costs
from generation.errors import BudgetExceededError
from generation.schemas import GenerationSpec
from generation.variants import get_variant
from pipeline import service as jobs
from pipeline import stages
from pipeline.models import Job, Upload
from reference_index import index as reference_index
from reference_index.service import import_catalogue
from tests.conftest import TenantKeys, make_tenant, queued_messages, reset_caches
from tests.pipeline.conftest import run_all_stages

SMALL = {"width": 256, "height": 256, "seed": 1}
KONTEXT = {
    "variant": "kontext-dev",
    "use": "non-commercial",
    "prompt": "make the sky purple",
    "steps": 2,
    **SMALL,
}


def photo(name: str) -> npt.NDArray[np.uint8]:
    """A photo that ships with scikit-image."""
    array: npt.NDArray[np.uint8] = getattr(skimage.data, name)()
    return array


def encode(array: npt.NDArray[np.uint8], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def astronaut_png() -> bytes:
    return encode(photo("astronaut"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` and which holds no pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def count(model: type[Any]) -> int:
    with read_scope() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def blobs_stored(settings: Settings) -> list[Path]:
    root = settings.blob_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def upload(
    client: TestClient, tenant: TenantKeys, data: bytes, content_type: str = "image/png"
) -> Any:
    return client.post(
        "/v1/uploads",
        files={"file": ("image", data, content_type)},
        headers=tenant.headers(),
    )


def create(client: TestClient, tenant: TenantKeys, **body: Any) -> Any:
    return client.post(
        "/v1/jobs", json={"prompt": "a lighthouse", **SMALL, **body}, headers=tenant.headers()
    )


def get_job(client: TestClient, tenant: TenantKeys, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}", headers=tenant.headers())
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def nothing_queued(broker_file: Path) -> bool:
    return count(Job) == 0 and queued_messages(broker_file) == 0


# --- uploads --------------------------------------------------------------------------------


def test_uploads_accept_png_and_jpeg(
    client: TestClient, tenant: TenantKeys, settings: Settings
) -> None:
    """PNG and JPEG uploads are stored under their sha256 with their size; the same bytes
    uploaded again are the same upload."""
    png = astronaut_png()
    jpeg = encode(photo("camera"), "JPEG")
    first = upload(client, tenant, png)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["sha256"] == hashlib.sha256(png).hexdigest()
    assert (body["width"], body["height"]) == (512, 512)
    assert BlobStore(settings.blob_dir).get(body["sha256"]) == png

    second = upload(client, tenant, jpeg, "image/jpeg")
    assert second.status_code == 201, second.text
    assert second.json()["sha256"] == hashlib.sha256(jpeg).hexdigest()
    again = upload(client, tenant, png)
    assert again.status_code == 201
    assert again.json()["id"] == body["id"]
    assert count(Upload) == 2


@pytest.mark.parametrize(
    ("data", "content_type", "field", "says"),
    [
        pytest.param(astronaut_png(), "text/plain", "file", "'text/plain'", id="content-type"),
        pytest.param(astronaut_png(), "image/gif", "file", "image/png", id="gif-type"),
        pytest.param(
            b"this is not an image", "image/png", "file", "not a readable image", id="text"
        ),
        pytest.param(astronaut_png()[:3000], "image/png", "file", "not a readable image", id="cut"),
        pytest.param(
            png_header_only(8000, 6000), "image/png", "file", "48.0 megapixels", id="48MP"
        ),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(
    client: TestClient,
    tenant: TenantKeys,
    settings: Settings,
    data: bytes,
    content_type: str,
    field: str,
    says: str,
) -> None:
    """A wrong content type, bytes that are not an image, and an image over 40 megapixels
    (a header alone says so) are refused with 422 naming the field; no upload row and no
    blob is written."""
    response = upload(client, tenant, data, content_type)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field
    assert says in error["detail"]
    assert count(Upload) == 0
    assert blobs_stored(settings) == []


def test_an_upload_of_another_tenant_cannot_be_used(
    client: TestClient, tenant: TenantKeys, broker_file: Path
) -> None:
    """Another tenant's upload id, like an unknown one, is not found (404 on field
    input_image); nothing is stored or queued."""
    other = make_tenant("globex")
    theirs = upload(client, other, astronaut_png()).json()["id"]
    for upload_id in (theirs, "0" * 32):
        response = create(client, tenant, **KONTEXT, input_image=upload_id)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "upload_not_found"
        assert response.json()["field"] == "input_image"
    assert nothing_queued(broker_file)


# --- Kontext jobs ---------------------------------------------------------------------------


def test_kontext_job_runs_end_to_end(client: TestClient, tenant: TenantKeys) -> None:
    """A kontext-dev job with an uploaded image is queued with the image's sha256, passes
    the input check, generates images of the requested size and is released."""
    uploaded = upload(client, tenant, astronaut_png()).json()
    response = create(client, tenant, **(KONTEXT | {"width": 320}), input_image=uploaded["id"])
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["input_image_sha256"] == uploaded["sha256"]

    assert run_all_stages(created["id"]) == list(stages.STAGES)
    job = get_job(client, tenant, created["id"])
    assert job["state"] == "released", job["error"]
    assert job["input_image_sha256"] == uploaded["sha256"]
    decisions = {d["stage"]: d["decision"] for d in job["decisions"]}
    assert decisions["input_check"] == "approve"
    assert [(i["width"], i["height"]) for i in job["images"]] == [(320, 256)]
    served = client.get(job["images"][0]["url"], headers=tenant.headers())
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.size == (320, 256)


@pytest.mark.parametrize("verdict", ["approve", "reject"])
def test_an_input_image_of_a_protected_asset_goes_to_review_before_generation(
    client: TestClient,
    tenant: TenantKeys,
    settings: Settings,
    tmp_path: Path,
    broker_file: Path,
    verdict: str,
) -> None:
    """When the image to edit matches a registered protected asset, the job stops at
    prompt_check in review, with an input_check decision naming the asset and a review task;
    nothing is generated or charged. A reviewer's approval sends the job on to generation
    (queued from the generate stage) and through the rest of the checks to release; a
    rejection ends it."""
    folder = tmp_path / "catalogue"
    folder.mkdir()
    (folder / "astronaut.png").write_bytes(astronaut_png())
    catalogue = folder / "catalogue.yaml"
    catalogue.write_text(
        yaml.safe_dump(
            {
                "assets": [
                    {
                        "id": "eileen",
                        "name": "Eileen Collins portrait",
                        "kind": "character",
                        "exemplars": ["astronaut.png"],
                    }
                ]
            }
        )
    )
    blobs = BlobStore(settings.blob_dir)
    with session_scope() as session:
        import_catalogue(session=session, blobs=blobs, path=catalogue, actor="test")
        reference_index.build(session=session, settings=settings, blobs=blobs, actor="test")
    uploaded = upload(client, tenant, astronaut_png()).json()
    created = create(client, tenant, **KONTEXT, input_image=uploaded["id"]).json()

    assert run_all_stages(created["id"]) == ["prompt_check"]
    job = get_job(client, tenant, created["id"])
    assert job["state"] == "in_review"
    assert [s["stage"] for s in job["stages"]] == ["prompt_check"]
    decisions = {d["stage"]: d for d in job["decisions"]}
    assert decisions["prompt_check"]["decision"] == "allow"
    # An exact copy of an exemplar: the image check rejects it, and a person decides.
    assert decisions["input_check"]["decision"] == "reject"
    pdq = [r for r in decisions["input_check"]["reasons"] if r.get("matcher") == "pdq"]
    assert [(r["asset_id"], r["strength"]) for r in pdq] == [("eileen", "reject")]
    assert "PDQ distance 0" in pdq[0]["detail"]
    assert job["images"] == []
    assert Decimal(job["cost_usd"]) == 0

    reviewer = tenant.headers("reviewer")
    (task,) = client.get("/v1/reviews", headers=reviewer).json()["items"]
    assert task["job_id"] == created["id"]
    assert any(r.get("asset_id") == "eileen" for r in task["reasons"])
    assert client.post(f"/v1/reviews/{task['id']}/claim", headers=reviewer).status_code == 200
    queued_before = queued_messages(broker_file)
    decision = {"decision": verdict, "reason": "acceptable_use", "note": "a licensed photo"}
    if verdict == "reject":
        decision["reason"] = "infringement"
    response = client.post(f"/v1/reviews/{task['id']}/decision", headers=reviewer, json=decision)
    assert response.status_code == 200, response.text
    if verdict == "approve":
        # An exact copy is the high-risk band: a second person (four-eyes) approves too.
        assert task["required_approvals"] == 2
        second = tenant.headers("legal")
        assert client.post(f"/v1/reviews/{task['id']}/claim", headers=second).status_code == 200
        response = client.post(f"/v1/reviews/{task['id']}/decision", headers=second, json=decision)
        assert response.status_code == 200, response.text

    if verdict == "reject":
        assert get_job(client, tenant, created["id"])["state"] == "rejected"
        assert queued_messages(broker_file) == queued_before
        return
    assert get_job(client, tenant, created["id"])["state"] == "generating"
    assert queued_messages(broker_file) == queued_before + 1  # generation's task
    rest = stages.STAGES[stages.STAGES.index(stages.GENERATE) :]
    for stage in rest:
        if not stages.STAGE_FUNCTIONS[stage](created["id"], stages.default_context()):
            break
    job = get_job(client, tenant, created["id"])
    assert job["state"] == "released", job["error"]
    assert [s["stage"] for s in job["stages"]] == ["prompt_check", *rest]
    assert len(job["images"]) == 1


# --- validation before queuing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"steps": 9}, "steps", "steps 9 is out of range for variant 'schnell': use 1 to 8"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"variant": "dev", "use": "non-commercial", "steps": 51}, "steps", "1 to 50"),
        ({"n_images": 9}, "n_images", "less than or equal to 8"),
        ({"loras": [{"name": "watercolour"}]}, "loras", "LoRA 'watercolour' is not registered"),
        ({"loras": [{"name": "x", "scale": 3}]}, "loras.0.scale", "less than or equal to 2"),
        ({"variant": "kontext-dev", "use": "non-commercial"}, "input_image", "upload one"),
        ({"prompt": "a" * 300}, "prompt", "reads at most 256"),
    ],
)
def test_bad_generation_requests_are_refused_and_nothing_is_queued(
    client: TestClient,
    tenant: TenantKeys,
    broker_file: Path,
    body: dict[str, Any],
    field: str,
    says: str,
) -> None:
    """Steps outside the variant's range, more than 8 images, an unknown LoRA, an editing
    variant without an image, a prompt longer than the variant reads: 422 naming the field,
    and no job stored or queued."""
    response = create(client, tenant, **body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field
    assert says in response.json()["detail"]
    assert nothing_queued(broker_file)


def test_an_input_image_for_schnell_is_refused(
    client: TestClient, tenant: TenantKeys, broker_file: Path
) -> None:
    """A text-to-image variant with an input image: 422 on input_image, nothing queued."""
    uploaded = upload(client, tenant, astronaut_png()).json()
    response = create(client, tenant, input_image=uploaded["id"])
    assert response.status_code == 422
    assert response.json()["field"] == "input_image"
    assert "'kontext-dev'" in response.json()["detail"]
    assert nothing_queued(broker_file)


# --- budgets --------------------------------------------------------------------------------


def set_budget(tenant: TenantKeys, monthly_usd: str, project: str = "") -> None:
    with session_scope() as session:
        costs.set_budget(
            session=session,
            tenant_id=tenant.id,
            project=project,
            monthly_usd=Decimal(monthly_usd),
            actor="test",
        )


def job_created_events() -> int:
    with read_scope() as session:
        return (
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.type == "job.created")
            )
            or 0
        )


@pytest.mark.parametrize(("project", "field"), [("", "budget"), ("posters", "project")])
def test_a_job_over_budget_is_refused_with_402_and_nothing_is_stored(
    client: TestClient, tenant: TenantKeys, broker_file: Path, project: str, field: str
) -> None:
    """A job whose estimate passes the tenant's or the project's monthly budget is refused
    with 402 budget_exceeded naming the budget; no job, no queued task, no audit event."""
    set_budget(tenant, "0.00001", project=project)
    response = create(client, tenant, project=project)
    assert response.status_code == 402, response.text
    error = response.json()
    assert error["error"] == "budget_exceeded"
    assert error["field"] == field
    assert error["budget"]["project"] == project
    assert "monthly budget" in error["detail"]
    assert nothing_queued(broker_file)
    assert job_created_events() == 0


def test_queued_jobs_hold_their_estimate_against_the_budget(
    client: TestClient, tenant: TenantKeys, broker_file: Path, settings: Settings
) -> None:
    """A budget that covers one job's estimate refuses a second while the first is still
    queued: a burst of submissions cannot slip past it."""
    small = GenerationSpec(
        prompt="a lighthouse", variant="schnell", width=256, height=256, seed=1, n_images=1
    )
    one = costs.estimate(small, get_variant("schnell"), api=False, settings=settings)
    set_budget(tenant, str(one * Decimal("1.5")))
    first = create(client, tenant)
    assert first.status_code == 201, first.text
    assert Decimal(first.json()["estimated_cost_usd"]) == one
    second = create(client, tenant)
    assert second.status_code == 402, second.text
    assert "reserved by queued jobs" in second.json()["detail"]
    assert queued_messages(broker_file) == 1


def test_two_submissions_at_once_cannot_both_pass_a_budget_for_one(
    settings: Settings, tenant: TenantKeys
) -> None:
    """Two API processes submitting at the same moment (the first one's transaction still
    open when the second checks the budget) cannot both pass a budget that covers one job:
    the second is refused once it can see the first."""
    small = GenerationSpec(
        prompt="a lighthouse", variant="schnell", width=256, height=256, seed=1, n_images=1
    )
    one = costs.estimate(small, get_variant("schnell"), api=False, settings=settings)
    set_budget(tenant, str(one * Decimal("1.5")))
    first_checked, release_first = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def submit(name: str, hold: bool) -> None:
        try:
            with session_scope() as session:
                jobs.create_job(
                    session=session,
                    settings=settings,
                    blobs=BlobStore(settings.blob_dir),
                    tenant_id=tenant.id,
                    actor=f"api_key:{name}",
                    request=jobs.NewJob(
                        prompt="a lighthouse",
                        variant="schnell",
                        use="commercial",
                        width=256,
                        height=256,
                        seed=1,
                        n_images=1,
                    ),
                )
                if hold:
                    first_checked.set()
                    release_first.wait(30)
            outcomes[name] = "created"
        except Exception as error:
            outcomes[name] = error
        finally:
            first_checked.set()

    first = threading.Thread(target=submit, args=("first", True))
    first.start()
    first_checked.wait(30)
    second = threading.Thread(target=submit, args=("second", False))
    second.start()
    # Let the second get as far as it can while the first is still uncommitted.
    second.join(timeout=2)
    release_first.set()
    first.join(30)
    second.join(30)
    assert outcomes["first"] == "created"
    assert isinstance(outcomes["second"], BudgetExceededError), outcomes["second"]
    with read_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


@pytest.fixture
def pricey_client(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[TestClient]:
    """An app whose budget estimates are far above what the tiny model really takes:
    100 s per step-megapixel (the real cost is GPU seconds x the same rate)."""
    monkeypatch.setenv("CLEARANCE_GENERATION__GPU_SECONDS_PER_STEP_MEGAPIXEL", "100")
    reset_caches()
    with TestClient(create_app()) as test_client:
        yield test_client


def test_a_job_stops_holding_its_estimate_once_charged(
    pricey_client: TestClient, tenant: TenantKeys
) -> None:
    """Once the generate stage has written a job's real cost to the ledger, the job's
    estimate is no longer held against the budget: spending is never counted twice."""
    client = pricey_client
    first = create(client, tenant)
    assert first.status_code == 201, first.text
    estimate = Decimal(first.json()["estimated_cost_usd"])
    # Room for one estimate and the real cost of a tiny job, not for two estimates.
    set_budget(tenant, str(estimate * Decimal("1.5")))
    assert create(client, tenant).status_code == 402

    job_id = first.json()["id"]
    assert stages.prompt_check(job_id, stages.default_context())
    assert stages.generate(job_id, stages.default_context())
    charged = Decimal(get_job(client, tenant, job_id)["cost_usd"])
    assert 0 < charged < estimate / 2
    second = create(client, tenant)
    assert second.status_code == 201, second.json()


# --- cost, progress and usage ----------------------------------------------------------------


def test_a_finished_job_shows_its_cost_progress_and_usage(
    client: TestClient, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a job runs, it shows its GPU-seconds cost in total and per image, and the last
    denoising step as progress; GET /v1/usage adds it up for the month and shows the
    budget; another tenant sees none of it."""
    monkeypatch.setenv("CLEARANCE_GENERATION__GPU_USD_PER_SECOND", "2.5")
    reset_caches()
    set_budget(tenant, "1000")
    created = create(client, tenant, n_images=2, steps=3, project="posters").json()
    assert created["progress"] is None
    assert Decimal(created["cost_usd"]) == 0
    run_all_stages(created["id"])

    job = get_job(client, tenant, created["id"])
    assert job["state"] == "released", job["error"]
    assert job["progress"] == {"step": 3, "total": 3, "text": "step 3/3"}
    total = Decimal(job["cost_usd"])
    per_image = [Decimal(i["cost_usd"]) for i in job["images"]]
    assert total > 0
    assert len(per_image) == 2
    assert all(cost > 0 for cost in per_image)
    assert sum(per_image) == total

    usage = client.get("/v1/usage", headers=tenant.headers())
    assert usage.status_code == 200, usage.text
    report = usage.json()
    assert Decimal(report["total_usd"]) == total
    (line,) = report["lines"]
    assert (line["project"], line["variant"], line["kind"], line["images"]) == (
        "posters",
        "schnell",
        "local",
        2,
    )
    assert line["gpu_seconds"] > 0
    assert Decimal(line["amount_usd"]) == total
    (budget,) = report["budgets"]
    assert Decimal(budget["spent_usd"]) == total
    assert Decimal(budget["remaining_usd"]) == Decimal("1000") - total

    same_month = client.get(f"/v1/usage?month={report['month']}", headers=tenant.headers())
    assert same_month.json() == report
    before = client.get("/v1/usage?month=2020-01", headers=tenant.headers()).json()
    assert before["month"] == "2020-01"
    assert Decimal(before["total_usd"]) == 0
    assert before["lines"] == []
    other = client.get("/v1/usage", headers=make_tenant("globex").headers()).json()
    assert Decimal(other["total_usd"]) == 0
    assert other["lines"] == other["budgets"] == []


@pytest.mark.parametrize("month", ["bad", "2026-13", "2026-11-01"])
def test_usage_refuses_a_malformed_month(
    client: TestClient, tenant: TenantKeys, month: str
) -> None:
    """?month= must be YYYY-MM: anything else is 422 on field month."""
    response = client.get(f"/v1/usage?month={month}", headers=tenant.headers())
    assert response.status_code == 422
    assert response.json()["field"] == "month"
    assert "YYYY-MM" in response.json()["detail"]
