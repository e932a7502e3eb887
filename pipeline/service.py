"""Jobs: create, enqueue the chain, read back for the API."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from audit import service as audit
from core.blobs import BlobStore
from core.settings import Settings
from generation import service as generation
from generation.schemas import MAX_SEED, GenerationSpec
from pipeline.errors import ImageNotFoundError, ImageNotReleasedError, JobNotFoundError
from pipeline.models import Job, JobImage


@dataclass(frozen=True)
class NewJob:
    prompt: str
    variant: str
    use: str
    width: int
    height: int
    seed: int | None
    n_images: int


def create_job(
    *, session: Session, settings: Settings, tenant_id: str, actor: str, request: NewJob
) -> Job:
    """Validate and store a job; the caller enqueues it once the transaction commits."""
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    spec = GenerationSpec(
        prompt=request.prompt,
        variant=request.variant,
        width=request.width,
        height=request.height,
        seed=seed,
        n_images=request.n_images,
    )
    # Refuse what cannot run here before anything is stored or queued.
    generation.check_available(spec, settings)
    job = Job(
        tenant_id=tenant_id,
        created_by=actor,
        prompt=request.prompt,
        variant=request.variant,
        use=request.use,
        width=request.width,
        height=request.height,
        seed=seed,
        n_images=request.n_images,
    )
    session.add(job)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="job.created",
        subject=f"job:{job.id}",
        payload={
            "prompt": job.prompt,
            "variant": job.variant,
            "use": job.use,
            "width": job.width,
            "height": job.height,
            "seed": job.seed,
            "n_images": job.n_images,
        },
    )
    return job


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    # Another tenant's job is reported as missing, not as forbidden: ids leak nothing.
    if job is None or job.tenant_id != tenant_id:
        raise JobNotFoundError(f"job {job_id!r} does not exist", field="job_id")
    return job


def released_image(*, session: Session, blobs: BlobStore, tenant_id: str, image_id: str) -> bytes:
    image = session.get(JobImage, image_id)
    if image is None or image.job.tenant_id != tenant_id:
        raise ImageNotFoundError(f"image {image_id!r} does not exist", field="image_id")
    if image.released_at is None:
        raise ImageNotReleasedError(
            f"image {image_id!r} is not released (job state: {image.job.state})",
            field="image_id",
        )
    return blobs.get(image.blob_sha256)
