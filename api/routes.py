"""HTTP routes: jobs, images, health."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from api.deps import PrincipalDep, ReadSessionDep, SettingsDep
from api.schemas import DecisionOut, ErrorOut, HealthOut, ImageOut, JobCreate, JobOut, StageOut
from core.blobs import BlobStore
from core.db import read_scope, session_scope
from pipeline import service as jobs
from pipeline import stages, tasks
from pipeline.errors import EnqueueError
from pipeline.models import Job

router = APIRouter()

ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorOut} for status in (401, 403, 404, 409, 422, 503)
}


def job_out(job: Job, request: Request) -> JobOut:
    return JobOut(
        id=job.id,
        state=job.state,
        prompt=job.prompt,
        variant=job.variant,
        use=job.use,
        width=job.width,
        height=job.height,
        seed=job.seed,
        n_images=job.n_images,
        model=job.model,
        error=job.error,
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
                width=i.width,
                height=i.height,
                released=i.released_at is not None,
                url=str(request.url_for("get_image", image_id=i.id)) if i.released_at else None,
                matches=i.matches,
            )
            for i in job.images
        ],
    )


@router.post("/v1/jobs", status_code=201, response_model=JobOut, responses=ERRORS)
def create_job(
    body: JobCreate, request: Request, principal: PrincipalDep, settings: SettingsDep
) -> JobOut:
    principal.require("requester", "admin")
    # Committed before it is queued, so a worker never sees a job that is not stored yet.
    with session_scope() as session:
        job = jobs.create_job(
            session=session,
            settings=settings,
            tenant_id=principal.tenant_id,
            actor=principal.actor,
            request=jobs.NewJob(**body.model_dump()),
        )
        job_id = job.id
    try:
        tasks.enqueue(job_id)
    except EnqueueError as e:
        stages.fail_job(job_id, "enqueue", e.detail)
        raise
    with read_scope() as session:
        return job_out(
            jobs.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id), request
        )


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
def get_job(
    job_id: str, request: Request, principal: PrincipalDep, session: ReadSessionDep
) -> JobOut:
    return job_out(
        jobs.get_job(session=session, tenant_id=principal.tenant_id, job_id=job_id), request
    )


@router.get(
    "/v1/images/{image_id}",
    name="get_image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **ERRORS},
)
def get_image(
    image_id: str, principal: PrincipalDep, session: ReadSessionDep, settings: SettingsDep
) -> Response:
    data = jobs.released_image(
        session=session,
        blobs=BlobStore(settings.blob_dir),
        tenant_id=principal.tenant_id,
        image_id=image_id,
    )
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
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
