"""HTTP routes: jobs, uploads, images, usage, health."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Header, Query, Request, Response, UploadFile
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.deps import Offset, PrincipalDep, ReadSessionDep, SettingsDep, UtcDatetime
from api.errors import ERRORS
from api.models import Tenant
from api.schemas import (
    BudgetOut,
    CancelIn,
    DecisionOut,
    HealthOut,
    ImageOut,
    JobCreate,
    JobOut,
    JobState,
    Page,
    ProgressOut,
    StageOut,
    UploadOut,
    UsageLineOut,
    UsageOut,
    VariantName,
)
from core.blobs import BlobStore
from core.db import read_scope, session_scope, utcnow
from core.errors import InvalidInputError
from generation import costs
from pipeline import service as jobs
from pipeline import stages, tasks
from pipeline.errors import EnqueueError
from pipeline.models import Job

router = APIRouter()

UPLOAD_TYPES = ("image/png", "image/jpeg", "image/webp")
# Compressed size; the 40-megapixel limit on the decoded image is checked separately.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def job_out(
    job: Job, request: Request, session: Session, image_costs: dict[int, Decimal] | None = None
) -> JobOut:
    if image_costs is None:
        image_costs = jobs.job_costs(session=session, job_id=job.id)
    progress = None
    if job.progress_step is not None and job.progress_total:
        progress = ProgressOut(
            step=job.progress_step,
            total=job.progress_total,
            text=f"step {job.progress_step}/{job.progress_total}",
        )
    return JobOut(
        id=job.id,
        state=job.state,
        created_by=job.created_by,
        prompt=job.prompt,
        variant=job.variant,
        use=job.use,
        width=job.width,
        height=job.height,
        seed=job.seed,
        n_images=job.n_images,
        steps=job.steps,
        project=job.project,
        input_image_sha256=job.input_image_sha256,
        loras=job.loras,
        model=job.model,
        error=job.error,
        progress=progress,
        estimated_cost_usd=job.estimated_cost_usd,
        cost_usd=sum(image_costs.values(), Decimal(0)),
        created_at=job.created_at,
        updated_at=job.updated_at,
        stages=[
            StageOut(
                stage=s.stage,
                attempts=s.attempts,
                started_at=s.started_at,
                finished_at=s.finished_at,
                seconds=(s.finished_at - s.started_at).total_seconds() if s.finished_at else None,
                outcome=s.outcome,
            )
            for s in job.stages
        ],
        decisions=[
            DecisionOut(
                stage=d.stage, decision=d.decision, reasons=d.reasons, created_at=d.created_at
            )
            for d in job.decisions
        ],
        images=[
            ImageOut(
                id=i.id,
                index=i.index,
                seed=i.seed,
                sha256=i.blob_sha256,
                released_sha256=i.released_sha256,
                released_jpeg_sha256=i.released_jpeg_sha256,
                width=i.width,
                height=i.height,
                released=i.released_at is not None,
                url=str(request.url_for("get_image", image_id=i.id)) if i.released_at else None,
                matches=i.matches,
                cost_usd=image_costs.get(i.index),
            )
            for i in job.images
        ],
    )


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=jobs.IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[!-~]+$",
        description=(
            "Any string of printable ASCII (a UUID, say). The same key with the same body within "
            "24 hours answers 200 with the job the first request made (no second job, no second "
            "charge); with another body it answers 409."
        ),
    ),
]


@router.post(
    "/v1/jobs",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {
            "model": JobOut,
            "description": "A repeat of an earlier request with the same Idempotency-Key: "
            "the job that request created (header Idempotent-Replayed: true)",
        },
        **ERRORS,
    },
)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    principal.require("requester", "admin")
    # Committed before it is queued, so a worker never sees a job that is not stored yet.
    fields = body.model_dump()
    fields["loras"] = [(lora.name, lora.scale) for lora in body.loras]
    replayed: str | None = None
    with session_scope() as session:
        key_row = None
        if idempotency_key is not None:
            key_row, replayed = jobs.claim_request_key(
                session=session,
                tenant_id=principal.tenant_id,
                key=idempotency_key,
                fingerprint=jobs.request_fingerprint(body.model_dump(mode="json")),
                now=utcnow(),
            )
        if replayed is None:
            tenant = session.get_one(Tenant, principal.tenant_id)
            fields["require_human_approval"] = tenant.require_human_approval
            job = jobs.create_job(
                session=session,
                settings=settings,
                blobs=BlobStore(settings.blob_dir),
                tenant_id=principal.tenant_id,
                actor=principal.actor,
                request=jobs.NewJob(**fields),
            )
            if key_row is not None:
                key_row.job_id = job.id
        job_id = replayed or job.id
    if replayed is not None:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    else:
        try:
            tasks.enqueue(job_id)
        except EnqueueError as e:
            stages.fail_job(job_id, "enqueue", e.detail)
            raise
    with read_scope() as session:
        job = jobs.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        return job_out(job, request, session)


@router.get("/v1/jobs", response_model=Page[JobOut], responses=ERRORS)
def list_jobs(
    request: Request,
    principal: PrincipalDep,
    session: ReadSessionDep,
    state: JobState | None = None,  # type: ignore[valid-type]
    variant: VariantName | None = None,  # type: ignore[valid-type]
    project: str | None = None,
    created_by: Annotated[
        str | None, Query(description="who submitted the job, e.g. api_key:<prefix>")
    ] = None,
    created_from: Annotated[
        UtcDatetime | None, Query(description="created at or after (ISO 8601; UTC if no zone)")
    ] = None,
    created_to: Annotated[
        UtcDatetime | None, Query(description="created before (ISO 8601; UTC if no zone)")
    ] = None,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Page[JobOut]:
    """The tenant's jobs, newest first, filtered; `total` counts every match."""
    found, total = jobs.list_jobs(
        session=session,
        tenant_id=principal.tenant_id,
        filters=jobs.JobFilter(
            state=state,
            variant=variant,
            project=project,
            created_by=created_by,
            created_from=created_from,
            created_to=created_to,
        ),
        offset=offset,
        limit=limit,
    )
    image_costs = jobs.costs_of_jobs(session=session, job_ids=[j.id for j in found])
    return Page[JobOut](
        items=[job_out(j, request, session, image_costs[j.id]) for j in found],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, responses=ERRORS)
def cancel_job(
    job_id: str,
    request: Request,
    principal: PrincipalDep,
    body: Annotated[CancelIn | None, Body()] = None,
) -> JobOut:
    """Stop a job that is not final: no further stage runs, a stage still running drops its
    results, the budget it reserved is freed and an open review task is withdrawn. A job
    already final answers 409 naming its state."""
    principal.require("requester", "admin")
    with session_scope() as session:
        jobs.cancel_job(
            session=session,
            tenant_id=principal.tenant_id,
            job_id=job_id,
            actor=principal.actor,
            reason=body.reason if body else "",
        )
    with read_scope() as session:
        job = jobs.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id)
        return job_out(job, request, session)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(
    job_id: str, request: Request, principal: PrincipalDep, session: ReadSessionDep
) -> JobOut:
    job = jobs.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id)
    return job_out(job, request, session)


@router.post("/v1/uploads", status_code=201, response_model=UploadOut, responses=ERRORS)
async def upload_image(
    file: UploadFile, principal: PrincipalDep, settings: SettingsDep
) -> UploadOut:
    """An image to edit with a Kontext variant; pass its id as the job's `input_image`."""
    principal.require("requester", "admin")
    if file.content_type not in UPLOAD_TYPES:
        raise InvalidInputError(
            f"content type {file.content_type!r} is not accepted; send {', '.join(UPLOAD_TYPES)}",
            field="file",
        )
    data = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInputError(f"the file is over {MAX_UPLOAD_BYTES // 2**20} MiB", field="file")
    with session_scope() as session:
        upload = jobs.store_upload(
            session=session,
            blobs=BlobStore(settings.blob_dir),
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            data=data,
        )
        return UploadOut(
            id=upload.id, sha256=upload.blob_sha256, width=upload.width, height=upload.height
        )


@router.get("/v1/usage", response_model=UsageOut, responses=ERRORS)
def get_usage(
    principal: PrincipalDep, session: ReadSessionDep, month: str | None = None
) -> UsageOut:
    """This tenant's spending in a month (default: the current one, UTC), with its budgets."""
    start = costs.parse_month(month) if month else costs.month_start(utcnow())
    usage = costs.usage(session=session, tenant_id=principal.tenant_id, start=start)
    return UsageOut(
        month=usage.month,
        total_usd=usage.total_usd,
        lines=[UsageLineOut(**vars(line)) for line in usage.lines],
        budgets=[
            BudgetOut(
                project=b.project,
                monthly_usd=b.monthly_usd,
                spent_usd=b.spent_usd,
                remaining_usd=b.remaining_usd,
            )
            for b in usage.budgets
        ],
    )


@router.get(
    "/v1/images/{image_id}",
    name="get_image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **ERRORS},
)
def get_image(
    image_id: str,
    principal: PrincipalDep,
    session: ReadSessionDep,
    settings: SettingsDep,
    image_format: Literal["png", "jpeg"] = Query("png", alias="format"),
) -> Response:
    """The released image, signed: a C2PA manifest and IPTC XMP mark it as AI-generated.
    Both formats were signed at release, so the API holds no signing key."""
    data = jobs.released_image(
        session=session,
        blobs=BlobStore(settings.blob_dir),
        tenant_id=principal.tenant_id,
        image_id=image_id,
        image_format=image_format,
    )
    return Response(
        data,
        media_type=f"image/{image_format}",
        headers={"Cache-Control": "private, max-age=86400"},
    )


@router.get("/healthz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def healthz(settings: SettingsDep, response: Response) -> HealthOut:
    try:
        with read_scope() as session:
            session.execute(text("SELECT 1"))
    except Exception as e:  # any failure to reach the database means "not healthy"
        response.status_code = 503
        return HealthOut(status="unavailable", database=f"unavailable: {type(e).__name__}")
    return HealthOut(status="ok", database="ok")
