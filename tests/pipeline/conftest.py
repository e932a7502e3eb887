from __future__ import annotations

from collections.abc import Callable

import pytest

from core.blobs import BlobStore
from core.db import session_scope
from core.settings import Settings
from pipeline import service, stages
from tests.conftest import TenantKeys

NewJobFactory = Callable[..., str]


@pytest.fixture
def new_job(settings: Settings, tenant: TenantKeys) -> NewJobFactory:
    """Store a job (not queued) and return its id; small images keep the tiny model fast."""

    def create(prompt: str = "a lighthouse in a storm", **overrides: object) -> str:
        fields: dict[str, object] = {
            "prompt": prompt,
            "variant": "schnell",
            "use": "commercial",
            "width": 256,
            "height": 256,
            "seed": 42,
            "n_images": 1,
        } | overrides
        with session_scope() as session:
            job = service.create_job(
                session=session,
                settings=settings,
                blobs=BlobStore(settings.blob_dir),
                tenant_id=tenant.id,
                actor="test",
                request=service.NewJob(**fields),  # type: ignore[arg-type]
            )
            return job.id

    return create


def run_all_stages(job_id: str) -> list[str]:
    """Run the chain in this process, as a worker would, until a stage says stop."""
    ran = []
    for stage in stages.STAGES:
        ran.append(stage)
        if not stages.STAGE_FUNCTIONS[stage](job_id, stages.default_context()):
            break
    return ran
