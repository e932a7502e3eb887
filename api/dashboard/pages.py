"""The tenant's jobs with their progress, the stats page, and the audit page for legal."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import select

from api.audit_log import EXPORT_ROLES, export_archive
from api.dashboard import stats, web
from api.deps import Offset, SettingsDep
from api.schemas import JobState
from audit import export
from audit import service as audit
from core.blobs import BlobStore
from core.db import read_scope
from pipeline import service as jobs
from pipeline.models import JOB_STATES, SETTLED_STATES
from pipeline.stages import STAGES
from review import queue
from review.models import ReviewTask

router = APIRouter(route_class=web.DashboardRoute)

JOBS_PER_PAGE = 50
EVENTS_PER_PAGE = 50


@router.get("/dashboard/jobs", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def jobs_page(
    request: Request,
    viewer: web.ViewerDep,
    state: JobState | None = None,  # type: ignore[valid-type]
    offset: Offset = 0,
) -> HTMLResponse:
    """The tenant's jobs, newest first."""
    with read_scope() as session:
        found, total = jobs.list_jobs(
            session=session,
            tenant_id=viewer.principal.tenant_id,
            filters=jobs.JobFilter(state=state),
            offset=offset,
            limit=JOBS_PER_PAGE,
        )
    return web.render(
        request,
        "jobs.html",
        viewer,
        jobs=found,
        total=total,
        offset=offset,
        limit=JOBS_PER_PAGE,
        state=state,
        states=JOB_STATES,
    )


@router.get("/dashboard/jobs/{job_id}", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def job_page(request: Request, job_id: str, viewer: web.ViewerDep) -> HTMLResponse:
    """One job: its state on the way to release, each stage's attempts and timings, the
    generation progress, the decisions and their reasons. While the job is not settled the
    page refreshes its progress by itself (htmx gets the progress part alone)."""
    tenant_id = viewer.principal.tenant_id
    with read_scope() as session:
        job = jobs.get_job(session=session, tenant_id=tenant_id, job_id=job_id)
        tasks = session.scalars(
            select(ReviewTask)
            .where(ReviewTask.tenant_id == tenant_id, ReviewTask.job_id == job.id)
            .order_by(ReviewTask.created_at)
        ).all()
        return web.render(
            request,
            "_job_progress.html" if web.is_htmx(request) else "job.html",
            viewer,
            job=job,
            stages={s.stage: s for s in job.stages},
            stage_names=STAGES,
            settled=job.state in SETTLED_STATES,
            tasks=tasks,
            reviewer=viewer.principal.role in queue.REVIEWER_ROLES,
        )


@router.get(
    "/dashboard/images/{image_id}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **web.DASHBOARD_ERRORS},
)
def released_image(image_id: str, viewer: web.ViewerDep, settings: SettingsDep) -> Response:
    """A released image of the tenant (the signed copy), as the API serves it."""
    with read_scope() as session:
        data = jobs.released_image(
            session=session,
            blobs=BlobStore(settings.blob_dir),
            tenant_id=viewer.principal.tenant_id,
            image_id=image_id,
        )
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.get("/dashboard/stats", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def stats_page(
    request: Request, viewer: web.ViewerDep, days: Annotated[int, Query(ge=1, le=365)] = 30
) -> HTMLResponse:
    """Volume, routing (auto-approve rate), decisions, false positives per asset as reviewers
    judged them, and SLA breaches, as bar charts."""
    viewer.principal.require(*queue.REVIEWER_ROLES)
    with read_scope() as session:
        figures = stats.tenant_stats(
            session=session, tenant_id=viewer.principal.tenant_id, days=days
        )
    return web.render(request, "stats.html", viewer, stats=figures)


@router.get("/dashboard/audit", response_class=HTMLResponse, responses=web.DASHBOARD_ERRORS)
def audit_page(
    request: Request,
    viewer: web.ViewerDep,
    type: Annotated[str, Query(max_length=100, description="event types starting with")] = "",
    actor: Annotated[str, Query(max_length=200, description="actors containing")] = "",
    subject: Annotated[str, Query(max_length=200, description="subjects containing")] = "",
    start: Annotated[str, Query(alias="from", max_length=40)] = "",
    end: Annotated[str, Query(alias="to", max_length=40)] = "",
    below: Annotated[int | None, Query(ge=1, description="events before this seq")] = None,
) -> HTMLResponse:
    """The tenant's audit events, newest first, searched; and the signed export of the same
    dates. Roles legal and admin."""
    viewer.principal.require(*EXPORT_ROLES)
    lower, _ = export.parse_bound(start, field="from", end=False)
    upper, _ = export.parse_bound(end, field="to", end=True)
    with read_scope() as session:
        events = audit.search(
            session=session,
            tenant_id=viewer.principal.tenant_id,
            type_prefix=type.strip(),
            actor=actor.strip(),
            subject=subject.strip(),
            start=lower,
            before=upper,
            below_seq=below,
            limit=EVENTS_PER_PAGE,
        )
    return web.render(
        request,
        "audit.html",
        viewer,
        events=events,
        more=len(events) == EVENTS_PER_PAGE,
        search={"type": type, "actor": actor, "subject": subject, "from": start, "to": end},
    )


@router.get(
    "/dashboard/audit/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}, **web.DASHBOARD_ERRORS},
)
def audit_export(
    viewer: web.ViewerDep,
    settings: SettingsDep,
    start: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    end: Annotated[str | None, Query(alias="to", max_length=40)] = None,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> FileResponse:
    """The tenant's signed audit export (a zip of the events and their signed manifest), made
    by the same code as GET /v1/audit/export. Roles legal and admin."""
    viewer.principal.require(*EXPORT_ROLES)
    return export_archive(
        settings=settings,
        tenant_id=viewer.principal.tenant_id,
        tenant_name=viewer.tenant_name,
        actor=viewer.principal.actor,
        start=start or None,
        end=end or None,
        fmt=format,
    )
