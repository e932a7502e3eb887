"""Jobs and uploads: create, read back for the API. Queuing is `pipeline.tasks.enqueue`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from audit import service as audit
from core.blobs import BlobStore
from core.db import utcnow
from core.images import decode_image
from core.settings import Settings
from generation import costs
from generation import service as generation
from generation.models import CostEntry
from generation.schemas import MAX_INPUT_PIXELS, MAX_SEED, GenerationSpec
from generation.variants import get_variant
from pipeline.errors import (
    ImageNotFoundError,
    ImageNotReleasedError,
    JobNotFoundError,
    UploadNotFoundError,
)
from pipeline.models import CHECKING_PROMPT, GENERATING, QUEUED, Job, JobImage, Upload

# Jobs whose cost is not in the ledger yet: their estimate is held against the budget.
_UNCHARGED_STATES = (QUEUED, CHECKING_PROMPT, GENERATING)


@dataclass(frozen=True)
class NewJob:
    prompt: str
    variant: str
    use: str
    width: int
    height: int
    seed: int | None
    n_images: int
    steps: int | None = None
    project: str = ""
    input_image: str | None = None
    loras: list[tuple[str, float]] = field(default_factory=list)
    # The tenant's setting at submission: every image goes to a person.
    require_human_approval: bool = False


def store_upload(
    *, session: Session, blobs: BlobStore, tenant_id: str, actor: str, data: bytes
) -> Upload:
    """Keep an image to edit. It is decoded (and its size checked) before anything is stored."""
    image = decode_image(data, field="file", max_pixels=MAX_INPUT_PIXELS)
    sha256 = blobs.put(data)
    upload = session.scalar(
        select(Upload).where(Upload.tenant_id == tenant_id, Upload.blob_sha256 == sha256)
    )
    if upload is not None:
        return upload
    upload = Upload(
        tenant_id=tenant_id,
        blob_sha256=sha256,
        width=image.width,
        height=image.height,
        uploaded_by=actor,
    )
    session.add(upload)
    session.flush()
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="upload.stored",
        subject=f"upload:{upload.id}",
        payload={"sha256": sha256, "width": image.width, "height": image.height},
    )
    return upload


def _reserved(session: Session, tenant_id: str) -> list[tuple[str, Decimal]]:
    """(project, estimate) of the tenant's jobs that may still be charged: not final, and
    without entries in the ledger yet."""
    charged = select(CostEntry.id).where(CostEntry.job_id == Job.id).exists()
    rows = session.execute(
        select(Job.project, Job.estimated_cost_usd).where(
            Job.tenant_id == tenant_id, Job.state.in_(_UNCHARGED_STATES), ~charged
        )
    ).all()
    return [(project, estimate) for project, estimate in rows]


def get_upload(*, session: Session, tenant_id: str, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None or upload.tenant_id != tenant_id:
        raise UploadNotFoundError(f"upload {upload_id!r} does not exist", field="input_image")
    return upload


def create_job(
    *,
    session: Session,
    settings: Settings,
    blobs: BlobStore,
    tenant_id: str,
    actor: str,
    request: NewJob,
) -> Job:
    """Validate, check the budget and store a job; the caller enqueues it once the
    transaction commits. Nothing is stored or reserved when any check fails."""
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    upload = (
        get_upload(session=session, tenant_id=tenant_id, upload_id=request.input_image)
        if request.input_image
        else None
    )
    spec = GenerationSpec(
        prompt=request.prompt,
        variant=request.variant,
        width=request.width,
        height=request.height,
        seed=seed,
        n_images=request.n_images,
        steps=request.steps,
        input_image=blobs.get(upload.blob_sha256) if upload else None,
        loras=generation.resolve_loras(session=session, requested=request.loras),
    )
    source = generation.check_available(spec, settings)
    estimate = costs.estimate(
        spec, get_variant(spec.variant), api=source.kind == "api", settings=settings
    )
    costs.check_budgets(
        session=session,
        tenant_id=tenant_id,
        project=request.project,
        amount=estimate,
        reserved=lambda: _reserved(session, tenant_id),
        now=utcnow(),
    )
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
        steps=request.steps,
        project=request.project,
        input_image_sha256=upload.blob_sha256 if upload else None,
        loras=[{"name": name, "scale": scale} for name, scale in request.loras],
        estimated_cost_usd=estimate,
        require_human_approval=request.require_human_approval,
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
            "steps": job.steps,
            "project": job.project,
            "input_image_sha256": job.input_image_sha256,
            "loras": job.loras,
            "model": source.label,
            "estimated_cost_usd": str(estimate),
        },
    )
    return job


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    # Another tenant's job is reported as missing, not as forbidden: ids leak nothing.
    if job is None or job.tenant_id != tenant_id:
        raise JobNotFoundError(f"job {job_id!r} does not exist", field="job_id")
    return job


def job_costs(*, session: Session, job_id: str) -> dict[int, Decimal]:
    """What each image of the job cost, by image index."""
    rows = session.execute(
        select(CostEntry.image_index, CostEntry.amount_usd).where(CostEntry.job_id == job_id)
    ).all()
    return {index: amount for index, amount in rows}  # noqa: C416 (typed rows, not pairs)


def released_image(
    *,
    session: Session,
    blobs: BlobStore,
    tenant_id: str,
    image_id: str,
    image_format: Literal["png", "jpeg"] = "png",
) -> bytes:
    """The signed copy of a released image (C2PA manifest and IPTC XMP); never the unsigned
    generated one."""
    image = session.get(JobImage, image_id)
    if image is None or image.job.tenant_id != tenant_id:
        raise ImageNotFoundError(f"image {image_id!r} does not exist", field="image_id")
    if image.released_at is None:
        raise ImageNotReleasedError(
            f"image {image_id!r} is not released (job state: {image.job.state})",
            field="image_id",
        )
    signed = image.released_jpeg_sha256 if image_format == "jpeg" else image.released_sha256
    if signed is None:
        raise ImageNotReleasedError(
            f"image {image_id!r} was released before provenance signing; it has no signed "
            f"{image_format.upper()} copy",
            field="image_id",
        )
    return blobs.get(signed)
