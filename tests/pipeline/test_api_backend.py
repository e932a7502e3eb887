"""Jobs on the Black Forest Labs API backend through the real stages, against the imitation
of the API in tests/generation/fake_bfl.py (the real API cannot be reached from here), on
SQLite and PostgreSQL. What matters most is money: the tests count the submissions the
provider billed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from api.app import create_app
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from core.settings import Settings, get_settings
from generation.errors import ProviderError
from generation.models import CostEntry, ProviderRequestRecord
from pipeline import service, stages, tasks
from pipeline.models import Job, JobStage
from tests.conftest import TenantKeys, queued_messages, reset_caches
from tests.generation.fake_bfl import FakeBfl, Fault, color_for, running_fake_bfl
from tests.pipeline.conftest import run_all_stages

KEY = "bfl-test-key"
MAX_RETRIES = 2
PRO_LABEL = "FLUX.1 [pro] via the Black Forest Labs API"


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeBfl, **extra: str) -> Settings:
    """Point the settings at the fake API, with short polls and retries."""
    env = {
        "BASE_URL": fake.base_url,
        "API_KEY": KEY,
        "POLL_INTERVAL_S": "0.01",
        "REQUEST_TIMEOUT_S": "5",
        "MAX_RETRIES": str(MAX_RETRIES),
    } | extra
    for name, value in env.items():
        monkeypatch.setenv(f"CLEARANCE_GENERATION__BFL__{name}", value)
    reset_caches()
    return get_settings()


@pytest.fixture
def fake(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBfl]:
    with running_fake_bfl(api_key=KEY) as server:
        use_fake(monkeypatch, server)
        yield server


def submit(tenant: TenantKeys, **fields: Any) -> str:
    """Store a job as POST /v1/jobs does (not queued); returns its id."""
    request: dict[str, Any] = {
        "prompt": "a lighthouse on a cliff at dusk",
        "variant": "pro",
        "use": "commercial",
        "width": 512,
        "height": 384,
        "seed": 41,
        "n_images": 2,
    } | fields
    settings = get_settings()
    with session_scope() as session:
        return service.create_job(
            session=session,
            settings=settings,
            blobs=BlobStore(settings.blob_dir),
            tenant_id=tenant.id,
            actor="test",
            request=service.NewJob(**request),
        ).id


def load(job_id: str) -> Job:
    with read_scope() as session:
        job = session.get_one(Job, job_id)
        _ = (job.stages, job.decisions, job.images)
        return job


def provider_requests(job_id: str) -> list[ProviderRequestRecord]:
    with read_scope() as session:
        return list(
            session.scalars(
                select(ProviderRequestRecord)
                .where(ProviderRequestRecord.job_id == job_id)
                .order_by(ProviderRequestRecord.image_index)
            )
        )


def cost_entries(job_id: str) -> list[CostEntry]:
    with read_scope() as session:
        return list(
            session.scalars(
                select(CostEntry).where(CostEntry.job_id == job_id).order_by(CostEntry.image_index)
            )
        )


def colour_and_size(job: Job, index: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    data = BlobStore(get_settings().blob_dir).get(job.images[index].blob_sha256)
    with Image.open(io.BytesIO(data)) as image:
        pixel = image.convert("RGB").getpixel((0, 0))
        assert isinstance(pixel, tuple)
        return (pixel[0], pixel[1], pixel[2]), image.size


def test_a_pro_job_is_released_with_the_providers_images(fake: FakeBfl, tenant: TenantKeys) -> None:
    """A pro job runs through every stage on the API: one billed submission per image,
    each recorded, the provider's images stored, the model named as the API, and each
    image charged the provider's price."""
    job_id = submit(tenant)
    assert run_all_stages(job_id) == list(stages.STAGES)
    job = load(job_id)
    assert job.state == "released", job.error
    assert job.model == PRO_LABEL
    assert job.estimated_cost_usd == Decimal("0.11")

    assert [(s.endpoint, s.seed, s.width, s.height) for s in fake.submissions] == [
        ("/v1/flux-pro-1.1", 41, 512, 384),
        ("/v1/flux-pro-1.1", 42, 512, 384),
    ]
    assert [(i.index, i.seed, i.width, i.height) for i in job.images] == [
        (0, 41, 512, 384),
        (1, 42, 512, 384),
    ]
    for index, seed in enumerate((41, 42)):
        assert colour_and_size(job, index) == (color_for(seed), (512, 384))
    assert [(r.image_index, r.request_id) for r in provider_requests(job_id)] == [
        (0, fake.submissions[0].id),
        (1, fake.submissions[1].id),
    ]
    assert [(e.kind, e.variant, e.gpu_seconds, e.amount_usd) for e in cost_entries(job_id)] == [
        ("api", "pro", None, Decimal("0.055")),
        ("api", "pro", None, Decimal("0.055")),
    ]


@pytest.mark.parametrize(
    ("prompt", "status"),
    [
        ("a forbidden temple at night", "Request Moderated"),
        ("an unsightly scene in a market", "Content Moderated"),
    ],
)
def test_provider_moderation_blocks_the_job(
    fake: FakeBfl, tenant: TenantKeys, prompt: str, status: str
) -> None:
    """When the provider's own moderation refuses the prompt or the image, the job is
    blocked at generate with a provider.moderation reason carrying the provider's words;
    no image is stored and the chain stops."""
    job_id = submit(tenant, prompt=prompt, n_images=1)
    assert run_all_stages(job_id) == ["prompt_check", "generate"]
    job = load(job_id)
    assert job.state == "blocked"
    assert job.images == []
    decision = next(d for d in job.decisions if d.stage == "generate")
    assert decision.decision == "block"
    (reason,) = decision.reasons
    assert reason["rule"] == "provider.moderation"
    assert reason["status"] == status
    assert "Moderation Reasons" in reason["provider_reasons"]
    assert len(fake.submissions) == 1


def test_a_redelivered_generate_stage_resumes_without_paying_again(
    fake: FakeBfl, tenant: TenantKeys
) -> None:
    """The provider accepts both images, then polling fails until the retries run out and
    the stage errors (as when a worker dies mid-stage). The stage run again, as a
    redelivered task, polls the recorded requests: exactly one billed submission per image,
    and the job completes with those images."""
    job_id = submit(tenant)
    assert stages.prompt_check(job_id, stages.default_context())
    fake.fail("poll", *[Fault(status=503, headers={"retry-after": "0"})] * (MAX_RETRIES + 1))
    with pytest.raises(ProviderError, match="gave up on GET"):
        stages.generate(job_id, stages.default_context())
    assert len(fake.submissions) == 2
    assert [r.request_id for r in provider_requests(job_id)] == [s.id for s in fake.submissions]
    assert load(job_id).state == "generating"
    assert cost_entries(job_id) == []

    assert run_all_stages(job_id) == list(stages.STAGES)
    job = load(job_id)
    assert job.state == "released", job.error
    assert len(fake.submissions) == 2
    assert [s.seed for s in fake.submissions] == [41, 42]
    for index, seed in enumerate((41, 42)):
        assert colour_and_size(job, index)[0] == color_for(seed)
    assert len(cost_entries(job_id)) == 2
    with read_scope() as session:
        generate_run = session.get_one(JobStage, (job_id, "generate"))
        assert generate_run.attempts == 2


def test_a_lost_answer_fails_the_job_and_is_never_resubmitted(
    fake: FakeBfl, tenant: TenantKeys
) -> None:
    """The provider bills the second submission but its answer is lost (HTTP 500). The
    generate task fails the job saying it may have been billed, and running the task again
    (a redelivery) submits nothing more."""
    job_id = submit(tenant)
    assert stages.prompt_check(job_id, stages.default_context())
    fake.fail("submit", Fault(), Fault(status=500, accept_first=True))
    tasks.generate.apply(args=(job_id,))
    job = load(job_id)
    assert job.state == "failed"
    assert job.error is not None
    assert "may have accepted and billed it" in job.error
    assert len(fake.submissions) == 2
    assert [r.image_index for r in provider_requests(job_id)] == [0]

    tasks.generate.apply(args=(job_id,))
    assert len(fake.submissions) == 2
    assert load(job_id).state == "failed"


def test_dev_can_be_routed_to_the_api(
    fake: FakeBfl, tenant: TenantKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CLEARANCE_GENERATION__BFL__VARIANTS='["dev"]', dev jobs go to the API's dev
    endpoint, are labelled as the API and charged its price, instead of running locally."""
    use_fake(monkeypatch, fake, VARIANTS='["dev"]')
    job_id = submit(tenant, variant="dev", use="non-commercial", n_images=1)
    assert run_all_stages(job_id) == list(stages.STAGES)
    job = load(job_id)
    assert job.state == "released", job.error
    assert job.model == "FLUX.1 [dev] via the Black Forest Labs API"
    assert job.estimated_cost_usd == Decimal("0.025")
    assert [(s.endpoint, s.seed) for s in fake.submissions] == [("/v1/flux-dev", 41)]
    assert [e.amount_usd for e in cost_entries(job_id)] == [Decimal("0.025")]


# --- at POST /v1/jobs ------------------------------------------------------------------------


def test_pro_without_an_api_key_is_503_naming_the_setting(
    settings: Settings, tenant: TenantKeys, broker_file: Path
) -> None:
    """With no API key configured, a pro job is refused with 503 model_unavailable naming
    the setting to set; nothing is stored or queued."""
    with TestClient(create_app()) as client:
        response = client.post(
            "/v1/jobs",
            json={"prompt": "a lighthouse", "variant": "pro", "width": 512, "height": 512},
            headers=tenant.headers(),
        )
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "model_unavailable"
    assert "CLEARANCE_GENERATION__BFL__API_KEY" in response.json()["detail"]
    assert queued_messages(broker_file) == 0
    with read_scope() as session:
        assert session.scalars(select(Job)).all() == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"variant": "pro", "width": 1040, "height": 512}, "multiple of 32"),
        ({"variant": "pro-ultra", "width": 2048, "height": 256}, "aspect ratio"),
    ],
)
def test_sizes_the_api_would_refuse_are_422_before_queuing(
    fake: FakeBfl, tenant: TenantKeys, broker_file: Path, body: dict[str, Any], says: str
) -> None:
    """Sizes the provider refuses (sides not a multiple of 32; Ultra beyond 21:9) are
    refused at submission on field width: nothing is queued or sent to the provider."""
    with TestClient(create_app()) as client:
        response = client.post(
            "/v1/jobs", json={"prompt": "a lighthouse", **body}, headers=tenant.headers()
        )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "width"
    assert says in response.json()["detail"]
    assert queued_messages(broker_file) == 0
    assert fake.submissions == []
