"""Jobs and uploads: create, read back for the API. Queuing is `pipeline.tasks.enqueue`."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from audit import service as audit
from core.blobs import BlobStore
from core.db import utcnow
from core.errors import InvalidInputError, choices
from core.images import decode_image
from core.settings import Settings
from generation import costs
from generation import service as generation
from generation.models import CostEntry
from generation.schemas import MAX_INPUT_PIXELS, MAX_SEED, GenerationSpec
from generation.variants import get_variant
from pipeline.errors import (
    IdempotencyKeyReusedError,
    ImageNotFoundError,
    ImageNotReleasedError,
    JobFinalError,
    JobNotFoundError,
    UploadNotFoundError,
)
from pipeline.models import (
    CANCELLED,
    CHECKING_PROMPT,
    FINAL_STATES,
    GENERATING,
    IN_REVIEW,
    JOB_STATES,
    QUEUED,
    Job,
    JobImage,
    JobRequestKey,
    Upload,
)
from pipeline.stages import set_state
from review import queue

# Jobs whose cost is not in the ledger yet: their estimate is held against the budget.
_UNCHARGED_STATES = (QUEUED, CHECKING_PROMPT, GENERATING)
# How long an Idempotency-Key is remembered; a key older than this starts a new job.
IDEMPOTENCY_TTL = timedelta(hours=24)
IDEMPOTENCY_HEADER = "Idempotency-Key"


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
        loras=generation.resolve_loras(
            session=session, requested=request.loras, tenant_id=tenant_id
        ),
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


@dataclass(frozen=True)
class JobFilter:
    """Filters of a job listing; None means any."""

    state: str | None = None
    variant: str | None = None
    project: str | None = None
    created_by: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive


def list_jobs(
    *, session: Session, tenant_id: str, filters: JobFilter, offset: int = 0, limit: int = 50
) -> tuple[list[Job], int]:
    """A page of the tenant's jobs, newest first, and how many match in all."""
    if filters.state is not None and filters.state not in JOB_STATES:
        raise InvalidInputError(
            f"state {filters.state!r} is not one of {choices(JOB_STATES)}", field="state"
        )
    if (
        filters.created_from is not None
        and filters.created_to is not None
        and filters.created_from >= filters.created_to
    ):
        raise InvalidInputError("created_from must be before created_to", field="created_from")
    conditions: list[Any] = [Job.tenant_id == tenant_id]
    for column, value in (
        (Job.state, filters.state),
        (Job.variant, filters.variant),
        (Job.project, filters.project),
        (Job.created_by, filters.created_by),
    ):
        if value is not None:
            conditions.append(column == value)
    if filters.created_from is not None:
        conditions.append(Job.created_at >= filters.created_from)
    if filters.created_to is not None:
        conditions.append(Job.created_at < filters.created_to)
    total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    found = session.scalars(
        select(Job)
        .where(*conditions)
        .options(selectinload(Job.stages), selectinload(Job.decisions), selectinload(Job.images))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return list(found), total


def costs_of_jobs(*, session: Session, job_ids: list[str]) -> dict[str, dict[int, Decimal]]:
    """`job_costs` of many jobs in one query: job id → image index → cost."""
    result: dict[str, dict[int, Decimal]] = {job_id: {} for job_id in job_ids}
    if job_ids:
        rows = session.execute(
            select(CostEntry.job_id, CostEntry.image_index, CostEntry.amount_usd).where(
                CostEntry.job_id.in_(job_ids)
            )
        ).all()
        for job_id, index, amount in rows:
            result[job_id][index] = amount
    return result


def cancel_job(
    *, session: Session, tenant_id: str, job_id: str, actor: str, reason: str = ""
) -> Job:
    """Stop a job that is not final yet. The job is locked, so a stage recording its results
    at the same moment either commits first (and the cancellation follows it) or finds the job
    cancelled and drops them (`stages._reclaim`). Its budget reservation ends with it: only
    jobs in an uncharged state hold one. An open review task of the job is withdrawn."""
    seen = session.get(Job, job_id)
    if seen is None or seen.tenant_id != tenant_id:
        raise JobNotFoundError(f"job {job_id!r} does not exist", field="job_id")
    # Review tasks are locked before the job, in the order a review decision locks them, so
    # a cancellation and a decision at once wait for each other instead of deadlocking.
    tasks = (
        queue.undecided_tasks(session=session, tenant_id=tenant_id, job_id=job_id)
        if seen.state == IN_REVIEW
        else None
    )
    job = session.get_one(Job, job_id, with_for_update=True, populate_existing=True)
    if job.state in FINAL_STATES:
        cancellable = [s for s in JOB_STATES if s not in FINAL_STATES]
        raise JobFinalError(
            f"job {job_id!r} is {job.state}, a final state; only a job that is "
            f"{choices(cancellable)} can be cancelled",
            field="job_id",
            state=job.state,
        )
    if tasks is None:
        # It went into review after the first read (the route stage or an appeal).
        tasks = queue.undecided_tasks(session=session, tenant_id=tenant_id, job_id=job_id)
    charged = session.scalar(select(func.count()).where(CostEntry.job_id == job.id)) or 0
    reserved = job.estimated_cost_usd if job.state in _UNCHARGED_STATES and not charged else 0
    previous = job.state
    set_state(session, job, CANCELLED, stage="cancel", by=actor)
    job.error = f"cancelled by {actor}" + (f": {reason}" if reason else "")
    queue.withdraw(session=session, tasks=tasks, actor=actor)
    audit.append(
        session=session,
        actor=actor,
        tenant_id=tenant_id,
        type="job.cancelled",
        subject=f"job:{job.id}",
        payload={
            "from": previous,
            "reason": reason,
            "released_reservation_usd": str(reserved),
            "withdrawn_review_tasks": [t.id for t in tasks],
        },
    )
    return job


def request_fingerprint(body: dict[str, Any]) -> str:
    """sha256 of a request body as canonical JSON (sorted keys, defaults filled in), so the
    same request sent twice with its fields in another order is still the same request."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _key_row(session: Session, tenant_id: str, key: str) -> JobRequestKey | None:
    return session.scalar(
        select(JobRequestKey).where(JobRequestKey.tenant_id == tenant_id, JobRequestKey.key == key)
    )


def _replayed(row: JobRequestKey, key: str, fingerprint: str) -> str:
    if row.request_sha256 != fingerprint:
        raise IdempotencyKeyReusedError(
            f"{IDEMPOTENCY_HEADER} {key!r} was used with another request body (job "
            f"{row.job_id}); send a new key for a new request",
            field=IDEMPOTENCY_HEADER,
        )
    assert row.job_id is not None  # set in the transaction that inserted the row
    return row.job_id


def claim_request_key(
    *, session: Session, tenant_id: str, key: str, fingerprint: str, now: datetime
) -> tuple[JobRequestKey | None, str | None]:
    """Take `key` for a new job, or find the job it already made.

    Returns (row, None) when the key is new: the caller creates the job in this transaction
    and sets `row.job_id`. Returns (None, job_id) when the same request was made with the key
    before. The insert comes first, so of two requests at once with one key the second waits
    on the unique (tenant, key) index until the first commits, then finds its job; on SQLite
    `BEGIN IMMEDIATE` already runs them one after the other."""
    row = _key_row(session, tenant_id, key)
    if row is not None and row.created_at > now - IDEMPOTENCY_TTL:
        return None, _replayed(row, key, fingerprint)
    if row is not None:
        # Expired: the key may start a new job.
        session.delete(row)
        session.flush()
    # Forget this tenant's expired keys while here, so the table does not grow forever.
    session.execute(
        delete(JobRequestKey).where(
            JobRequestKey.tenant_id == tenant_id, JobRequestKey.created_at <= now - IDEMPOTENCY_TTL
        )
    )
    fresh = JobRequestKey(tenant_id=tenant_id, key=key, request_sha256=fingerprint, created_at=now)
    try:
        with session.begin_nested():
            session.add(fresh)
            session.flush()
    except IntegrityError:
        # Another request with this key committed between the look-up and the insert.
        row = _key_row(session, tenant_id, key)
        if row is None:
            raise
        return None, _replayed(row, key, fingerprint)
    return fresh, None
